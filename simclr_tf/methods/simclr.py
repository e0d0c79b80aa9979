"""SimCLR (Chen et al. 2020; v2): NT-Xent of two views' projections with negatives from all replicas, optionally a
memory of negatives from a momentum network (simclr_tf.methods.memory), and the linear head on a stop-gradient."""

from typing import Optional

import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.data import views
from simclr_tf.methods import losses, memory
from simclr_tf.methods.shared import exported_model  # noqa: F401  (the method's: the online network)
from simclr_tf.methods.shared import linear_head_loss, online_network, stacked_views
from simclr_tf.models.simclr import build_model
from simclr_tf.optim.build import weight_decay_loss
from simclr_tf.training.loop import Task


def contrastive_replica_step(model, config: Config, num_classes: int,
                             negatives: Optional[memory.NegativesMemory] = None):
  """The per-replica step of pretraining: NT-Xent of the two views (stacked along channels in batch['image']) +
  weight decay, plus the linear head's cross-entropy on a stop-gradient when num_classes > 0. With a memory of
  negatives, the views are compared with the momentum network's keys and the queue's (simclr_tf.methods.memory), and the
  step hands its keys on (carry) to be enqueued after the update."""

  def replica_step(batch):
    images = stacked_views(batch)
    outputs = model(images, training=True)
    z1, z2 = tf.split(outputs['proj_head_output'], 2, axis=0)
    if negatives:
      keys = negatives.keys(images)
      queued, valid = negatives.negatives()
      con_loss, logits, labels = losses.nt_xent_against_keys(z1, z2, keys, config.temperature, config.hidden_norm,
                                                             queued, valid)
    else:
      con_loss, logits, labels = losses.nt_xent(z1, z2, config.temperature, config.hidden_norm)
    accuracy, entropy = losses.contrastive_metrics(logits, labels)
    decay = weight_decay_loss(model, config.optim)
    loss = con_loss + decay
    values = {'contrast_loss': con_loss, 'contrast_acc': accuracy, 'contrast_entropy': entropy,
              'weight_decay': decay}
    if negatives:
      values['memory_fill'] = negatives.fill()
    if num_classes:
      sup_loss, sup_values = linear_head_loss(outputs, batch, config.lineareval_lr_scale)
      loss += sup_loss
      values.update(sup_values)
    if negatives:
      return loss, {'loss': loss, **values}, keys
    return loss, {'loss': loss, **values}

  return replica_step


def make_task(config: Config, strategy: tf.distribute.Strategy, source, num_classes: int = 0,
              num_examples: int = 0) -> Task:
  with strategy.scope():
    model, optimizer, _ = online_network(config, source, num_classes, num_examples)
    negatives = None
    if config.memory_size:
      negatives = memory.NegativesMemory(config, model, build_model(config.architecture, pretraining=True))
      negatives.start_from_online()  # a resumed run then restores it
  return Task(model, optimizer, source, views.pretrain_views(config.augmentation),
              contrastive_replica_step(model, config, num_classes, negatives),
              after_update=negatives.after_update if negatives else None,
              extra_checkpoint=negatives.checkpoint_objects() if negatives else {})
