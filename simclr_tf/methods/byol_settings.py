"""BYOL's settings (simclr_tf.methods.byol), declared without TensorFlow (simclr_tf.settings). Its projector is the
model's projection head (--num_proj_layers, --proj_out_dim)."""

import dataclasses

from simclr_tf.errors import UserError
from simclr_tf.settings import setting


@dataclasses.dataclass(frozen=True)
class Settings:
  byol_base_momentum: float = setting(0.996, 'BYOL: momentum of the target network at the first step; it rises to 1 '
                                      'along a cosine over the run (the paper: 0.996; 0.99 for short runs).')
  predictor_hidden_dim: int = setting(0, 'BYOL: hidden width of the predictor (Dense, batch norm, ReLU, Dense to '
                                      '--proj_out_dim); 0 = the encoder\'s output width, as the projection head\'s '
                                      'hidden layers.')


def checks(config):
  return [
      (0 <= config.byol_base_momentum <= 1,
       f'--byol_base_momentum must be in [0, 1], got {config.byol_base_momentum}.'),
      (config.predictor_hidden_dim >= 0,
       f'--predictor_hidden_dim must not be negative, got {config.predictor_hidden_dim}.'),
  ]


def validate(config) -> None:
  if config.memory_size:
    raise UserError(f'--memory_size={config.memory_size}: BYOL has no negatives; use --memory_size=0 with '
                    f'--method=byol.')
  if config.num_proj_layers < 1:
    raise UserError('--method=byol needs a projection head (--num_proj_layers >= 1): the predictor and the target '
                    'meet on its output.')
