"""--mode=pretrain: contrastive pretraining (NT-Xent with negatives from all replicas, LARS, optionally a memory of
negatives from a momentum network), with linear evaluation of a stop-gradient supervised head while pretraining
when the data has labels."""

import logging
import os
from typing import Dict, Optional

import tensorflow as tf

from simclr_tf import losses, memory, metrics
from simclr_tf.config import Config
from simclr_tf.data import inputs, views
from simclr_tf.evaluation import knn_evaluate
from simclr_tf.models.simclr import build_model
from simclr_tf.modes import common
from simclr_tf.optim.build import epoch_period, learning_rate_schedule, make_optimizer, weight_decay_loss
from simclr_tf.training.loop import Measurement, Task, fit

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_training(config)
  common.require(not config.knn_every_epochs or config.eval_split,
                 f'--knn_every_epochs={config.knn_every_epochs} needs --eval_split (the split whose kNN accuracy '
                 f'is measured against --train_split).')
  common.require(not config.memory_size or config.memory_size >= 2 * config.train_batch_size,
                 f'--memory_size={config.memory_size} cannot hold the {2 * config.train_batch_size} keys a step '
                 f'enqueues (both views of --train_batch_size={config.train_batch_size}); use at least that, or 0 '
                 f'for no memory.')
  common.require(not config.export_momentum_network or config.memory_size,
                 '--export_momentum_network needs a memory of negatives (--memory_size > 0).')


def knn_monitor(config: Config, model, source: inputs.Source) -> Optional[Measurement]:
  """kNN top-1/top-5 of --eval_split against the (labelled) training split every --knn_every_epochs epochs, with
  the model in inference mode (its weights, statistics and the training data stream are untouched)."""
  if not config.knn_every_epochs:
    return None
  memory = common.knn_source(config, config.train_split, 'memory (--train_split)')
  queries = common.knn_source(config, config.eval_split, '--eval_split', memory.class_names)

  def measure():
    result = knn_evaluate(model, config, memory, queries, 'final_avg_pool', progress=False)
    return {'knn_top1': result['top1'], 'knn_top5': result['top5'], 'probe_top1': result['linear_probe_top1']}

  return Measurement(epoch_period(config.optim, source.num_examples, config.knn_every_epochs), measure)


def contrastive_replica_step(model, config: Config, num_classes: int,
                             negatives: Optional[memory.NegativesMemory] = None):
  """The per-replica step of pretraining: NT-Xent of the two views (stacked along channels in batch['image']) +
  weight decay, plus the linear head's cross-entropy on a stop-gradient when num_classes > 0. With a memory of
  negatives, the views are compared with the momentum network's keys and the queue's (simclr_tf.memory), and the
  step hands its keys on (carry) to be enqueued after the update."""

  def replica_step(batch):
    images = tf.concat(tf.split(batch['image'], 2, axis=-1), axis=0)
    outputs = model(images, training=True)
    z1, z2 = tf.split(outputs['proj_head_output'], 2, axis=0)
    keys = negatives.keys(images) if negatives else None
    queued, valid = negatives.negatives() if negatives else (None, None)
    con_loss, logits, labels = losses.nt_xent(z1, z2, config.temperature, config.hidden_norm, queued, valid, keys)
    accuracy, entropy = losses.contrastive_metrics(logits, labels)
    decay = weight_decay_loss(model, config.optim)
    loss = con_loss + decay
    values = {'contrast_loss': con_loss, 'contrast_acc': accuracy, 'contrast_entropy': entropy,
              'weight_decay': decay}
    if negatives:
      values['memory_fill'] = negatives.fill()
    if num_classes:
      sup_labels = tf.concat([batch['label'], batch['label']], axis=0)
      logits = outputs['logits_sup']
      if config.lineareval_lr_scale != 1:  # the same logits; their gradient (to the head alone) scaled
        scale = config.lineareval_lr_scale
        logits = scale * logits + (1 - scale) * tf.stop_gradient(logits)
      sup_loss = losses.supervised_loss(sup_labels, logits)
      loss += sup_loss
      values.update(sup_loss=sup_loss, sup_acc=metrics.accuracy(sup_labels, outputs['logits_sup']))
    if negatives:
      return loss, {'loss': loss, **values}, keys
    return loss, {'loss': loss, **values}

  return replica_step


