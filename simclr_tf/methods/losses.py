"""NT-Xent with negatives from all replicas, in its three forms (SimCLR's: nt_xent; with a memory of extra
negatives: nt_xent_with_memory; against a momentum network's keys, as in MoCo: nt_xent_against_keys), one
computation underneath; supervised cross-entropy and the distillation loss.

Each loss is the mean over the local (per-replica) batch; the training step divides it by the number of replicas
and Keras sums the gradients across replicas, so the update equals that of one device on the global batch.
"""

from typing import Optional, Tuple

import tensorflow as tf

LARGE_NUM = 1e9


def cross_replica_concat(tensor: tf.Tensor) -> tf.Tensor:
  """Concatenates `tensor` over all replicas along axis 0, in replica order, differentiably.

  Written as an all-reduce of a one-hot scatter (the gradient of an all-reduce is an all-reduce), which works
  the same on CPU, GPU and TPU and under every strategy.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return tensor
  num_replicas = context.num_replicas_in_sync
  replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
  scattered = tf.scatter_nd(indices=[[replica_id]], updates=[tensor],
                            shape=tf.concat([[num_replicas], tf.shape(tensor)], axis=0))
  gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, scattered)
  return tf.reshape(gathered, tf.concat([[-1], tf.shape(tensor)[1:]], axis=0))


def replica_offset(local_batch) -> tf.Tensor:
  """Index of this replica's first example in the gathered global batch."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return tf.constant(0, tf.int32)
  return tf.cast(context.replica_id_in_sync_group, tf.int32) * local_batch


def _normalised(z, hidden_norm: bool) -> tf.Tensor:
  z = tf.cast(z, tf.float32)
  return tf.math.l2_normalize(z, axis=-1) if hidden_norm else z


def _contrast(z1, z2, k1_all, k2_all, temperature: float, memory=None, memory_valid=None):
  """The one computation of every NT-Xent below: anchors z1, z2 [B, D] (local batch, as compared) against keys
  k1_all, k2_all [global batch, D] (gathered in replica order; this replica's own images at replica_offset) and an
  optional memory of extra negatives. Returns (loss, logits, labels) as nt_xent documents them."""
  local_batch = tf.shape(z1)[0]
  global_batch = tf.shape(k1_all)[0]
  positives = replica_offset(local_batch) + tf.range(local_batch)
  labels = tf.one_hot(positives, global_batch * 2)
  self_mask = tf.one_hot(positives, global_batch)

  logits_aa = tf.matmul(z1, k1_all, transpose_b=True) / temperature - self_mask * LARGE_NUM
  logits_bb = tf.matmul(z2, k2_all, transpose_b=True) / temperature - self_mask * LARGE_NUM
  logits_ab = tf.matmul(z1, k2_all, transpose_b=True) / temperature
  logits_ba = tf.matmul(z2, k1_all, transpose_b=True) / temperature
  logits_a = [logits_ab, logits_aa]
  logits_b = [logits_ba, logits_bb]
  metric_logits, metric_labels = logits_ab, labels[:, :global_batch]
  if memory is not None:
    memory = tf.cast(memory, tf.float32)
    empty = (1 - tf.cast(memory_valid, tf.float32)) * LARGE_NUM  # slots not yet written are never negatives
    logits_am = tf.matmul(z1, memory, transpose_b=True) / temperature - empty
    logits_bm = tf.matmul(z2, memory, transpose_b=True) / temperature - empty
    logits_a.append(logits_am)
    logits_b.append(logits_bm)
    no_positive = tf.zeros([local_batch, tf.shape(memory)[0]])
    labels = tf.concat([labels, no_positive], axis=1)
    metric_logits = tf.concat([logits_ab, logits_am], axis=1)
    metric_labels = tf.concat([metric_labels, no_positive], axis=1)
  loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat(logits_a, axis=1))
  loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat(logits_b, axis=1))
  return tf.reduce_mean(loss_a + loss_b), metric_logits, metric_labels


def nt_xent(z1: tf.Tensor, z2: tf.Tensor, temperature: float, hidden_norm: bool = True):
  """SimCLR's contrastive loss of two views' projections [B, D] (local batch).

  Returns (loss, logits, labels): the loss is CE([ab|aa]) + CE([ba|bb]) averaged over the local batch, where
  each view's negatives are all other examples of both views across the global batch. `logits` are the first view's
  logits against the second view's (logits_ab, [B, global batch]) and `labels` their one-hot positives, for the
  contrastive accuracy and entropy.
  """
  z1, z2 = _normalised(z1, hidden_norm), _normalised(z2, hidden_norm)
  return _contrast(z1, z2, cross_replica_concat(z1), cross_replica_concat(z2), temperature)


def nt_xent_with_memory(z1: tf.Tensor, z2: tf.Tensor, temperature: float, memory: tf.Tensor,
                        memory_valid: tf.Tensor, hidden_norm: bool = True):
  """nt_xent with a memory of extra negatives: `memory` [K, D], keys as they will be compared (already normalised
  with hidden_norm), and `memory_valid` [K] bool, the slots that hold a key. Each view's logits also hold its
  similarity to every valid key, as negatives: CE([ab|aa|am]) + CE([ba|bb|bm]); `logits` and `labels` then cover
  [ab|am], so the accuracy and entropy are measured against the enlarged set of negatives."""
  z1, z2 = _normalised(z1, hidden_norm), _normalised(z2, hidden_norm)
  return _contrast(z1, z2, cross_replica_concat(z1), cross_replica_concat(z2), temperature, memory, memory_valid)


def nt_xent_against_keys(z1: tf.Tensor, z2: tf.Tensor, keys: Tuple[tf.Tensor, tf.Tensor], temperature: float,
                         hidden_norm: bool = True, memory: Optional[tf.Tensor] = None,
                         memory_valid: Optional[tf.Tensor] = None):
  """NT-Xent of the anchors z1, z2 [B, D] (local batch) against keys (k1, k2) [global batch, D] instead of against
  each other, as in MoCo: the keys are a momentum network's normalised projections of the two views, gathered across
  replicas in replica order, compared as given. a[i]'s positive is k2[global index of i], its negatives k2[j] and
  k1[j] for every other j of the global batch (and the memory's valid keys, as in nt_xent_with_memory). No gradient
  flows into the keys. Returns (loss, logits, labels) as nt_xent_with_memory."""
  z1, z2 = _normalised(z1, hidden_norm), _normalised(z2, hidden_norm)
  k1_all, k2_all = (tf.stop_gradient(tf.cast(k, tf.float32)) for k in keys)
  return _contrast(z1, z2, k1_all, k2_all, temperature, memory, memory_valid)


def contrastive_metrics(logits_ab: tf.Tensor, labels: tf.Tensor):
  """(accuracy of finding the positive among the other view, mean entropy of softmax(logits_ab))."""
  accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits_ab, 1), tf.argmax(labels, 1)), tf.float32))
  prob = tf.nn.softmax(logits_ab)
  entropy = -tf.reduce_mean(tf.reduce_sum(prob * tf.math.log(prob + 1e-8), axis=-1))
  return accuracy, entropy


def supervised_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Mean softmax cross-entropy of integer labels."""
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)))


def distillation_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float) -> tf.Tensor:
  """T^2 * CE(softmax(teacher/T), student/T), averaged over the batch."""
  teacher = tf.stop_gradient(tf.nn.softmax(tf.cast(teacher_logits, tf.float32) / temperature))
  ce = tf.nn.softmax_cross_entropy_with_logits(teacher, tf.cast(student_logits, tf.float32) / temperature)
  return temperature ** 2 * tf.reduce_mean(ce)
