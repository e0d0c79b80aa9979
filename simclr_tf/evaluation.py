"""Measuring a model on a split: the supervised head's top-1, top-5 and loss across replicas (with a teacher, its
accuracy and the agreement), and the encoder's features with a weighted kNN classifier on them."""

import logging
import os
from typing import Dict

import tensorflow as tf

from simclr_tf import files, metrics
from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.distribute import check_batch_divides
from simclr_tf.errors import UserError

log = logging.getLogger('simclr_tf')


def evaluate(model, source: inputs.Source, config: Config, strategy: tf.distribute.Strategy,
             teacher=None) -> Dict[str, float]:
  """Top-1/top-5 accuracy and mean cross-entropy of `logits_sup` on every example of `source`; with a teacher
  model also the teacher's top-1 and the fraction of examples where both predict the same class."""
  if not source.labeled:
    raise UserError(f'split {source.split!r} of {source.name} has no labels; evaluation needs labelled data.')
  if getattr(model, 'supervised_head', None) is None:
    raise UserError('the model has no supervised head to evaluate.')
  per_replica_batch = check_batch_divides(config.eval_batch_size, strategy, 'eval_batch_size')
  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: inputs.eval_dataset(source, config, per_replica_batch, ctx))

  def replica_step(batch):
    logits = tf.cast(model(batch['image'], training=False)['logits_sup'], tf.float32)
    labels = tf.cast(batch['label'], tf.int32)
    mask = batch['mask']
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    top1 = metrics.top1_correct(labels, logits)
    top5 = metrics.topk_correct(labels, logits, 5)
    sums = [tf.reduce_sum(ce * mask), tf.reduce_sum(top1 * mask), tf.reduce_sum(top5 * mask), tf.reduce_sum(mask)]
    if teacher is not None:
      teacher_logits = teacher(batch['image'], training=False)['logits_sup']
      teacher_top1 = metrics.top1_correct(labels, teacher_logits)
      agree = metrics.agreement(logits, teacher_logits)
      sums += [tf.reduce_sum(teacher_top1 * mask), tf.reduce_sum(agree * mask)]
    return tf.stack(sums)

  @tf.function
  def step(batch):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(batch,)), axis=None)

  totals = tf.zeros([4 if teacher is None else 6])
  for batch in dataset:
    totals += step(batch)
  loss, top1, top5, count = totals.numpy().tolist()[:4]
  if int(count) != source.num_examples:
    log.warning('evaluated %d examples, the split has %d', int(count), source.num_examples)
  examples = int(count)
  count = max(count, 1.0)
  result = {'top1': top1 / count, 'top5': top5 / count, 'loss': loss / count, 'num_examples': examples}
  if teacher is not None:
    teacher_top1, agree = totals.numpy().tolist()[4:]
    result.update(teacher_top1=teacher_top1 / count, teacher_agreement=agree / count)
  return result


def write_result(model_dir: str, split: str, result: dict) -> str:
  """Writes model_dir/eval_<split>.json (the split's characters that are unsafe in a file name become _)."""
  safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in split)
  return files.write_json(os.path.join(model_dir, f'eval_{safe}.json'), result)


def features(model, source: inputs.Source, config: Config, batch_size: int = 256, key: str = 'final_avg_pool'):
  """(L2-normalised representations [N, D], labels [N]) of every example of `source` (eval preprocessing)."""
  import numpy as np
  feats, labels = [], []
  encode = tf.function(lambda images: model(images, training=False)[key])
  for batch in inputs.eval_dataset(source, config, batch_size):
    keep = batch['mask'].numpy() > 0
    feats.append(tf.math.l2_normalize(encode(batch['image']), axis=-1).numpy()[keep])
    labels.append(batch['label'].numpy()[keep])
  return np.concatenate(feats), np.concatenate(labels)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 200, temperature: float = 0.1,
                 chunk: int = 1024) -> float:
  """Weighted kNN top-1 (cosine similarity, votes exp(sim / T) of the k nearest training examples), the monitor
  of instance-discrimination papers."""
  import numpy as np
  num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  correct = 0
  for start in range(0, len(test_feats), chunk):
    sims = test_feats[start:start + chunk] @ train_feats.T
    k_eff = min(k, sims.shape[1])
    nearest = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]
    weights = np.exp(np.take_along_axis(sims, nearest, axis=1) / temperature)
    votes = np.zeros([len(sims), num_classes])
    np.add.at(votes, (np.arange(len(sims))[:, None], train_labels[nearest]), weights)
    correct += int(np.sum(votes.argmax(1) == test_labels[start:start + chunk]))
  return correct / len(test_feats)
