"""LARS (layer-wise adaptive rate scaling) as a Keras 3 optimizer, as the SimCLR paper uses it."""

from typing import Callable

import keras
from keras import ops


NORMS_AND_BIASES = ('gamma', 'beta', 'bias')  # batch and layer norms' parameters, biases
EMBEDDINGS = ('position_embedding', 'class_token')  # a Vision Transformer's (simclr_tf.models.vit)


def excluded_from_decay(variable) -> bool:
  """Norm parameters, biases and a ViT's position embedding and class token: no weight decay, no trust ratio
  (plain momentum SGD)."""
  return variable.name in NORMS_AND_BIASES + EMBEDDINGS


class LARS(keras.optimizers.Optimizer):
  """Per variable: g += wd*w; trust = eta*|w|/|g| (1 if either norm is 0); v = m*v + lr*trust*g; w -= v.

  `exclude(variable) -> bool` picks the variables that skip both weight decay and the trust ratio; it is evaluated
  once per variable in build() (update_step only sees the raw tf variable).
  """

  def __init__(self, learning_rate=0.001, momentum=0.9, weight_decay_rate=0.0, eta=0.001,
               exclude: Callable = excluded_from_decay, name='LARS', **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = momentum
    self.weight_decay_rate = weight_decay_rate
    self.eta = eta
    self.exclude = exclude

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self.momentums = self.add_optimizer_variables(variables, 'momentum')
    self._adapt = [not self.exclude(v) for v in variables]

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    lr = ops.cast(learning_rate, variable.dtype)
    grad = ops.cast(gradient, variable.dtype)
    if self._adapt[index]:
      if self.weight_decay_rate:
        grad = grad + self.weight_decay_rate * variable
      w_norm = ops.sqrt(ops.sum(ops.square(variable)))
      g_norm = ops.sqrt(ops.sum(ops.square(grad)))
      trust = ops.where(ops.logical_and(w_norm > 0, g_norm > 0),
                        self.eta * w_norm / ops.maximum(g_norm, 1e-30), ops.ones_like(w_norm))
      lr = lr * ops.cast(trust, variable.dtype)
    velocity = self.momentums[index]
    self.assign(velocity, self.momentum * velocity + lr * grad)
    self.assign_sub(variable, velocity)

  def get_config(self):
    config = super().get_config()
    config.update(momentum=self.momentum, weight_decay_rate=self.weight_decay_rate, eta=self.eta)
    return config
