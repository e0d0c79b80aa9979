"""A momentum network: a slowly moving copy of a network's encoder and projection head, w_ema = m·w_ema + (1 − m)·w
after each step. The memory of negatives (simclr_tf.methods.memory) draws its keys from one; BYOL
(simclr_tf.methods.byol) regresses onto one's projections.

Both networks are SimCLR models of the same architecture; only the encoder's and projection head's weights are
tied (a supervised head, or a predictor beside the online network, is not). Build it inside the strategy's scope; call
update() from the replica context (a Task's after_update), where every replica computes the same new weights and
writes them to its own copy.
"""

import keras
import tensorflow as tf


def encoder_and_head_weights(model, trainable_only: bool):
  """The weights of the encoder and projection head, in a fixed order (the same for two models of one config)."""
  layers = [model.encoder, model.projection_head]
  return [w for layer in layers for w in (layer.trainable_weights if trainable_only else layer.weights)]


def assign_everywhere(variables, values) -> None:
  """Assigns `values` to `variables` from a replica context (or none): every replica computes the same values,
  and each writes them to its own copy of the variables (as Keras' optimizers update theirs)."""
  variables = [v.value if isinstance(v, keras.Variable) else v for v in variables]

  def update(strategy, values):
    for variable, value in zip(variables, values):
      strategy.extended.update(variable, lambda var, x: var.assign(x), args=(value,), group=False)

  tf.__internal__.distribute.interim.maybe_merge_call(update, tf.distribute.get_strategy(), list(values))


class MomentumNetwork:
  """`target` follows `online` (two SimCLR models of one architecture): start_from_online() copies every weight
  (moving statistics included); update(m) moves the trainable ones, w_ema = m·w_ema + (1 − m)·w. The target's
  batch-norm moving statistics are its own (they follow its activations when it runs in training mode)."""

  def __init__(self, online, target):
    self.online, self.target = online, target
    if len(encoder_and_head_weights(target, False)) != len(encoder_and_head_weights(online, False)):
      raise ValueError('the momentum network does not have the online network\'s layers')
    self.pairs = list(zip(encoder_and_head_weights(target, True), encoder_and_head_weights(online, True)))

  def start_from_online(self) -> None:
    for target, source in zip(encoder_and_head_weights(self.target, False),
                              encoder_and_head_weights(self.online, False)):
      target.assign(source)

  def update(self, momentum) -> None:
    """w_ema = m·w_ema + (1 − m)·w over the trainable weights, w the online network's as they are now."""
    assign_everywhere([ema for ema, _ in self.pairs], [momentum * ema + (1 - momentum) * w for ema, w in self.pairs])
