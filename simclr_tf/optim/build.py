"""From the optimizer's settings (OptimizerSettings: `config.optim`; a Config is taken as its section) to what a
training mode optimises with: the length of the run, the learning-rate schedule, the optimizer (LARS, momentum SGD
or Adam; loss-scaled under mixed_float16) and the part of weight decay that goes through the loss."""

import keras
import tensorflow as tf

from simclr_tf import precision
from simclr_tf.config import OptimizerSettings, section_of
from simclr_tf.optim.lars import EMBEDDINGS, LARS, excluded_from_decay
from simclr_tf.optim.schedule import WarmupCosine, scaled_learning_rate


def steps_per_epoch(settings, num_examples: int) -> int:
  settings = section_of(settings, OptimizerSettings)
  return max(1, num_examples // settings.train_batch_size)


def total_steps(settings, num_examples: int) -> int:
  settings = section_of(settings, OptimizerSettings)
  if settings.train_steps > 0:
    return settings.train_steps
  return max(1, settings.train_epochs * num_examples // settings.train_batch_size)


def learning_rate_schedule(settings, num_examples: int) -> WarmupCosine:
  settings = section_of(settings, OptimizerSettings)
  peak = scaled_learning_rate(settings.learning_rate, settings.train_batch_size, settings.learning_rate_scaling)
  warmup = int(round(settings.warmup_epochs * num_examples / settings.train_batch_size))
  return WarmupCosine(peak, warmup, total_steps(settings, num_examples))


def is_supervised_head(variable) -> bool:
  return 'supervised_head' in variable.path


def make_optimizer(settings, schedule) -> keras.optimizers.Optimizer:
  """The --optimizer, loss-scaled under --precision=mixed_float16."""
  settings = section_of(settings, OptimizerSettings)
  if settings.optimizer == 'lars':
    # The supervised head gets its weight decay through the loss (as in the paper's code), not from LARS.
    optimizer = LARS(schedule, momentum=settings.momentum, weight_decay_rate=settings.weight_decay,
                     eta=settings.lars_eta, exclude=lambda v: excluded_from_decay(v) or is_supervised_head(v))
  elif settings.optimizer == 'momentum':
    optimizer = keras.optimizers.SGD(schedule, momentum=settings.momentum)
  else:
    optimizer = keras.optimizers.Adam(schedule)
  return precision.wrap_optimizer(optimizer, settings.precision)


def weight_decay_loss(model, settings) -> tf.Tensor:
  """The part of weight decay that goes through the loss: the supervised kernel under LARS, else every variable
  but norm parameters and a ViT's position embedding and class token (biases too, as in the paper's code)."""
  settings = section_of(settings, OptimizerSettings)
  if not settings.weight_decay:
    return tf.constant(0.0)
  if settings.optimizer == 'lars':
    variables = [v for v in model.trainable_variables if is_supervised_head(v) and v.name == 'kernel']
  else:
    variables = [v for v in model.trainable_variables if v.name not in ('gamma', 'beta') + EMBEDDINGS]
  if not variables:
    return tf.constant(0.0)
  return settings.weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
