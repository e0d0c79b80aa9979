"""From the optimizer's settings (OptimizerSettings: `config.optim`; a Config is taken as its section) to what a
training mode optimises with: the length of the run, the learning-rate schedule, the optimizer (LARS, momentum SGD
or Adam; loss-scaled under mixed_float16) and the part of weight decay that goes through the loss."""

import dataclasses
import logging

import keras
import tensorflow as tf

from simclr_tf import precision
from simclr_tf.config import OptimizerSettings, section_of
from simclr_tf.optim.lars import EMBEDDINGS, LARS, excluded_from_decay
from simclr_tf.optim.schedule import WarmupCosine, scaled_learning_rate

log = logging.getLogger('simclr_tf')


@dataclasses.dataclass(frozen=True)
class Period:
  """Every numerator/denominator steps, a fraction: the k-th time is step k * numerator // denominator. An epoch of N
  examples at batch B is N/B steps, so with (epochs * N, B) the k-th time is the step where epoch k * epochs ends
  as total_steps counts epochs: the schedule, the checkpoints and the measurements agree on what an epoch is."""
  numerator: int
  denominator: int = 1

  def next_after(self, step: int) -> int:
    """The first step after `step` at which the period comes round."""
    k = ((step + 1) * self.denominator + self.numerator - 1) // self.numerator
    return k * self.numerator // self.denominator

  def holds(self, step: int) -> bool:
    return step > 0 and self.next_after(step - 1) == step


def epoch_period(settings, num_examples: int, epochs: int) -> Period:
  settings = section_of(settings, OptimizerSettings)
  return Period(epochs * num_examples, settings.train_batch_size)


def total_steps(settings, num_examples: int) -> int:
  settings = section_of(settings, OptimizerSettings)
  if settings.train_steps > 0:
    return settings.train_steps
  return max(1, settings.train_epochs * num_examples // settings.train_batch_size)


def learning_rate_schedule(settings, num_examples: int) -> WarmupCosine:
  settings = section_of(settings, OptimizerSettings)
  peak = scaled_learning_rate(settings.learning_rate, settings.train_batch_size, settings.learning_rate_scaling)
  warmup = int(round(settings.warmup_epochs * num_examples / settings.train_batch_size))
  steps = total_steps(settings, num_examples)
  if warmup >= steps > 1:
    log.warning('--warmup_epochs=%g (%d steps) is as long as the whole run (%d steps): it is warm-up to the end and '
                'stops at its peak learning rate, never decaying; use a warm-up of a few percent of the run (the '
                'paper: 5%%), or --warmup_epochs=0', settings.warmup_epochs, warmup, steps)
  return WarmupCosine(peak, warmup, steps)


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
