"""Measuring a model on a split: the supervised head's top-1, top-5 and loss across replicas (with a teacher, its
accuracy and the agreement), and the encoder's features with a weighted kNN classifier on them."""

import logging
import os
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from simclr_tf import metrics
from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.errors import UserError
from simclr_tf.runtime import files, monitor
from simclr_tf.runtime.distribute import check_batch_divides

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
  def replica_dataset(ctx):
    dataset = inputs.eval_dataset(source, config.data, per_replica_batch, ctx)
    return dataset.take(config.eval_steps) if config.eval_steps else dataset  # --eval_steps: the first batches

  dataset = strategy.distribute_datasets_from_function(replica_dataset)

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

  @tf.function(autograph=False)
  def step(batch):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(batch,)), axis=None)

  totals = tf.zeros([4 if teacher is None else 6])
  for batch in dataset:
    totals += step(batch)
  loss, top1, top5, count = totals.numpy().tolist()[:4]
  if int(count) != source.num_examples and not config.eval_steps:
    log.warning('evaluated %d examples, the split has %d', int(count), source.num_examples)
  examples = int(count)
  count = max(count, 1.0)
  result = {'top1': top1 / count, 'top5': top5 / count, 'loss': loss / count, 'num_examples': examples}
  if teacher is not None:
    teacher_top1, agree = totals.numpy().tolist()[4:]
    result.update(teacher_top1=teacher_top1 / count, teacher_agreement=agree / count)
  return result


def result_paths(model_dir: str, name: str, kind: str = 'eval'):
  """(model_dir/<kind>_<name>.json, model_dir/<kind>_<name>/): a result's file and its folder (TensorBoard's events
  and the result of each step, result_<step>.json). The name's characters that are unsafe in a file name become _."""
  safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)
  return os.path.join(model_dir, f'{kind}_{safe}.json'), os.path.join(model_dir, f'{kind}_{safe}')


def read_result(path: str) -> Optional[dict]:
  """The result in `path`, or None when it is missing or unreadable (a result is replaced, never repaired)."""
  try:
    found = files.read_json(path) if tf.io.gfile.exists(path) else None
  except (ValueError, tf.errors.OpError):
    return None
  return found if isinstance(found, dict) else None


def write_result(model_dir: str, name: str, result: dict, kind: str = 'eval', keep_later: bool = False) -> str:
  """Writes `result` three ways: model_dir/<kind>_<name>.json (the latest result), <kind>_<name>/result_<step>.json
  (one per step, kept: the history of the run's evaluations) and TensorBoard scalars at the result's step in
  <kind>_<name>/. Returns the path of the first.

  A rerun of a finished command writes the result of the same step again: what the file already holds for that
  step and `result` lacks (the kNN accuracy measured while training, which a rerun does not measure again) is kept,
  and added to `result`; the rest is replaced. A result of another step replaces the file whole, unless
  `keep_later` and the file holds a later step of the same run (an evaluator catching up on earlier checkpoints:
  the 'checkpoint' of both in one folder)."""
  path, folder = result_paths(model_dir, name, kind)
  recorded = read_result(path) or {}
  step = int(result.get('step', 0))
  if 'step' in result and recorded.get('step') == result['step'] and recorded.get('mode') == result.get('mode'):
    for key, value in recorded.items():
      result.setdefault(key, value)
  files.write_json(os.path.join(folder, f'result_{step}.json'), result)
  same_run = os.path.dirname(str(recorded.get('checkpoint', ''))) == os.path.dirname(str(result.get('checkpoint')))
  if not (keep_later and same_run and isinstance(recorded.get('step'), int) and recorded['step'] > step):
    files.write_json(path, result)
  writer = tf.summary.create_file_writer(folder)
  with writer.as_default(step=step):
    for key, value in sorted(result.items()):
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != 'step':
        tf.summary.scalar(key, value)
  writer.close()
  return path


def embed(model, source: inputs.Source, config: Config, key: str = 'final_avg_pool', batch_size: int = 0,
          progress: Optional[str] = None) -> Dict[str, np.ndarray]:
  """One pass over `source` with eval preprocessing: {'ids': the examples' names, 'labels' (-1 without labels),
  'vectors': model output `key` [N, D]} in record order, without the images that cannot be read (counted in
  'skipped'). With `progress` (a title), logs a progress line about every 10% of the split."""
  batch_size = batch_size or config.eval_batch_size
  records = source.records(0, 1).enumerate()

  def prepare(index, record):
    return {'image': inputs.eval_image(source, config.image_size, record), 'label': record['label'], 'index': index}

  dataset = records.map(inputs.as_written(prepare), num_parallel_calls=tf.data.AUTOTUNE)
  if not config.strict_data:
    dataset = dataset.ignore_errors()
  dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  encode = tf.function(lambda images: model(images, training=False)[key], autograph=False)
  vectors, labels, indices = [], [], []
  start, done, next_report = time.time(), 0, source.num_examples / 10
  for batch in dataset:
    vectors.append(encode(batch['image']).numpy())
    labels.append(batch['label'].numpy())
    indices.append(batch['index'].numpy())
    done += len(indices[-1])
    if progress and (done >= next_report or done == source.num_examples):
      rate = done / max(time.time() - start, 1e-9)
      log.info('%s: %d/%d images  %.1f img/s  ETA %s', progress, done, source.num_examples, rate,
               monitor.format_duration((source.num_examples - done) / rate))
      next_report += source.num_examples / 10
  indices = np.concatenate(indices) if indices else np.zeros([0], np.int64)
  names = source.example_ids()
  return {'ids': np.array([names[i] for i in indices]),
          'labels': np.concatenate(labels) if labels else np.zeros([0], np.int64),
          'vectors': np.concatenate(vectors) if vectors else np.zeros([0, 0], np.float32),
          'skipped': source.num_examples - len(indices)}


