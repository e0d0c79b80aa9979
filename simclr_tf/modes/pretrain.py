"""--mode=pretrain: contrastive pretraining (NT-Xent with negatives from all replicas, LARS), with linear evaluation
of a stop-gradient supervised head while pretraining when the data has labels."""

import logging
from typing import Dict, Optional

import tensorflow as tf

from simclr_tf import losses, metrics
from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.models.simclr import build_model
from simclr_tf.modes import common
from simclr_tf.optim.build import learning_rate_schedule, make_optimizer, weight_decay_loss
from simclr_tf.training.loop import Task, fit

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_training(config)


def contrastive_replica_step(model, config: Config, num_classes: int):
  """The per-replica step of pretraining: NT-Xent of the two views (stacked along channels in batch['image']) +
  weight decay, plus the linear head's cross-entropy on a stop-gradient when num_classes > 0."""

  def replica_step(batch):
    images = tf.concat(tf.split(batch['image'], 2, axis=-1), axis=0)
    outputs = model(images, training=True)
    z1, z2 = tf.split(outputs['proj_head_output'], 2, axis=0)
    con_loss, logits_ab, labels = losses.nt_xent(z1, z2, config.temperature, config.hidden_norm)
    accuracy, entropy = losses.contrastive_metrics(logits_ab, labels)
    loss = con_loss + weight_decay_loss(model, config)
    values = {'contrast_loss': con_loss, 'contrast_acc': accuracy, 'contrast_entropy': entropy}
    if num_classes:
      sup_labels = tf.concat([batch['label'], batch['label']], axis=0)
      sup_loss = losses.supervised_loss(sup_labels, outputs['logits_sup'])
      loss += sup_loss
      values.update(sup_loss=sup_loss, sup_acc=metrics.accuracy(sup_labels, outputs['logits_sup']))
    return loss, {'loss': loss, **values}

  return replica_step


def make_task(config: Config, strategy: tf.distribute.Strategy, source: Optional[inputs.Source],
              num_classes: int = 0, num_examples: int = 0) -> Task:
  """The pretraining task: model and optimizer made in the strategy's scope, the two-view augmentation and the
  contrastive step. Without a source (benchmarks feed their own batches), num_examples sets the schedule."""
  with strategy.scope():
    model = build_model(config, num_classes=num_classes, pretraining=True)
    optimizer = make_optimizer(config, learning_rate_schedule(config, source.num_examples if source else
                                                              num_examples))
  return Task(model, optimizer, source, inputs.pretrain_view_fn(config),
              contrastive_replica_step(model, config, num_classes))


@common.training_mode
def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  source = inputs.make_source(config, config.train_split)
  num_classes = 0
  if config.lineareval_while_pretraining:
    if source.labeled:
      num_classes = config.num_classes or source.num_classes
    else:
      log.info('%s has no labels: linear evaluation while pretraining is off', source.name)
  task = make_task(config, strategy, source, num_classes)
  step = fit(config, strategy, task)
  common.export_at_end(config, strategy, task.model)
  result = common.evaluate_and_record(config, strategy, task.model, step) if num_classes else None
  return result or {'step': step}
