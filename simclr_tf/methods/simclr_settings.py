"""SimCLR's settings (simclr_tf.methods.simclr): the NT-Xent loss and the memory of negatives, declared without
TensorFlow (simclr_tf.settings)."""

import dataclasses

from simclr_tf.errors import UserError
from simclr_tf.settings import setting


@dataclasses.dataclass(frozen=True)
class Settings:
  temperature: float = setting(0.1, 'NT-Xent temperature (0.1 ImageNet, 0.5 CIFAR-10).')
  hidden_norm: bool = setting(True, 'L2-normalise the projections before the contrastive loss.')
  memory_size: int = setting(0, 'Pretraining: size K of the memory of negatives, a queue of a momentum network\'s '
                             'projections of past batches used as extra negatives (SimCLRv2 after MoCo; 65536 in '
                             'the paper, 0 = no memory). Each step enqueues both views of the global batch, so K '
                             'must be at least 2 x --train_batch_size.')
  memory_momentum: float = setting(0.999, 'Momentum m of the memory\'s network: after every step its weights become '
                                   'm * its weights + (1 - m) * the trained network\'s.')


def checks(config):
  return [
      (config.temperature > 0, f'--temperature must be positive, got {config.temperature}.'),
      (config.memory_size >= 0, f'--memory_size must not be negative, got {config.memory_size}.'),
      (0 <= config.memory_momentum < 1, f'--memory_momentum must be in [0, 1), got {config.memory_momentum}.'),
  ]


def validate(config) -> None:
  if config.memory_size and config.memory_size < 2 * config.train_batch_size:
    raise UserError(f'--memory_size={config.memory_size} cannot hold the {2 * config.train_batch_size} keys a step '
                    f'enqueues (both views of --train_batch_size={config.train_batch_size}); use at least that, or 0 '
                    f'for no memory.')
  if config.export_momentum_network and not config.memory_size:
    raise UserError('--export_momentum_network needs a memory of negatives (--memory_size > 0).')
