"""The memory of negatives (--memory_size): the loss against a direct formula, the queue, the momentum update, the
checkpoint, exact resume, two replicas against one device, and the exported network."""

import os

import numpy as np
import pytest
import tensorflow as tf

import run as run_py
from conftest import ROOT, checkpoint_values, run_cli, run_interrupted_then_resumed, tiny_config
from simclr_tf import weights
from simclr_tf.methods import losses, memory
from simclr_tf.methods import momentum
from simclr_tf.modes import pretrain
from simclr_tf.runtime import monitor
from simclr_tf.training import loop


def direct_loss_with_memory(z1, z2, keys, valid, tau, k1=None, k2=None):
  """NT-Xent written out per anchor: the positive (the other view's key of the same image) against the other view's
  keys of the other images, the own view's keys of the other images and every valid key of the memory. The views'
  keys are k1, k2 (a momentum network's, compared as given) or, by default, the normalised views themselves. Also
  the accuracy of finding the positive among [other view's keys | valid memory keys]."""
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  z1, z2, keys = norm(z1), norm(z2), norm(keys)[valid]
  k1, k2 = (z1, z2) if k1 is None else (k1, k2)
  total, hits = 0.0, 0
  for a, own, other in ((z1, k1, k2), (z2, k2, k1)):
    for i in range(len(a)):
      logits = [a[i] @ other[j] for j in range(len(other))] + [a[i] @ own[j] for j in range(len(own)) if j != i]
      logits = np.array(logits + [a[i] @ k for k in keys]) / tau
      total += -logits[i] + np.log(np.sum(np.exp(logits)))
      if a is z1:
        against = np.concatenate([logits[:len(other)], logits[len(other) + len(own) - 1:]])
        hits += int(np.argmax(against) == i)
  return total / len(z1), hits / len(z1)


def test_the_loss_with_a_memory_compares_the_views_with_the_keys_and_the_valid_queued_keys():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  keys = rng.normal(size=(10, 5))
  keys[7:] = 10 * z1[:3]  # slots not written yet hold what would dominate the loss if they counted
  keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
  valid = np.arange(10) < 7
  keys[2] = z1[4] / np.linalg.norm(z1[4])  # a valid key nearer to anchor 4 than its positive
  t = lambda x: tf.constant(x, tf.float32)
  loss, logits, labels = losses.nt_xent_with_memory(t(z1), t(z2), 0.5, t(keys), tf.constant(valid))
  expected_loss, expected_accuracy = direct_loss_with_memory(z1, z2, keys, valid, 0.5)
  np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-5)
  accuracy, _ = losses.contrastive_metrics(logits, labels)
  assert accuracy.numpy() == pytest.approx(expected_accuracy) and expected_accuracy < 1
  assert logits.shape == (6, 6 + 10)
  # An empty memory is plain NT-Xent.
  empty, _, _ = losses.nt_xent_with_memory(t(z1), t(z2), 0.5, t(keys), tf.zeros([10], tf.bool))
  plain, _, _ = losses.nt_xent(t(z1), t(z2), 0.5)
  np.testing.assert_allclose(empty.numpy(), plain.numpy(), rtol=1e-6)

  # With a momentum network's keys of the views (near the views, not equal), the views are compared with those
  # keys, and the keys get no gradient.
  k1, k2 = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (z1 + 0.3 * rng.normal(size=z1.shape),
                                                                     z2 + 0.3 * rng.normal(size=z2.shape)))
  a, b, ka, kb = t(z1), t(z2), t(k1), t(k2)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([a, ka, kb])
    loss, logits, labels = losses.nt_xent_against_keys(a, b, (ka, kb), 0.5, memory=t(keys),
                                                        memory_valid=tf.constant(valid))
  expected_loss, expected_accuracy = direct_loss_with_memory(z1, z2, keys, valid, 0.5, k1, k2)
  np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-5)
  assert abs(expected_loss - direct_loss_with_memory(z1, z2, keys, valid, 0.5)[0]) > 0.01  # the keys matter
  assert losses.contrastive_metrics(logits, labels)[0].numpy() == pytest.approx(expected_accuracy)
  assert tape.gradient(loss, ka) is None and tape.gradient(loss, kb) is None
  assert np.abs(tape.gradient(loss, a).numpy()).max() > 0