def features(model, source: inputs.Source, config: Config, batch_size: int = 256, key: str = 'final_avg_pool',
             progress: Optional[str] = None):
  """(L2-normalised representations [N, D], labels [N]) of every readable example of `source`."""
  found = embed(model, source, config, key, batch_size, progress)
  vectors = found['vectors']
  return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12), found['labels']


def knn_classify(train_feats, train_labels, test_feats, test_labels, k: int = 200, temperature: float = 0.1,
                 num_classes: int = 0, chunk: int = 1024) -> Dict[str, float]:
  """Weighted kNN classification as in instance-discrimination papers (InstDisc; lightly's monitor): the k training
  examples of highest cosine similarity (features L2-normalised) vote for their class with weight
  exp(similarity / temperature). Returns {'top1', 'top5'} (top-5: the label among the 5 classes of most votes)."""
  num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
  top1 = top5 = 0
  for start in range(0, len(test_feats), chunk):
    sims = test_feats[start:start + chunk] @ train_feats.T
    k_eff = min(k, sims.shape[1])
    nearest = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]
    weights = np.exp(np.take_along_axis(sims, nearest, axis=1) / temperature)
    votes = np.zeros([len(sims), num_classes])
    np.add.at(votes, (np.arange(len(sims))[:, None], train_labels[nearest]), weights)
    labels = test_labels[start:start + chunk]
    ranked = np.argsort(-votes, axis=1, kind='stable')
    top1 += int(np.sum(ranked[:, 0] == labels))
    top5 += int(np.sum(np.any(ranked[:, :min(5, num_classes)] == labels[:, None], axis=1)))
  count = max(len(test_feats), 1)
  return {'top1': top1 / count, 'top5': top5 / count}


def linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes: int = 0, steps: int = 500,
                 learning_rate: float = 0.05, weight_decay: float = 1e-4) -> float:
  """Top-1 on the test set of a linear classifier fitted to frozen features (the linear evaluation protocol, without
  augmentation): features standardised with the training set's mean and deviation, softmax regression with L2
  weight decay fitted by full-batch Adam for `steps` steps from zero. Deterministic."""
  num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
  mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
  x, x_test = (train_feats - mean) / std, (test_feats - mean) / std
  x = np.concatenate([x, np.ones([len(x), 1])], axis=1)  # bias as a constant feature
  x_test = np.concatenate([x_test, np.ones([len(x_test), 1])], axis=1)
  targets = np.eye(num_classes)[train_labels]
  w = np.zeros([x.shape[1], num_classes])
  m, v = np.zeros_like(w), np.zeros_like(w)
  for t in range(1, steps + 1):
    logits = x @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = x.T @ (p - targets) / len(x) + weight_decay * w
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad ** 2
    w -= learning_rate * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
  return float(np.mean((x_test @ w).argmax(1) == test_labels))


def knn_evaluate(model, config: Config, memory: inputs.Source, queries: inputs.Source, key: str = 'final_avg_pool',
                 progress: bool = True) -> Dict[str, float]:
  """kNN top-1/top-5 (--knn_k, --knn_temperature) of `queries` against the features `key` of `memory`, the model
  in inference mode, and the top-1 of a linear probe fitted to the same (L2-normalised) features; with the
  numbers of examples and the k used ('k': at most the memory's size, said in one line when --knn_k is more)."""
  train_feats, train_labels = features(model, memory, config, config.eval_batch_size, key,
                                       progress=f'kNN memory {memory.split}' if progress else None)
  test_feats, test_labels = features(model, queries, config, config.eval_batch_size, key,
                                     progress=f'kNN queries {queries.split}' if progress else None)
  num_classes = max(memory.num_classes, queries.num_classes)
  k = min(config.knn_k, len(train_labels))
  if k < config.knn_k and progress:
    log.info('--knn_k=%d is more than the memory\'s %d examples: every one of them votes (k=%d)', config.knn_k,
             len(train_labels), k)
  result = knn_classify(train_feats, train_labels, test_feats, test_labels, k, config.knn_temperature,
                        num_classes=num_classes)
  result.update(linear_probe_top1=linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes),
                num_examples=len(test_labels), memory_examples=len(train_labels), k=k)
  return result
