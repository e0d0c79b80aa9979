"""The ResNet's settings (simclr_tf.models.resnet), declared without TensorFlow (simclr_tf.settings)."""

import dataclasses

from simclr_tf.settings import setting

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)


@dataclasses.dataclass(frozen=True)
class Settings:
  resnet_depth: int = setting(50, 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
  width_multiplier: float = setting(1.0, 'Width multiplier of the ResNet (1, 2, 3 as published; fractions allowed).')
  sk_ratio: float = setting(0.0, 'Selective-kernel ratio (0.0625 in SimCLRv2; 0 = no SK). Implies ResNet-D.')
  se_ratio: float = setting(0.0, 'Squeeze-and-excitation ratio (0 = no SE).')


def checks(config):
  return [
      (config.resnet_depth in RESNET_DEPTHS, f'--resnet_depth={config.resnet_depth} is not supported; use one of '
                                             f'{", ".join(map(str, RESNET_DEPTHS))}.'),
      (config.width_multiplier > 0 and int(64 * config.width_multiplier) >= 1,
       f'--width_multiplier={config.width_multiplier} gives layers without channels; use at least 1/64.'),
      (config.sk_ratio >= 0, f'--sk_ratio must not be negative, got {config.sk_ratio}.'),
      (config.se_ratio >= 0, f'--se_ratio must not be negative, got {config.se_ratio}.'),
      (config.image_size >= 8, f'--image_size={config.image_size} is too small; the ResNet needs at least 8 pixels.'),
  ]


def stages(config):
  del config
  return 4, 'the stem (0) and block groups 1..4'
