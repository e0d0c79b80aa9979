"""BYOL (--method=byol): its loss and momentum schedule against the paper's formulas, the target network moving as
they say, exact resume (target, predictor, optimizer), and its checkpoints used as SimCLR's are (fine-tune, distil,
embed, kNN, export)."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

import run as run_py
from conftest import checkpoint_values, run_here, run_interrupted_then_resumed, tiny_config, tiny_flags
from simclr_tf import weights
from simclr_tf.methods import byol, momentum


def test_loss_and_momentum_are_the_papers():
  rng = np.random.default_rng(0)
  p, t = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  expected = np.mean(np.sum((unit(p) - unit(t)) ** 2, axis=1))
  np.testing.assert_allclose(byol.regression_loss(tf.constant(p), tf.constant(t)).numpy(), expected, rtol=1e-5)
  assert byol.regression_loss(tf.constant(p), tf.constant(3 * p)).numpy() == pytest.approx(0, abs=1e-6)
  # No gradient reaches the target.
  target = tf.Variable(t)
  with tf.GradientTape() as tape:
    loss = byol.regression_loss(tf.constant(p), target)
  assert tape.gradient(loss, target) is None
  # tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2: base at the first update, 1 at the end.
  for k, total in ((0, 10), (3, 10), (10, 10), (7, 40)):
    tau = byol.target_momentum(0.99, tf.constant(k, tf.int64), total).numpy()
    assert tau == pytest.approx(1 - 0.01 * (math.cos(math.pi * k / total) + 1) / 2, abs=1e-6)


def byol_config(shapes_dir, **overrides):
  return tiny_config(dataset='image_folder', data_dir=shapes_dir, method='byol', byol_base_momentum=0.9,
                     train_steps=4, checkpoint_steps=2, **overrides)


def test_the_target_follows_the_schedule_and_a_resumed_run_is_exact(tmp_path, shapes_dir, monkeypatch):
  config = byol_config(shapes_dir, keep_checkpoint_max=5)
  straight = str(tmp_path / 'straight')
  run_py.run(config.replace(model_dir=straight, checkpoint_steps=1))
  interrupted = str(tmp_path / 'interrupted')
  assert run_interrupted_then_resumed(config.replace(model_dir=interrupted), monkeypatch).endswith('ckpt-2')

  # Resumed at step 2, the run ends where the uninterrupted one does: online and target networks, predictor,
  # optimizer state, all of it (but the count of saves: the uninterrupted run saved at every step).
  a, b = checkpoint_values(straight), checkpoint_values(interrupted)
  assert a.keys() == b.keys()
  for k in set(a) - {'save_counter/.ATTRIBUTES/VARIABLE_VALUE'}:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
  # The checkpoint holds every weight of the target network and of the predictor (trained variables are stored
  # once, under the optimizer's name for them, as the online network's are): each is restored from it.
  task = byol.make_task(config, tf.distribute.get_strategy(), None, num_classes=5, num_examples=40)
  initial = [w.numpy() for w in task.extra_checkpoint['predictor'].weights]
  status = tf.train.Checkpoint(**task.extra_checkpoint).read(tf.train.latest_checkpoint(straight))
  status.expect_partial().assert_existing_objects_matched()
  for name, network in task.extra_checkpoint.items():
    assert len(network.weights) == (7 if name == 'predictor' else len(task.model.encoder.weights +
                                                                       task.model.projection_head.weights))
  assert all(not np.allclose(a, b) for a, b in zip(initial, task.extra_checkpoint['predictor'].weights)
             if a.std() > 0)  # trained: its random-initialised weights (the kernels) moved

  # Between two checkpoints the target moved by the schedule's tau at that update: w' = tau w'_prev + (1 - tau) w,
  # weight by weight (read through the checkpoints' object graph, as every reader of ours does).
  def networks(step):
    path = os.path.join(straight, f'ckpt-{step}')
    return [[w.numpy() for w in momentum.encoder_and_head_weights(weights.load_model(path, network=network)[0],
                                                                  trainable_only=True)]
            for network in ('model', 'momentum_network')]
  (_, target_before), (online, target) = networks(2), networks(3)
  tau = 1 - 0.1 * (math.cos(math.pi * 2 / 4) + 1) / 2  # the third update, k = 2 of K = 4
  for before, after, w in zip(target_before, target, online):
    np.testing.assert_allclose(after, tau * before + (1 - tau) * w, atol=1e-6)
  assert sum(not np.allclose(after, before) for before, after in zip(target_before, target)) > 10


@pytest.fixture(scope='module')
def byol_run(tmp_path_factory, shapes_dir):
  model_dir = str(tmp_path_factory.mktemp('byol') / 'run')
  code, result = run_here(*tiny_flags(method='byol', dataset='image_folder', data_dir=shapes_dir, model_dir=model_dir,
                                      train_steps=3, eval_split='test', export_at_end=True))
  assert code == 0, result
  return model_dir


def test_a_byol_run_is_used_as_a_simclr_run_is(byol_run, shapes_dir, tmp_path, simclr_log):
  data = ['--dataset=image_folder', f'--data_dir={shapes_dir}']
  # Its SavedModel is the online network of its checkpoint.
  model, _ = weights.load_model(tiny_config(), byol_run, tf.distribute.get_strategy())
  images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 2])
  loaded = tf.saved_model.load(os.path.join(byol_run, 'saved_model'))
  np.testing.assert_allclose(loaded(images, trainable=False)['final_avg_pool'],
                             model(images, training=False)['final_avg_pool'], atol=1e-5)
  # --export_momentum_network exports the target instead, as for the memory of negatives.
  code, result = run_here('--mode=export', f'--checkpoint={byol_run}', '--export_momentum_network',
                          f'--export_dir={tmp_path / "target"}')
  assert code == 0, result
  target, _ = weights.load_model(tiny_config(), byol_run, tf.distribute.get_strategy(), network='momentum_network')
  exported = tf.saved_model.load(str(tmp_path / 'target'))(images, trainable=False)['final_avg_pool']
  np.testing.assert_allclose(exported, target(images, training=False)['final_avg_pool'], atol=1e-5)
  assert not np.allclose(exported, model(images, training=False)['final_avg_pool'], atol=1e-5)
  # Fine-tuning, distillation from that, embeddings and kNN read it as any pretraining run.
  finetuned = str(tmp_path / 'ft')
  code, result = run_here('--mode=finetune', f'--checkpoint={byol_run}', '--ft_proj_selector=1', *data,
                          *tiny_flags(model_dir=finetuned, train_steps=2, eval_split='test'))
  assert code == 0 and result['initialised_from'] == byol_run, result
  assert any(m.startswith('initialised ') and m.endswith(f'from {byol_run} (simclr-tf checkpoint)') for m in simclr_log)
  code, result = run_here('--mode=distill', f'--teacher={finetuned}', f'--checkpoint={byol_run}', *data,
                          *tiny_flags(model_dir=str(tmp_path / 'student'), train_steps=2, eval_split='test'))
  assert code == 0 and 0 <= result['teacher_agreement'] <= 1, result
  code, result = run_here('--mode=embed', f'--checkpoint={byol_run}', *data, f'--model_dir={tmp_path / "embed"}',
                          '--embed_split=test')
  assert code == 0 and os.path.exists(tmp_path / 'embed' / 'embeddings.npz'), result
  code, result = run_here('--mode=knn', f'--checkpoint={byol_run}', *data, f'--model_dir={tmp_path / "knn"}',
                          '--knn_k=5')
  assert code == 0 and 0 <= result['top1'] <= 1, result


@pytest.mark.parametrize('flags, message', [
    (['--method=byol', '--memory_size=64'], '--memory_size=64: BYOL has no negatives'),
    (['--method=byol', '--num_proj_layers=0', '--ft_proj_selector=0'], '--method=byol needs a projection head'),
])
def test_a_setting_byol_cannot_run_is_one_line(flags, message, shapes_dir, tmp_path):
  code, error = run_here(*tiny_flags(dataset='image_folder', data_dir=shapes_dir, model_dir=str(tmp_path / 'run')),
                         *flags)
  assert code == 2 and message in error, error
  assert not os.path.exists(tmp_path / 'run')
