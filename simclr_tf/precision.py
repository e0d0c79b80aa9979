"""Mixed precision: the Keras dtype policy layers are built under, and loss scaling for float16.

Weights stay float32 under every policy (checkpoints are interchangeable between float32 and mixed_bfloat16);
layers compute in the policy's 16-bit type. What must stay float32 does: the losses cast their inputs to float32,
the supervised head is a float32 layer (its logits feed a softmax), and Keras batch norm computes its statistics in
float32 for 16-bit inputs.
"""

import contextlib

import keras


@contextlib.contextmanager
def policy_scope(precision: str):
  """Layers created inside take `precision` ('float32', 'mixed_bfloat16', 'mixed_float16') as their dtype policy.

  Keras 3 has only a process-wide policy, read when a layer is created; it is restored on exit so that one run
  never changes another's models in the same process.
  """
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(precision)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """Dynamic loss scaling whose step counter advances on every step, skipped ones included.

  Keras skips the update of a step with non-finite (overflowed) gradients without counting it; training loops
  that resume at `iterations` and follow a schedule by it would then drift from the data they consumed.
  """

  def _stateful_handle_non_finite_grads(self):
    super()._stateful_handle_non_finite_grads()
    self.iterations.assign_add(1)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, precision: str) -> keras.optimizers.Optimizer:
  """The optimizer to train with: loss-scaled for float16, unchanged otherwise."""
  if precision == 'mixed_float16':
    return LossScaleOptimizer(optimizer)
  return optimizer


def scale_loss(optimizer: keras.optimizers.Optimizer, loss):
  """The loss to differentiate: multiplied by the loss scale under float16 (apply() divides the gradients)."""
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return optimizer.scale_loss(loss)
  return loss
