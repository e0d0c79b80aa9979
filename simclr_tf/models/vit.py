"""A Vision Transformer encoder (--encoder=vit): patch embedding, pre-norm transformer blocks, a class token or
the mean of the patch tokens as the representation (`final_avg_pool`, the name every encoder gives it).

Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words"), as MoCo v3 (Chen, Xie, He 2021) pretrains it
contrastively: learned position embeddings, LayerNorm (epsilon 1e-6) before attention and before the GELU MLP,
a final LayerNorm; with --vit_frozen_patch_embedding the patch projection keeps its random initialisation (MoCo
v3's remedy for the instability of its first layer). Built from Keras 3's MultiHeadAttention and
LayerNormalization. Every sublayer is held by a named attribute (Keras 3 leaves list-held layers out of
tf.train.Checkpoint). No batch norm: the only synchronised statistics of a ViT model are its projection head's.
"""

import keras
import tensorflow as tf

from simclr_tf.models.layers import Composite, set_trainable

ATTRIBUTE = 'vit'
LAYER_NORM_EPSILON = 1e-6


def _truncated_normal():
  return keras.initializers.TruncatedNormal(stddev=0.02)


class PatchEmbedding(Composite):
  """Image [N, H, W, 3] -> tokens [N, T, D]: a patch x patch convolution with stride patch (the patch
  projection), then the class token in front (with pooling 'cls') and the position embeddings added."""

  def __init__(self, width, patch_size, image_size, class_token, **kwargs):
    super().__init__(**kwargs)
    self.projection = keras.layers.Conv2D(width, patch_size, strides=patch_size, padding='valid',
                                          kernel_initializer=keras.initializers.GlorotUniform(),
                                          name='projection')
    self.num_tokens = (image_size // patch_size) ** 2 + (1 if class_token else 0)
    self.width = width
    self.has_class_token = class_token

  def build(self, input_shape):
    del input_shape
    if self.has_class_token:
      self.class_token = self.add_weight(shape=(1, 1, self.width), initializer=_truncated_normal(),
                                         name='class_token')
    self.position_embedding = self.add_weight(shape=(1, self.num_tokens, self.width),
                                              initializer=_truncated_normal(), name='position_embedding')

  def call(self, images):
    patches = self.projection(images)
    tokens = tf.reshape(patches, [tf.shape(patches)[0], -1, self.width])
    if self.has_class_token:
      cls = tf.cast(self.class_token, tokens.dtype)
      tokens = tf.concat([tf.tile(cls, [tf.shape(tokens)[0], 1, 1]), tokens], axis=1)
    return tokens + tf.cast(self.position_embedding, tokens.dtype)


class TransformerBlock(Composite):
  """x + attention(norm1(x)), then x + mlp(norm2(x)); the MLP is Dense(mlp_ratio * width, GELU) -> Dense(width)."""

  def __init__(self, width, heads, mlp_ratio, **kwargs):
    super().__init__(**kwargs)
    self.norm1 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name='norm1')
    self.attention = keras.layers.MultiHeadAttention(heads, width // heads, kernel_initializer='glorot_uniform',
                                                     name='attention')
    self.norm2 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name='norm2')
    self.mlp_hidden = keras.layers.Dense(int(width * mlp_ratio), activation='gelu',
                                         kernel_initializer='glorot_uniform', name='mlp_hidden')
    self.mlp_output = keras.layers.Dense(width, kernel_initializer='glorot_uniform', name='mlp_output')

  def call(self, x, training=False):
    normed = self.norm1(x)
    x = x + self.attention(normed, normed, training=training)
    return x + self.mlp_output(self.mlp_hidden(self.norm2(x)))


class VisionTransformer(Composite):
  """The encoder. call() returns 'patch_embedding' and 'block1'..'blockN' (tokens [N, T, D]) and
  'final_avg_pool' [N, D] (the final LayerNorm's class token, or its mean over the patch tokens)."""

  def __init__(self, depth, width, heads, patch_size, mlp_ratio, image_size, pooling='cls',
               frozen_patch_embedding=False, **kwargs):
    super().__init__(**kwargs)
    self.depth, self.pooling, self.frozen_patch_embedding = depth, pooling, frozen_patch_embedding
    self.input_size = image_size  # the position embeddings are for this size only
    self.output_dim = width
    self.patch_embedding = PatchEmbedding(width, patch_size, image_size, pooling == 'cls', name='patch_embedding')
    for i in range(1, depth + 1):
      setattr(self, f'block{i}', TransformerBlock(width, heads, mlp_ratio, name=f'block{i}'))
    self.norm = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name='norm')
    self.freeze_through(-1)

  def blocks(self):
    return [getattr(self, f'block{i}') for i in range(1, self.depth + 1)]

  def freeze_through(self, stage: int) -> None:
    """Freezes the patch embedding (stage 0) and blocks 1..stage; -1 freezes nothing. The patch projection stays
    frozen with frozen_patch_embedding whatever the stage."""
    self.frozen_through = stage
    for i, part in enumerate([self.patch_embedding] + self.blocks()):
      set_trainable(part, i > stage)
    if self.frozen_patch_embedding:
      set_trainable(self.patch_embedding.projection, False)

  def call(self, images, training=False):
    outputs = {}
    x = self.patch_embedding(images)
    if self.frozen_through >= 0:
      x = tf.stop_gradient(x)
    outputs['patch_embedding'] = x
    for i, block in enumerate(self.blocks(), start=1):
      x = block(x, training=training and i > self.frozen_through)
      if i <= self.frozen_through:
        x = tf.stop_gradient(x)
      outputs[f'block{i}'] = x
    x = self.norm(x)
    outputs['final_avg_pool'] = x[:, 0] if self.pooling == 'cls' else tf.reduce_mean(x, axis=1)
    return outputs


# ---- the encoder family (simclr_tf.models.registry) ------------------------------------------------------------

def build(settings) -> VisionTransformer:
  return VisionTransformer(settings.vit_depth, settings.vit_width, settings.vit_heads, settings.vit_patch_size,
                           settings.vit_mlp_ratio, settings.image_size, settings.vit_pooling,
                           settings.vit_frozen_patch_embedding, name=ATTRIBUTE)


def output_keys(settings) -> tuple:
  return ('patch_embedding',) + tuple(f'block{i}' for i in range(1, settings.vit_depth + 1)) + ('final_avg_pool',)


def describe(settings) -> str:
  return (f'ViT {settings.vit_depth}x{settings.vit_width} ({settings.vit_heads} heads, patch '
          f'{settings.vit_patch_size}, {settings.vit_pooling} pooling)')
