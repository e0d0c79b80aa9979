"""Per-example classification metrics, shared by the training steps (averaged over a batch) and evaluation (summed
over a split). Top-1 compares the argmax with the label, so tied logits (a zero-initialised head) count once, for
the first class, never as correct for all."""

import tensorflow as tf


def top1_correct(labels, logits) -> tf.Tensor:
  """1.0 where the highest logit is the label's, else 0.0 (per example)."""
  return tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(labels, tf.int64)), tf.float32)


def topk_correct(labels, logits, k: int) -> tf.Tensor:
  """1.0 where the label is among the k highest logits (k is capped at the number of classes)."""
  k = min(k, int(logits.shape[-1]))
  if k == 1:
    return top1_correct(labels, logits)
  return tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k), tf.float32)


def agreement(logits_a, logits_b) -> tf.Tensor:
  """1.0 where both predict the same class (e.g. a student and its teacher), else 0.0."""
  return tf.cast(tf.equal(tf.argmax(logits_a, -1), tf.argmax(logits_b, -1)), tf.float32)


def accuracy(labels, logits) -> tf.Tensor:
  """Top-1 accuracy of a batch."""
  return tf.reduce_mean(top1_correct(labels, logits))
