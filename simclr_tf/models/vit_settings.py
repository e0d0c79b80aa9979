"""The Vision Transformer's settings (simclr_tf.models.vit), declared without TensorFlow (simclr_tf.settings)."""

import dataclasses

from simclr_tf.settings import setting


@dataclasses.dataclass(frozen=True)
class Settings:
  vit_depth: int = setting(6, 'ViT: transformer blocks.')
  vit_width: int = setting(192, 'ViT: token width (the representation\'s size).')
  vit_heads: int = setting(3, 'ViT: attention heads (a divisor of --vit_width).')
  vit_patch_size: int = setting(4, 'ViT: patch side in pixels (a divisor of --image_size; 4 for 32 px, 16 for '
                                '224 px).')
  vit_mlp_ratio: float = setting(4.0, 'ViT: width of each block\'s MLP, as a multiple of --vit_width.')
  vit_pooling: str = setting('cls', 'ViT: the representation (final_avg_pool) is the class token (cls) or the mean '
                             'of the patch tokens (mean).', ('cls', 'mean'))
  vit_frozen_patch_embedding: bool = setting(False, 'ViT: keep the patch projection at its random initialisation '
                                             '(MoCo v3\'s trick against instability).')


def checks(config):
  return [
      (config.vit_depth >= 1, f'--vit_depth must be at least 1, got {config.vit_depth}.'),
      (config.vit_width >= 1 and config.vit_heads >= 1 and config.vit_width % config.vit_heads == 0,
       f'--vit_width={config.vit_width} must be a positive multiple of --vit_heads={config.vit_heads}.'),
      (config.vit_patch_size >= 1 and config.image_size % config.vit_patch_size == 0,
       f'--vit_patch_size={config.vit_patch_size} must divide --image_size={config.image_size}.'),
      (config.vit_mlp_ratio > 0, f'--vit_mlp_ratio must be positive, got {config.vit_mlp_ratio}.'),
  ]


def stages(config):
  return config.vit_depth, 'the patch embedding (0) and blocks 1..--vit_depth'
