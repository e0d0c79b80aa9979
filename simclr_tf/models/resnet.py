"""ResNet v1 (post-activation) with selective kernels (SK), squeeze-excitation (SE), ResNet-D and a CIFAR stem.

The layout follows the paper's reference code (google-research/simclr, tf2/resnet.py) to the last detail that
changes outputs, as checked against files it wrote (tests/test_reference_files.py): explicit (k-1)//2 padding
before strided convolutions, zero-initialised gamma of each block's last batch norm, BN epsilon 1e-5, SK with two
paths from one 3x3 convolution (bottleneck blocks only), ResNet-D average-pool shortcuts at every stride.
Every sublayer is held by a named attribute (Keras 3 leaves list-held layers out of tf.train.Checkpoint).
"""

import keras
import tensorflow as tf

from simclr_tf.models.layers import BatchNormRelu, Composite, set_trainable

BLOCKS_PER_GROUP = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
OUTPUT_KEYS = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2', 'block_group3', 'block_group4',
               'final_avg_pool')


def conv_initializer():
  return keras.initializers.VarianceScaling(scale=1.0, mode='fan_in', distribution='truncated_normal')


class Conv2dFixedPadding(Composite):
  """Convolution without bias; strided ones pad (k-1)//2 explicitly then run VALID, stride 1 runs SAME."""

  def __init__(self, filters, kernel_size, strides=1, **kwargs):
    super().__init__(**kwargs)
    self.kernel_size = kernel_size
    self.strides = strides
    self.conv = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding='same' if strides == 1 else 'valid', use_bias=False,
        kernel_initializer=conv_initializer(), name='conv2d')

  def call(self, x):
    if self.strides > 1:
      total = self.kernel_size - 1
      begin = total // 2
      x = tf.pad(x, [[0, 0], [begin, total - begin], [begin, total - begin], [0, 0]])
    return self.conv(x)


