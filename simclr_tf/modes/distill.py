"""--mode=distill: a student learns the fine-tuned teacher's soft labels on (unlabeled) training images, with
crop+flip augmentation. Loss: T^2 * CE(softmax(teacher/T), student/T) [+ alpha * CE(labels) with
--distill_label_weight]."""

import logging
from typing import Dict

import tensorflow as tf

from simclr_tf import metrics, weights
from simclr_tf.config import Config
from simclr_tf.data import inputs, views
from simclr_tf.errors import UserError
from simclr_tf.methods import losses
from simclr_tf.models.registry import ENCODERS
from simclr_tf.modes import common
from simclr_tf.optim.build import weight_decay_loss
from simclr_tf.training.loop import Task

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_training(config)
  common.require(config.teacher, '--mode=distill needs --teacher=FINETUNED_MODEL_DIR.')


def load_teacher(config: Config, strategy):
  """The teacher of --teacher, frozen, and the prefix of its weights. Its architecture and class names come from
  the record its run wrote (a model_dir of ours, a checkpoint, or a SavedModel we exported); a file of the paper's
  reference code has none and is read from its variables (weights.reference_architecture). None of the student's
  flags applies to it but the precision."""
  path = config.teacher
  teacher, found = weights.load_model(config.replace(partial_checkpoint=False), path, strategy, flag='teacher',
                                     given=frozenset())
  if teacher.supervised_head is None:
    raise UserError(f'--teacher={path} has no supervised head: distil from a fine-tuned model.')
  teacher.trainable = False
  return teacher, found.prefix


def distillation_replica_step(student, teacher, config: Config):
  """The student's distillation loss against the frozen teacher's logits (+ the labelled loss with alpha > 0)."""
  alpha, temperature = config.distill_label_weight, config.distill_temperature

  def replica_step(batch):
    teacher_logits = tf.stop_gradient(teacher(batch['image'], training=False)['logits_sup'])
    logits = student(batch['image'], training=True)['logits_sup']
    distill_loss = losses.distillation_loss(teacher_logits, logits, temperature)
    decay = weight_decay_loss(student, config.optim)
    loss = distill_loss + decay
    values = {'distill_loss': distill_loss, 'weight_decay': decay,
              'teacher_agreement': tf.reduce_mean(metrics.agreement(logits, teacher_logits))}
    if alpha > 0:
      sup_loss = losses.supervised_loss(batch['label'], logits)
      loss += alpha * sup_loss
      values['sup_loss'] = sup_loss
    return loss, {'loss': loss, **values}

  return replica_step


@common.training_mode
def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  source = inputs.make_source(config.data, config.train_split)
  alpha = config.distill_label_weight
  if alpha > 0 and not source.labeled:
    raise UserError(f'--distill_label_weight={alpha} needs labels, and split {config.train_split!r} of '
                    f'{source.name} has none; use --distill_label_weight=0 for unlabeled data.')
  teacher, teacher_prefix = load_teacher(config, strategy)
  num_classes = int(teacher.supervised_head.dense.kernel.shape[-1])
  if alpha > 0 and teacher.class_names:  # the labels, as the teacher numbers the classes
    source = inputs.by_name(source, teacher.class_names, 'the teacher')
  student, optimizer = common.build_classifier(config, strategy, source, num_classes, teacher.class_names,
                                               'the student starts from random weights')
  log.info('distilling %s (teacher) into %s at T=%g%s', teacher_prefix,
           ENCODERS[config.encoder].describe(config.architecture), config.distill_temperature,
           f', label weight {alpha}' if alpha else '')
  task = Task(student, optimizer, source, views.finetune_views(config.augmentation),
              distillation_replica_step(student, teacher, config))
  step = common.fit_and_export(config, strategy, task)
  result = common.evaluate_and_record(config, strategy, student, step, teacher=teacher_prefix,
                                      teacher_model=teacher)
  return result or {'step': step}
