"""BYOL (Grill et al. 2020, "Bootstrap your own latent"): the online network (encoder, projection head) and a
predictor on its projection learn to predict a momentum network's projection of the other view.

- Online: the SimCLR model (simclr_tf.models.simclr; its projection head is the projector: --num_proj_layers,
  --proj_out_dim) and a predictor (simclr_tf.models.heads.PredictorHead: Dense(--predictor_hidden_dim), batch
  norm, ReLU, Dense(--proj_out_dim)). Target: a momentum network of the online encoder and projection head
  (simclr_tf.methods.momentum), in training mode (batch statistics) as the online network, no gradient.
- Loss, symmetrised over the two views: ‖p̂₁ − ẑ′₂‖² + ‖p̂₂ − ẑ′₁‖², where p̂ is the normalised prediction and ẑ′
  the target's normalised projection (each term 2 − 2·cos), averaged over the batch.
- After each update the target moves: w′ ← τ·w′ + (1 − τ)·w with τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 at step
  k of K (k = 0 for the first update; --byol_base_momentum is τ_base), so τ rises from τ_base to 1 by the end.
  τ is a function of the step counter, which a checkpoint holds: a resumed run continues the schedule exactly.
- Weight decay and LARS's trust ratio skip biases and batch-norm parameters (simclr_tf.optim.lars), as in the paper.
- The checkpoint holds the target ('momentum_network') and the predictor ('predictor') beside the online model,
  whose variables are those of a SimCLR run: its checkpoints fine-tune, distil, embed and kNN as SimCLR's. The
  SavedModel holds the online network (--export_momentum_network: the target).

Differences from the paper, at this project's scale: the projector is SimCLRv2's head (hidden layers as wide as the
encoder's output, batch norm on its output) rather than a 4096-wide MLP, and the linear head trained on a
stop-gradient while pretraining (--lineareval_while_pretraining) is kept, as for SimCLR.
"""

import math

import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.data import views
from simclr_tf.methods.momentum import MomentumNetwork
from simclr_tf.methods.shared import exported_model  # noqa: F401  (the method's: online, or the target)
from simclr_tf.methods.shared import linear_head_loss, online_network, stacked_views
from simclr_tf.models.heads import PredictorHead
from simclr_tf.models.simclr import build_model
from simclr_tf.optim.build import total_steps, weight_decay_loss
from simclr_tf.precision import policy_scope
from simclr_tf.training.loop import Task


def target_momentum(base: float, step, total: int):
  """τ at update `step` (0-based) of `total`: 1 − (1 − base)·(cos(π·step/total) + 1)/2."""
  progress = tf.cast(step, tf.float32) / float(max(total, 1))
  return 1.0 - (1.0 - base) * (tf.cos(math.pi * progress) + 1.0) / 2.0


def regression_loss(predictions: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
  """Mean over the batch of ‖p/‖p‖ − t/‖t‖‖² = 2 − 2·cos(p, t); no gradient flows into `targets`."""
  p = tf.math.l2_normalize(tf.cast(predictions, tf.float32), axis=-1)
  t = tf.math.l2_normalize(tf.stop_gradient(tf.cast(targets, tf.float32)), axis=-1)
  return tf.reduce_mean(2.0 - 2.0 * tf.reduce_sum(p * t, axis=-1))


def make_task(config: Config, strategy: tf.distribute.Strategy, source, num_classes: int = 0,
              num_examples: int = 0) -> Task:
  with strategy.scope():
    model, optimizer, num_examples = online_network(config, source, num_classes, num_examples)
    target = build_model(config.architecture, pretraining=True)
    with policy_scope(config.precision):
      predictor = PredictorHead(config.predictor_hidden_dim or model.encoder.output_dim, config.proj_out_dim,
                                config.batch_norm_decay, config.global_bn, name='predictor')
      predictor(tf.zeros([1, config.proj_out_dim]), training=False)
    momentum = MomentumNetwork(model, target)
    momentum.start_from_online()  # a resumed run then restores it
  steps = total_steps(config.optim, num_examples)

  def replica_step(batch):
    images = stacked_views(batch)
    outputs = model(images, training=True)
    p1, p2 = tf.split(predictor(outputs['proj_head_output'], training=True), 2, axis=0)
    t1, t2 = tf.split(target(images, training=True)['proj_head_output'], 2, axis=0)
    byol_loss = regression_loss(p1, t2) + regression_loss(p2, t1)
    decay = weight_decay_loss(model, config.optim) + weight_decay_loss(predictor, config.optim)
    loss = byol_loss + decay
    values = {'byol_loss': byol_loss, 'weight_decay': decay,
              'target_momentum': target_momentum(config.byol_base_momentum, optimizer.iterations, steps)}
    if num_classes:
      sup_loss, sup_values = linear_head_loss(outputs, batch, config.lineareval_lr_scale)
      loss += sup_loss
      values.update(sup_values)
    return loss, {'loss': loss, **values}

  def after_update(_):  # the optimizer has counted this step: it was update iterations - 1
    momentum.update(target_momentum(config.byol_base_momentum, optimizer.iterations - 1, steps))

  return Task(model, optimizer, source, views.pretrain_views(config.augmentation), replica_step,
              trainable=model.trainable_variables + predictor.trainable_variables, after_update=after_update,
              extra_checkpoint={'momentum_network': target, 'predictor': predictor})