def test_the_queue_keeps_the_newest_keys_in_order_and_wraps_around():
  queue = memory.KeyQueue(size=10, dim=2)
  batches = [np.stack([np.arange(4 * b, 4 * b + 4)] * 2, axis=1).astype(np.float32) for b in range(3)]
  expected_filled = [4, 8, 10]
  for b, keys in enumerate(batches):
    momentum.assign_everywhere(queue.variables_in_order(), queue.enqueued(tf.constant(keys)))
    assert int(queue.filled.numpy()) == expected_filled[b]
  # Keys 0..11 went to slots 0..9 and then 0..1: slots 0 and 1 now hold the newest (10, 11), the rest 2..9.
  np.testing.assert_array_equal(queue.keys.numpy()[:, 0], [10, 11, 2, 3, 4, 5, 6, 7, 8, 9])
  assert int(queue.position.numpy()) == 2
  assert queue.valid().numpy().all()
  assert memory.KeyQueue(size=5, dim=1).valid().numpy().sum() == 0


def test_a_step_compares_with_the_momentum_keys_enqueues_them_and_moves_the_momentum_network_by_its_ema(shapes_dir):
  config = tiny_config(dataset='image_folder', data_dir=shapes_dir, memory_size=40, memory_momentum=0.75)
  task = pretrain.make_task(config, tf.distribute.get_strategy(), None, num_examples=40)
  negatives_network = task.extra_checkpoint['momentum_network']
  online_weights = momentum.encoder_and_head_weights(task.model, False)
  momentum_weights = momentum.encoder_and_head_weights(negatives_network, False)
  # Pairs are matched by position: the two networks must list the same layers in the same order (below each
  # model's own name).
  below = lambda w: w.path.split('/', 1)[1]
  assert [below(w) for w in online_weights] == [below(w) for w in momentum_weights]
  for a, b in zip(online_weights, momentum_weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # it starts as a copy
  # As if it lagged: its keys differ from the views.
  for w in momentum.encoder_and_head_weights(negatives_network, True):
    w.assign(w + tf.random.stateless_normal(w.shape, [3, 4], stddev=0.05))
  before = [w.numpy() for w in momentum.encoder_and_head_weights(negatives_network, True)]
  images = tf.random.stateless_uniform([8, 32, 32, 6], [1, 2])
  views = tf.concat(tf.split(images, 2, axis=-1), axis=0)
  # The step's keys: the momentum network's projections of both views with the weights it has before the step (in
  # training mode, so its moving statistics, which this also moves, do not enter).
  keys = tf.math.l2_normalize(negatives_network(views, training=True)['proj_head_output'], axis=-1)
  z1, z2 = tf.split(task.model(views, training=True)['proj_head_output'], 2, axis=0)
  expected_loss, _, _ = losses.nt_xent_against_keys(z1, z2, tuple(tf.split(keys, 2, axis=0)), config.temperature)
  metrics = loop.make_replica_update(task, 1)({'image': images})
  np.testing.assert_allclose(metrics['contrast_loss'].numpy(), expected_loss.numpy(), rtol=1e-5)
  simclr_loss, _, _ = losses.nt_xent(z1, z2, config.temperature)
  assert abs(simclr_loss.numpy() - expected_loss.numpy()) > 1e-3  # which keys are used is seen in the loss

  after_online = [w.numpy() for w in momentum.encoder_and_head_weights(task.model, True)]
  after = [w.numpy() for w in momentum.encoder_and_head_weights(negatives_network, True)]
  assert any(np.abs(o - b).max() > 1e-4 for o, b in zip(after_online, before))  # the step moved the network
  for ema, old, new in zip(after, before, after_online):
    np.testing.assert_allclose(ema, 0.75 * old + 0.25 * new, rtol=1e-6, atol=1e-7)

  queue = task.extra_checkpoint['memory']
  assert int(queue.filled.numpy()) == 16 and int(queue.position.numpy()) == 16  # both views of 8 images
  np.testing.assert_allclose(queue.keys.numpy()[:16], keys.numpy(), atol=2e-5)
  assert not queue.keys.numpy()[16:].any()


def test_memory_resumes_exactly_and_the_checkpoint_holds_all_of_it(tmp_path, shapes_dir, monkeypatch):
  # K = 24 with 16 keys a step: the queue wraps around on the second step.
  config = tiny_config(dataset='image_folder', data_dir=shapes_dir, train_steps=4, checkpoint_steps=2,
                       memory_size=24, memory_momentum=0.9)
  straight = tmp_path / 'straight'
  run_py.run(config.replace(model_dir=str(straight), export_at_end=True, export_momentum_network=True))
  interrupted = tmp_path / 'interrupted'
  assert run_interrupted_then_resumed(config.replace(model_dir=str(interrupted)), monkeypatch).endswith('ckpt-2')

  a, b = checkpoint_values(str(straight)), checkpoint_values(str(interrupted))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
  # Every weight of the momentum network and the queue's three variables are in the checkpoint.
  task = pretrain.make_task(config, tf.distribute.get_strategy(), None, num_classes=5, num_examples=40)
  momentum_keys = [k for k in a if k.startswith('momentum_network/')]
  assert len(momentum_keys) == len(task.extra_checkpoint['momentum_network'].weights)
  queue = {k.split('/')[1]: v for k, v in a.items() if k.startswith('memory/')}
  assert set(queue) == {'keys', 'position', 'filled'}
  assert queue['position'] == (4 * 16) % 24 and queue['filled'] == 24
  assert np.allclose(np.linalg.norm(queue['keys'], axis=1), 1, atol=1e-5)
  records = monitor.read_metrics(str(straight))
  assert [r['memory_fill'] for r in records] == pytest.approx([0, 16 / 24, 1, 1])

  # The export is the momentum network, all of it; the checkpoint's model (what fine-tuning loads) is the online one.
  # --mode=export writes the same from the checkpoint.
  exported = weights.WeightFile(os.path.join(str(straight), 'saved_model')).model_values()
  momentum = weights.WeightFile(str(straight), network='momentum_network').model_values()
  online = weights.WeightFile(str(straight)).model_values()
  assert set(exported) == set(momentum) and set(momentum) < set(online)  # online also has the linear head
  for k in momentum:
    np.testing.assert_array_equal(exported[k], momentum[k], err_msg=k)
  assert max(np.abs(online[k] - momentum[k]).max() for k in momentum) > 1e-4
  later = str(tmp_path / 'later_export')
  run_py.run(config.replace(mode='export', checkpoint=str(straight), export_dir=later, export_momentum_network=True))
  for k, value in weights.WeightFile(later).model_values().items():
    np.testing.assert_array_equal(value, momentum[k], err_msg=k)


def test_exporting_the_momentum_network_of_a_run_without_a_memory_is_one_line(tmp_path):
  before = os.path.join(ROOT, 'tests', 'resources', 'written_before_layout_change')
  proc = run_cli('--mode=export', f'--checkpoint={before}', f'--export_dir={tmp_path / "out"}',
                 '--export_momentum_network', timeout=120)  # its architecture: from its config.json
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'holds no momentum_network' in lines[0], proc.stderr
  assert not (tmp_path / 'out').exists()


def test_memory_two_replicas_equal_one_device(tmp_path, shapes_dir):
  def two_steps(name, replicas):
    # The two-replica run also takes both steps in one call (--steps_per_loop), the loop's other path.
    config = tiny_config(dataset='image_folder', data_dir=shapes_dir, model_dir=str(tmp_path / name), train_steps=2,
                         cpu_replicas=replicas, steps_per_loop=replicas, memory_size=32, memory_momentum=0.5)
    run_py.run(config.validate())
    return checkpoint_values(str(tmp_path / name))

  one, two = two_steps('one', 1), two_steps('two', 2)
  assert one.keys() == two.keys()
  state = [k for k in one if k.startswith(('model/', 'momentum_network/', 'memory/'))]
  assert any(k.startswith('memory/keys') for k in state)
  worst = max(np.max(np.abs(one[k] - two[k])) for k in state)
  assert worst < 2e-4, worst