def make_task(config: Config, strategy: tf.distribute.Strategy, source: Optional[inputs.Source],
              num_classes: int = 0, num_examples: int = 0) -> Task:
  """The pretraining task: model and optimizer made in the strategy's scope, the two-view augmentation and the
  contrastive step. Without a source (benchmarks feed their own batches), num_examples sets the schedule. The linear
  head (num_classes > 0) is named by the source's classes."""
  class_names = source.class_names if source is not None and num_classes else ()
  with strategy.scope():
    model = build_model(config.architecture, num_classes=num_classes, pretraining=True, class_names=class_names)
    optimizer = make_optimizer(config.optim, learning_rate_schedule(config.optim, source.num_examples if source else
                                                              num_examples))
    negatives = None
    if config.memory_size:
      negatives = memory.NegativesMemory(config, model, build_model(config.architecture, pretraining=True))
      negatives.start_from_online()  # a resumed run then restores it
  return Task(model, optimizer, source, views.pretrain_views(config.augmentation),
              contrastive_replica_step(model, config, num_classes, negatives),
              after_update=negatives.after_update if negatives else None,
              extra_checkpoint=negatives.checkpoint_objects() if negatives else {})


def write_view_pairs(config: Config, views_of: views.Views, batch: dict, count: int = 4) -> None:
  """TensorBoard image 'augmented_pairs' in model_dir/pretrain/ at step 0: the two views of the first `count`
  images of `batch` (the training stream's first batch, Task.first_batch), side by side."""
  images = views_of.in_step({key: value[:count] for key, value in batch.items()})['image']
  pairs = tf.concat(tf.split(images, 2, axis=-1), axis=2)  # [B, H, 2W, 3]
  writer = tf.summary.create_file_writer(os.path.join(config.model_dir, config.mode))
  with writer.as_default(step=0):
    tf.summary.image('augmented_pairs', pairs, max_outputs=count,
                     description='The two augmented views of the first training images (view 1 | view 2).')
  writer.close()


@common.training_mode
def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  source = inputs.make_source(config.data, config.train_split)
  num_classes = 0
  if config.lineareval_while_pretraining:
    if source.labeled:
      num_classes = config.num_classes or source.num_classes
    else:
      log.info('%s has no labels: linear evaluation while pretraining is off', source.name)
  task = make_task(config, strategy, source, num_classes)
  task.first_batch = lambda batch: write_view_pairs(config, task.views, batch)
  monitor = knn_monitor(config, task.model, source)
  step = fit(config, strategy, task, [monitor] if monitor else [])
  common.export_at_end(config, strategy, task.extra_checkpoint['momentum_network'] if config.export_momentum_network
                       else task.model, step)
  knn = {}
  if monitor and monitor.last:
    knn = {'knn_top1': monitor.last['knn_top1'], 'knn_top5': monitor.last['knn_top5'],
           'probe_top1': monitor.last['probe_top1'], 'knn_step': monitor.last['step'], 'knn_k': config.knn_k,
           'chance': 1 / max(source.num_classes, 1)}
  result = common.evaluate_and_record(config, strategy, task.model, step, **knn) if num_classes else None
  if monitor and not knn and result and 'knn_top1' in result:  # a rerun of a finished run: the first run's kNN
    knn = {key: result[key] for key in ('knn_top1', 'knn_top5', 'probe_top1', 'knn_step', 'knn_k', 'chance')
           if key in result}
  if all(key in knn for key in ('knn_top1', 'knn_step', 'probe_top1', 'chance')):
    log.info('on %s after %d steps: kNN top-1 %.4f, linear probe top-1 %.4f%s; chance %.4f', config.eval_split,
             knn['knn_step'], knn['knn_top1'], knn['probe_top1'],
             f', linear head top-1 {result["top1"]:.4f}' if result else '', knn['chance'])
  return result or dict(knn, step=step)
