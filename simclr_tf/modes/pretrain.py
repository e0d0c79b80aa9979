"""--mode=pretrain: self-supervised pretraining by --method (simclr_tf.methods: SimCLR's NT-Xent by default, BYOL),
with linear evaluation of a stop-gradient supervised head while pretraining when the data has labels, and a kNN
monitor."""

import logging
import os
from typing import Dict, Optional

import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.data import inputs, views
from simclr_tf.evaluation import knn_evaluate
from simclr_tf.methods import METHODS
from simclr_tf.modes import common
from simclr_tf.optim.build import epoch_period
from simclr_tf.training.loop import Measurement, Task

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_training(config)
  common.require(not config.knn_every_epochs or config.eval_split,
                 f'--knn_every_epochs={config.knn_every_epochs} needs --eval_split (the split whose kNN accuracy '
                 f'is measured against --train_split).')
  METHODS.settings(config.method).validate(config)


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


def make_task(config: Config, strategy: tf.distribute.Strategy, source: Optional[inputs.Source],
              num_classes: int = 0, num_examples: int = 0) -> Task:
  """The pretraining task of --method (simclr_tf.methods): model and optimizer made in the strategy's scope, the
  two-view augmentation and the method's step. Without a source (benchmarks feed their own batches), num_examples
  sets the schedule. The linear head (num_classes > 0) is named by the source's classes."""
  return METHODS[config.method].make_task(config, strategy, source, num_classes, num_examples)


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
  step = common.fit_and_export(config, strategy, task, [monitor] if monitor else [],
                               METHODS[config.method].exported_model(config, task))
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
