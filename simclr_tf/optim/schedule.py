"""Learning rate: batch scaling, linear warmup, cosine decay to zero."""

import math

import keras
from keras import ops


def scaled_learning_rate(base: float, batch_size: int, scaling: str) -> float:
  if scaling == 'linear':
    return base * batch_size / 256.0
  if scaling == 'sqrt':
    return base * math.sqrt(batch_size)
  raise ValueError(f'unknown learning-rate scaling {scaling!r}')


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `peak` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""

  def __init__(self, peak: float, warmup_steps: int, total_steps: int):
    super().__init__()
    self.peak = peak
    self.warmup_steps = warmup_steps
    self.total_steps = total_steps

  def __call__(self, step):
    step = ops.cast(step, 'float32')
    warmup = ops.cast(self.warmup_steps, 'float32')
    warm = self.peak * step / warmup if self.warmup_steps else self.peak
    decay_steps = max(self.total_steps - self.warmup_steps, 1)
    progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
    cosine = self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
    return ops.where(step < warmup, warm, cosine)

  def get_config(self):
    return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
