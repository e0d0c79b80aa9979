"""From a Config to what a training mode optimises with: the length of the run, the learning-rate schedule, the
optimizer (LARS, momentum SGD or Adam; loss-scaled under mixed_float16) and the part of weight decay that goes
through the loss."""

import keras
import tensorflow as tf

from simclr_tf import precision
from simclr_tf.config import Config
from simclr_tf.optim.lars import LARS, is_bn_or_bias
from simclr_tf.optim.schedule import WarmupCosine, scaled_learning_rate


def steps_per_epoch(config: Config, num_examples: int) -> int:
  return max(1, num_examples // config.train_batch_size)


def total_steps(config: Config, num_examples: int) -> int:
  if config.train_steps > 0:
    return config.train_steps
  return max(1, config.train_epochs * num_examples // config.train_batch_size)


def learning_rate_schedule(config: Config, num_examples: int) -> WarmupCosine:
  peak = scaled_learning_rate(config.learning_rate, config.train_batch_size, config.learning_rate_scaling)
  warmup = int(round(config.warmup_epochs * num_examples / config.train_batch_size))
  return WarmupCosine(peak, warmup, total_steps(config, num_examples))


def is_supervised_head(variable) -> bool:
  return 'supervised_head' in variable.path


def make_optimizer(config: Config, schedule) -> keras.optimizers.Optimizer:
  """The --optimizer, loss-scaled under --precision=mixed_float16."""
  if config.optimizer == 'lars':
    # The supervised head gets its weight decay through the loss (as in the paper's code), not from LARS.
    optimizer = LARS(schedule, momentum=config.momentum, weight_decay_rate=config.weight_decay, eta=config.lars_eta,
                     exclude=lambda v: is_bn_or_bias(v) or is_supervised_head(v))
  elif config.optimizer == 'momentum':
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
  else:
    optimizer = keras.optimizers.Adam(schedule)
  return precision.wrap_optimizer(optimizer, config.precision)


def weight_decay_loss(model, config: Config) -> tf.Tensor:
  """The part of weight decay that goes through the loss: the supervised kernel under LARS, else every
  non-batch-norm variable."""
  if not config.weight_decay:
    return tf.constant(0.0)
  if config.optimizer == 'lars':
    variables = [v for v in model.trainable_variables if is_supervised_head(v) and v.name == 'kernel']
  else:
    variables = [v for v in model.trainable_variables if v.name not in ('gamma', 'beta')]
  if not variables:
    return tf.constant(0.0)
  return config.weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
