import numpy as np
import tensorflow as tf

from simclr_tf.methods import losses


def direct_nt_xent(z1, z2, tau):
  """NT-Xent written out per example: for view a_i the positive is b_i, the negatives every other a_j and b_j."""
  z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
  z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
  n = len(z1)
  total = 0.0
  for a, b in ((z1, z2), (z2, z1)):
    for i in range(n):
      pos = np.exp(a[i] @ b[i] / tau)
      others = sum(np.exp(a[i] @ b[j] / tau) for j in range(n)) + sum(
          np.exp(a[i] @ a[j] / tau) for j in range(n) if j != i)
      total += -np.log(pos / others)
  return total / n


def test_nt_xent_matches_direct_formula():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  loss, logits_ab, labels = losses.nt_xent(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), 0.5)
  np.testing.assert_allclose(loss.numpy(), direct_nt_xent(z1, z2, 0.5), rtol=1e-5)
  acc, entropy = losses.contrastive_metrics(logits_ab, labels)
  sims = (z1 / np.linalg.norm(z1, axis=1, keepdims=True)) @ (z2 / np.linalg.norm(z2, axis=1, keepdims=True)).T
  assert acc.numpy() == np.mean(np.argmax(sims, 1) == np.arange(6))
  p = np.exp(sims / 0.5) / np.exp(sims / 0.5).sum(1, keepdims=True)
  np.testing.assert_allclose(entropy.numpy(), -(p * np.log(p)).sum(1).mean(), rtol=1e-4)


def test_nt_xent_negatives_span_all_replicas_with_gradients():
  """On two replicas each with half the batch, the replica losses average to the one-device loss on the whole
  batch, and the summed gradients equal the one-device gradients: negatives (and their gradients) cross replicas."""
  rng = np.random.default_rng(1)
  z1 = tf.constant(rng.normal(size=(8, 4)), tf.float32)
  z2 = tf.constant(rng.normal(size=(8, 4)), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch([z1, z2])
    full, _, _ = losses.nt_xent(z1, z2, 0.2)
  full_grads = tape.gradient(full, [z1, z2])

  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'],
                                            cross_device_ops=tf.distribute.ReductionToOneDevice())
  halves = strategy.experimental_distribute_values_from_function(
      lambda ctx: (z1[4 * ctx.replica_id_in_sync_group:][:4], z2[4 * ctx.replica_id_in_sync_group:][:4]))

  @tf.function
  def step(values):
    def replica(pair):
      a, b = pair
      with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss, _, _ = losses.nt_xent(a, b, 0.2)
        # Each replica's loss is its local mean; scaling by 1/replicas makes the sum the global mean.
        scaled = loss / 2
      grads = tape.gradient(scaled, [a, b])
      return loss, grads
    return strategy.run(replica, args=(values,))

  loss, grads = step(halves)
  per_replica = [v.numpy() for v in strategy.experimental_local_results(loss)]
  np.testing.assert_allclose(np.mean(per_replica), full.numpy(), rtol=1e-5)
  # A replica's gradient w.r.t. its own inputs includes the terms where they are negatives of the other replica.
  g1 = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads[0])])
  np.testing.assert_allclose(g1, full_grads[0].numpy(), atol=1e-6)
  local_only, _, _ = losses.nt_xent(z1[:4], z2[:4], 0.2)
  assert abs(local_only.numpy() - per_replica[0]) > 1e-3


def test_distillation_and_supervised_losses():
  t = tf.constant([[2.0, 0.0, -1.0]])
  s = tf.constant([[0.5, 0.3, 0.1]])
  p = tf.nn.softmax(t / 2.0).numpy()
  q = tf.nn.log_softmax(s / 2.0).numpy()
  np.testing.assert_allclose(losses.distillation_loss(t, s, 2.0).numpy(), 4.0 * -(p * q).sum(), rtol=1e-6)
  np.testing.assert_allclose(losses.supervised_loss(tf.constant([0]), s).numpy(),
                             -tf.nn.log_softmax(s).numpy()[0, 0], rtol=1e-6)
