"""--mode=finetune: supervised fine-tuning on (a fraction of) the labels from the projection head's layer
--ft_proj_selector of a pretrained model; from random weights without --checkpoint (the supervised baseline)."""

import logging
from typing import Dict

import tensorflow as tf

from simclr_tf import metrics
from simclr_tf.config import Config
from simclr_tf.data import views
from simclr_tf.methods import losses
from simclr_tf.modes import common
from simclr_tf.optim.build import weight_decay_loss
from simclr_tf.training.loop import Task

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_training(config)


def supervised_replica_step(model, config: Config):
  """Cross-entropy of the supervised head on one view + weight decay."""

  def replica_step(batch):
    logits = model(batch['image'], training=True)['logits_sup']
    sup_loss = losses.supervised_loss(batch['label'], logits)
    decay = weight_decay_loss(model, config.optim)
    loss = sup_loss + decay
    return loss, {'loss': loss, 'sup_loss': sup_loss, 'sup_acc': metrics.accuracy(batch['label'], logits),
                  'weight_decay': decay}

  return replica_step


@common.training_mode
def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  source = common.labelled_train_source(config, strategy)
  num_classes = config.num_classes or source.num_classes
  model, optimizer = common.build_classifier(
      config, strategy, source, num_classes, source.class_names if num_classes == source.num_classes else (),
      'fine-tuning starts from random weights (the supervised baseline)')
  if config.fine_tune_after_block >= 0:
    log.info('frozen: stem%s (weights and batch-norm statistics)',
             f' and block groups 1..{config.fine_tune_after_block}' if config.fine_tune_after_block else '')
  task = Task(model, optimizer, source, views.finetune_views(config.augmentation),
              supervised_replica_step(model, config))
  step = common.fit_and_export(config, strategy, task)
  result = common.evaluate_and_record(config, strategy, model, step, initialised_from=config.checkpoint or 'random')
  return result or {'step': step}
