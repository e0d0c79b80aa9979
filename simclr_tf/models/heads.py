"""Projection head (SimCLRv2: 3 layers) and the supervised linear head."""

import keras

from simclr_tf.models.layers import BatchNormRelu, Composite


def dense_initializer():
  return keras.initializers.RandomNormal(stddev=0.01)


class ProjectionLayer(Composite):
  """Dense without bias, then batch norm (+ ReLU except for the last layer, whose BN has no beta)."""

  def __init__(self, units, last, bn_args, **kwargs):
    super().__init__(**kwargs)
    self.dense = keras.layers.Dense(units, use_bias=False, kernel_initializer=dense_initializer(), name='dense')
    self.bn = BatchNormRelu(relu=not last, center=not last, name='bn', **bn_args)

  def call(self, x, training=False):
    return self.bn(self.dense(x), training=training)


class ProjectionHead(Composite):
  """Layers 1..n-1 keep the input width; layer n maps to out_dim. call() returns [input, out_1, ..., out_k].

  `keep_layers` (default all n) builds only the first k layers: fine-tuning from layer k needs no more.
  """

  def __init__(self, input_dim, num_layers, out_dim, bn_momentum=0.9, sync_bn=True, keep_layers=None, **kwargs):
    super().__init__(**kwargs)
    self.num_layers = num_layers
    self.keep_layers = num_layers if keep_layers is None else keep_layers
    bn_args = dict(momentum=bn_momentum, synchronized=sync_bn)
    for i in range(1, self.keep_layers + 1):
      last = i == num_layers
      setattr(self, f'layer{i}', ProjectionLayer(out_dim if last else input_dim, last, bn_args, name=f'layer{i}'))

  def call(self, x, training=False):
    hiddens = [x]
    for i in range(1, self.keep_layers + 1):
      hiddens.append(getattr(self, f'layer{i}')(hiddens[-1], training=training))
    return hiddens


class SupervisedHead(Composite):
  """One Dense(num_classes) with bias and no batch norm: `logits_sup`."""

  def __init__(self, num_classes, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    init = 'zeros' if zero_init else dense_initializer()
    self.dense = keras.layers.Dense(num_classes, kernel_initializer=init, bias_initializer='zeros', name='dense')

  def call(self, x):
    return self.dense(x)


class PredictorHead(Composite):
  """An MLP on the projection (BYOL's predictor): Dense(hidden) without bias, batch norm, ReLU, then Dense(out_dim)
  with bias and no batch norm."""

  def __init__(self, hidden_dim, out_dim, bn_momentum=0.9, sync_bn=True, **kwargs):
    super().__init__(**kwargs)
    self.layer1 = ProjectionLayer(hidden_dim, False, dict(momentum=bn_momentum, synchronized=sync_bn), name='layer1')
    self.output_layer = keras.layers.Dense(out_dim, kernel_initializer=dense_initializer(), bias_initializer='zeros',
                                           name='output_layer')

  def call(self, x, training=False):
    return self.output_layer(self.layer1(x, training=training))