class SelectiveKernel(Composite):
  """SK convolution: a 3x3 conv to 2 paths, mixed by a softmax attention computed from their sum."""

  def __init__(self, filters, strides, sk_ratio, bn_args, min_dim=32, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.conv = Conv2dFixedPadding(2 * filters, 3, strides, name='conv')
    self.conv_bn = BatchNormRelu(name='conv_bn', **bn_args)
    self.reduce = keras.layers.Conv2D(max(int(filters * sk_ratio), min_dim), 1, use_bias=False,
                                      kernel_initializer=conv_initializer(), name='reduce')
    self.reduce_bn = BatchNormRelu(name='reduce_bn', **bn_args)
    self.expand = keras.layers.Conv2D(2 * filters, 1, use_bias=False, kernel_initializer=conv_initializer(),
                                      name='expand')

  def call(self, x, training=False):
    x = self.conv_bn(self.conv(x), training=training)
    paths = tf.stack(tf.split(x, 2, axis=-1))  # [2, N, H, W, C]
    summary = tf.reduce_mean(tf.reduce_sum(paths, axis=0), axis=[1, 2], keepdims=True)
    mixing = self.expand(self.reduce_bn(self.reduce(summary), training=training))
    mixing = tf.nn.softmax(tf.stack(tf.split(mixing, 2, axis=-1)), axis=0)
    return tf.reduce_sum(paths * mixing, axis=0)


class SqueezeExcite(keras.layers.Layer):

  def __init__(self, filters, se_ratio, **kwargs):
    super().__init__(**kwargs)
    self.se_ratio = se_ratio
    self.reduce = keras.layers.Conv2D(max(1, int(filters * se_ratio)), 1, kernel_initializer=conv_initializer(),
                                      name='reduce')
    self.expand = None

  def build(self, input_shape):
    # Created at build time: give it this layer's dtype policy (the model was built under a policy scope).
    self.expand = keras.layers.Conv2D(input_shape[-1], 1, kernel_initializer=conv_initializer(), name='expand',
                                      dtype=self.dtype_policy)

  def call(self, x):
    s = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    return x * tf.sigmoid(self.expand(tf.nn.relu(self.reduce(s))))


class ConvBn(Composite):
  """A 3x3 (or k x k) convolution followed by batch norm, or the SK layer in its place."""

  def __init__(self, filters, kernel_size, strides, bn_args, relu=True, init_zero=False, sk_ratio=0.0, **kwargs):
    super().__init__(**kwargs)
    if sk_ratio > 0:
      self.sk = SelectiveKernel(filters, strides, sk_ratio, bn_args, name='sk')
    else:
      self.sk = None
      self.conv = Conv2dFixedPadding(filters, kernel_size, strides, name='conv')
      self.bn = BatchNormRelu(relu=relu, init_zero=init_zero, name='bn', **bn_args)

  def call(self, x, training=False, with_conv_output=False):
    """The output; with `with_conv_output` (no SK) also the convolution's output before batch norm:
    (conv, output)."""
    if self.sk is not None:
      return self.sk(x, training=training)
    conv = self.conv(x)
    output = self.bn(conv, training=training)
    return (conv, output) if with_conv_output else output


class Shortcut(Composite):
  """Projection shortcut: 1x1 strided conv + BN, or (ResNet-D) 2x2 average pool, 1x1 conv + BN.

  The ResNet-D pool is there at every stride, as in the reference code: at stride 1 (the first block of
  block_group1) a 2x2 average with stride 1 and SAME padding (it changes the values); at stride 2 the input is
  padded by 0 before and 1 after, then averaged 2x2 with stride 2, VALID.
  """

  def __init__(self, filters, strides, resnet_d, bn_args, **kwargs):
    super().__init__(**kwargs)
    self.pool = None
    self.pad_before_pool = resnet_d and strides > 1
    if resnet_d:
      self.pool = keras.layers.AveragePooling2D(pool_size=2, strides=strides,
                                                padding='valid' if strides > 1 else 'same', name='pool')
      strides = 1
    self.conv = Conv2dFixedPadding(filters, 1, strides, name='conv')
    self.bn = BatchNormRelu(relu=False, name='bn', **bn_args)

  def call(self, x, training=False):
    if self.pad_before_pool:
      x = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
    if self.pool is not None:
      x = self.pool(x)
    return self.bn(self.conv(x), training=training)


class ResidualBlock(Composite):
  """Basic (two 3x3) or bottleneck (1x1, 3x3 or SK, 1x1 x4) residual block."""

  def __init__(self, filters, strides, bottleneck, use_projection, sk_ratio, se_ratio, bn_args, **kwargs):
    super().__init__(**kwargs)
    out_filters = 4 * filters if bottleneck else filters
    self.shortcut = (Shortcut(out_filters, strides, sk_ratio > 0, bn_args, name='shortcut')
                     if use_projection else None)
    if bottleneck:
      self.conv1 = ConvBn(filters, 1, 1, bn_args, name='conv1')
      self.conv2 = ConvBn(filters, 3, strides, bn_args, sk_ratio=sk_ratio, name='conv2')
      self.conv3 = ConvBn(out_filters, 1, 1, bn_args, relu=False, init_zero=True, name='conv3')
    else:
      # As in the reference code, basic blocks keep plain 3x3 convolutions with --sk_ratio: SK only brings the
      # ResNet-D stem and shortcuts to ResNet-18/34.
      self.conv1 = ConvBn(filters, 3, strides, bn_args, name='conv1')
      self.conv2 = ConvBn(filters, 3, 1, bn_args, relu=False, init_zero=True, name='conv2')
      self.conv3 = None
    self.se = SqueezeExcite(filters, se_ratio, name='se') if se_ratio > 0 else None

  def call(self, x, training=False):
    shortcut = self.shortcut(x, training=training) if self.shortcut is not None else x
    x = self.conv1(x, training=training)
    x = self.conv2(x, training=training)
    if self.conv3 is not None:
      x = self.conv3(x, training=training)
    if self.se is not None:
      x = self.se(x)
    return tf.nn.relu(x + shortcut)


class BlockGroup(Composite):
  """Blocks of one stage; the first one strides and projects. Blocks are attributes block0, block1, ..."""

  def __init__(self, filters, num_blocks, strides, bottleneck, sk_ratio, se_ratio, bn_args, **kwargs):
    super().__init__(**kwargs)
    self.num_blocks = num_blocks
    for i in range(num_blocks):
      setattr(self, f'block{i}', ResidualBlock(filters, strides if i == 0 else 1, bottleneck, i == 0, sk_ratio,
                                               se_ratio, bn_args, name=f'block{i}'))

  def blocks(self):
    return [getattr(self, f'block{i}') for i in range(self.num_blocks)]

  def call(self, x, training=False):
    for block in self.blocks():
      x = block(x, training=training)
    return x


class Stem(Composite):
  """ImageNet stem (7x7/2 conv, max-pool), ResNet-D stem (three 3x3 convs, max-pool) or CIFAR stem (3x3/1)."""

  def __init__(self, width_multiplier, cifar_stem, resnet_d, bn_args, **kwargs):
    super().__init__(**kwargs)
    self.cifar_stem = cifar_stem
    width = int(64 * width_multiplier)
    if cifar_stem:
      self.conv0 = ConvBn(width, 3, 1, bn_args, name='conv0')
      self.num_convs = 1
    elif resnet_d:
      self.conv0 = ConvBn(width // 2, 3, 2, bn_args, name='conv0')
      self.conv1 = ConvBn(width // 2, 3, 1, bn_args, name='conv1')
      self.conv2 = ConvBn(width, 3, 1, bn_args, name='conv2')
      self.num_convs = 3
    else:
      self.conv0 = ConvBn(width, 7, 2, bn_args, name='conv0')
      self.num_convs = 1
    self.pool = None if cifar_stem else keras.layers.MaxPooling2D(3, 2, padding='same', name='pool')

  def call(self, x, training=False):
    """(initial_conv, initial_max_pool): the last convolution's output before its batch norm and ReLU (as the
    reference defines `initial_conv`), and the stem's output after BN-ReLU and (ImageNet stems) the max-pool."""
    for i in range(self.num_convs - 1):
      x = getattr(self, f'conv{i}')(x, training=training)
    conv, x = getattr(self, f'conv{self.num_convs - 1}')(x, training=training, with_conv_output=True)
    pooled = self.pool(x) if self.pool is not None else x
    return conv, pooled


class ResNet(Composite):
  """The encoder. call() returns a dict with OUTPUT_KEYS; `final_avg_pool` is the representation."""

  def __init__(self, depth, width_multiplier=1.0, sk_ratio=0.0, se_ratio=0.0, cifar_stem=False,
               bn_momentum=0.9, sync_bn=True, **kwargs):
    super().__init__(**kwargs)
    if depth not in BLOCKS_PER_GROUP:
      raise ValueError(f'ResNet depth {depth} is not one of {sorted(BLOCKS_PER_GROUP)}')
    bn_args = dict(momentum=bn_momentum, synchronized=sync_bn)
    bottleneck = depth >= 50
    self.stem = Stem(width_multiplier, cifar_stem, sk_ratio > 0, bn_args, name='stem')
    for g, (filters, num_blocks, strides) in enumerate(zip((64, 128, 256, 512), BLOCKS_PER_GROUP[depth],
                                                           (1, 2, 2, 2))):
      setattr(self, f'block_group{g + 1}',
              BlockGroup(int(filters * width_multiplier), num_blocks, strides, bottleneck, sk_ratio, se_ratio,
                         bn_args, name=f'block_group{g + 1}'))
    self.output_dim = int(512 * width_multiplier) * (4 if bottleneck else 1)

  def block_groups(self):
    return [getattr(self, f'block_group{g}') for g in range(1, 5)]

  def freeze_through(self, stage: int) -> None:
    """Freezes the stem (stage 0) and block groups 1..stage: their weights stop training and their batch norms
    use (and keep) their moving statistics. stage -1 freezes nothing; 4 freezes the whole encoder."""
    self.frozen_through = stage
    for i, part in enumerate([self.stem] + self.block_groups()):
      set_trainable(part, i > stage)

  def call(self, x, training=False):
    frozen_through = getattr(self, 'frozen_through', -1)
    outputs = {}
    outputs['initial_conv'], x = self.stem(x, training=training and frozen_through < 0)
    if frozen_through >= 0:
      x = tf.stop_gradient(x)
    outputs['initial_max_pool'] = x
    for g, group in enumerate(self.block_groups(), start=1):
      x = group(x, training=training and g > frozen_through)
      if g <= frozen_through:
        x = tf.stop_gradient(x)
      outputs[f'block_group{g}'] = x
    outputs['final_avg_pool'] = tf.reduce_mean(x, axis=[1, 2])
    return outputs


# ---- the encoder family (simclr_tf.models.registry) ------------------------------------------------------------

ATTRIBUTE = 'resnet'


def build(settings) -> ResNet:
  """The ResNet of a ModelSettings: --resnet_depth, --width_multiplier, --sk_ratio, --se_ratio, the CIFAR stem
  for --image_size <= 32, batch norm's --batch_norm_decay and --global_bn."""
  return ResNet(settings.resnet_depth, settings.width_multiplier, settings.sk_ratio, settings.se_ratio,
                settings.image_size <= 32, settings.batch_norm_decay, settings.global_bn, name=ATTRIBUTE)


def output_keys(settings) -> tuple:
  del settings
  return OUTPUT_KEYS


def describe(settings) -> str:
  extras = ''.join(f'+{name}' for name, on in (('SK', settings.sk_ratio), ('SE', settings.se_ratio)) if on)
  return f'ResNet-{settings.resnet_depth} {settings.width_multiplier:g}x{extras}'
