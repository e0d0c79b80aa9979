"""The layers every network here is made of: Composite (the base of a layer of sublayers), batch norm with the
reference's synchronised statistics (BatchNormalization, BatchNormRelu) and set_trainable (freezing that reaches
every sublayer)."""

import keras
import tensorflow as tf

BN_EPSILON = 1e-5


class Composite(keras.layers.Layer):
  """A layer made of sublayers (created in __init__) and no variables of its own. It counts as built before its
  first call, and each sublayer builds itself when the call reaches it. (Keras's default build would first trace
  call() symbolically, and again at every level of nesting: 45 s for an R152 2x before its first real call.)"""

  def build(self, input_shape):
    del input_shape  # the sublayers build themselves, from what reaches them


def set_trainable(layer: keras.layers.Layer, value: bool) -> None:
  """layer.trainable = value, passed down to every sublayer and variable even when the layer already says `value`.
  (Keras's TensorFlow layers skip an attribute assignment of the object the attribute already holds, `False is
  False`, so a plain assignment leaves sublayers built since the last one, e.g. a MultiHeadAttention's projections,
  trainable; the setter's own recursion assigns the same way.)"""
  for part in layer._flatten_layers(include_self=True):  # pylint: disable=protected-access
    type(part).trainable.fset(part, value)


class BatchNormalization(keras.layers.BatchNormalization):
  """Keras's batch norm. Synchronised (synchronized=True), its statistics are those of the global batch with the
  reference's formula, var = E[x^2] - E[x]^2, which Keras computes with all-reduces across replicas. On one replica
  this computes the same ops without the all-reduces (identity there, but wrapped in custom gradients that a
  SavedModel cannot keep: every load would warn, and gradients of gradients would fail)."""

  def _moments(self, inputs, mask):
    context = tf.distribute.get_replica_context()
    if not self.synchronized or mask is not None or context is None or context.num_replicas_in_sync > 1:
      return super()._moments(inputs, mask)
    axes = self._reduction_axes
    total = tf.reduce_sum(inputs, axis=axes, keepdims=True)
    squared_total = tf.reduce_sum(tf.square(inputs), axis=axes, keepdims=True)
    count = tf.reduce_sum(tf.ones_like(inputs, name='count'), axis=axes, keepdims=True)
    mean = tf.math.divide_no_nan(total, count)
    variance = tf.maximum(tf.math.divide_no_nan(squared_total, count) - tf.square(mean), 0.0)
    return tf.squeeze(mean, axes), tf.squeeze(variance, axes)


class BatchNormRelu(Composite):
  """Batch norm (optionally synchronised across replicas), optionally followed by ReLU."""

  def __init__(self, relu=True, init_zero=False, center=True, momentum=0.9, synchronized=True, **kwargs):
    super().__init__(**kwargs)
    self.relu = relu
    self.bn = BatchNormalization(
        momentum=momentum, epsilon=BN_EPSILON, center=center,
        gamma_initializer='zeros' if init_zero else 'ones', synchronized=synchronized, name='bn')

  def call(self, x, training=False):
    x = self.bn(x, training=training)
    return tf.nn.relu(x) if self.relu else x
