"""Pretraining end to end through run.py: tfds (mocked), image folders, two replicas, resume."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import run as run_py
from conftest import ROOT, checkpoint_values, run_interrupted_then_resumed, tensorboard_events, tiny_config
from simclr_tf import weights
from simclr_tf.runtime import monitor


def test_pretrain_cli_on_mock_cifar10(tmp_path):
  model_dir = tmp_path / 'run'
  args = ['--dataset=cifar10', '--image_size=32', '--resnet_depth=18', '--width_multiplier=0.125',
          '--train_batch_size=8', '--train_steps=4', '--log_every_steps=2', '--checkpoint_steps=2',
          '--proj_out_dim=16', '--eval_split=test', '--eval_batch_size=8', f'--model_dir={model_dir}']
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'mock_tfds_run.py'), *args],
                        capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env=dict(os.environ, MOCK_EXAMPLES='24'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'step 4/4' in proc.stdout and 'img/s' in proc.stdout and 'ETA' in proc.stdout
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-4')
  records = monitor.read_metrics(str(model_dir))
  assert [r['step'] for r in records] == [2, 4]
  assert {'loss', 'contrast_acc', 'contrast_entropy', 'sup_acc', 'learning_rate'} <= set(records[0])
  assert (model_dir / 'curves.png').stat().st_size > 1000
  assert json.loads((model_dir / 'config.json').read_text())['dataset'] == 'cifar10'
  result = json.loads((model_dir / 'eval_test.json').read_text())
  assert result['num_examples'] == 24 and 0 <= result['top1'] <= 1
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(model_dir / 'pretrain'))
  # TensorBoard: the augmented pairs at the start (4 images of two views side by side), and the evaluation at its
  # step.
  events = tensorboard_events(model_dir / 'pretrain')
  (step, pairs), = events['augmented_pairs']
  assert step == 0 and pairs.shape == (4, 32, 64, 3) and pairs.std() > 0
  evaluation = tensorboard_events(model_dir / 'eval_test')
  assert evaluation['top1'] == [(4, result['top1'])] and evaluation['num_examples'] == [(4, 24)]


def test_pretrain_on_image_folder_and_eval(tmp_path, shapes_dir):
  config = tiny_config(dataset='image_folder', data_dir=shapes_dir, model_dir=str(tmp_path), train_steps=12,
                       eval_split='test', log_every_steps=6)
  result = run_py.run(config.validate())
  assert result['num_examples'] == 40 and result['step'] == 12
  records = monitor.read_metrics(str(tmp_path))
  assert [r['step'] for r in records] == [6, 12]
  assert all(np.isfinite(r['loss']) and 0 <= r['contrast_acc'] <= 1 for r in records)
  assert json.loads((tmp_path / 'eval_test.json').read_text())['num_examples'] == 40


def test_unlabeled_folder_pretrains_without_supervised_head(tmp_path, unlabeled_dir):
  config = tiny_config(dataset='image_folder', data_dir=unlabeled_dir, model_dir=str(tmp_path), train_steps=2)
  run_py.run(config.validate())
  values = checkpoint_values(str(tmp_path))
  assert not any('supervised_head' in k for k in values)
  assert 'sup_acc' not in monitor.read_metrics(str(tmp_path))[-1]


def _two_step_weights(model_dir, shapes_dir, **overrides):
  config = tiny_config(dataset='image_folder', data_dir=shapes_dir, model_dir=str(model_dir), train_steps=2,
                       **overrides)
  run_py.run(config.validate())
  return {k: v for k, v in checkpoint_values(str(model_dir)).items() if k.startswith('model/')}


def test_two_replicas_equal_one_device_on_the_same_global_batch(tmp_path, shapes_dir):
  """Sync BN and cross-replica negatives make a 2-replica step the same as a 1-device step on the whole batch;
  with per-replica BN the result differs (so the comparison can fail)."""
  one = _two_step_weights(tmp_path / 'one', shapes_dir, cpu_replicas=1)
  two = _two_step_weights(tmp_path / 'two', shapes_dir, cpu_replicas=2)
  local_bn = _two_step_weights(tmp_path / 'local', shapes_dir, cpu_replicas=2, global_bn=False)
  assert one.keys() == two.keys()
  worst = max(np.max(np.abs(one[k] - two[k])) for k in one)
  assert worst < 2e-4, worst
  differs = max(np.max(np.abs(one[k] - local_bn[k])) for k in one)
  assert differs > 100 * max(worst, 1e-6)


def test_resume_continues_exactly(tmp_path, shapes_dir, monkeypatch):
  config = tiny_config(dataset='image_folder', data_dir=shapes_dir, train_steps=6, checkpoint_steps=2)
  straight = tmp_path / 'straight'
  run_py.run(config.replace(model_dir=str(straight)))

  interrupted = tmp_path / 'interrupted'
  stopped_at = run_interrupted_then_resumed(config.replace(model_dir=str(interrupted)), monkeypatch)
  assert stopped_at.endswith('ckpt-2')

  a, b = checkpoint_values(str(straight)), checkpoint_values(str(interrupted))
  assert a.keys() == b.keys()
  assert any('optimizer' in k for k in a)  # momentum slots and the step counter are part of the state
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
  steps = [r['step'] for r in monitor.read_metrics(str(interrupted))]
  assert steps == [1, 2, 3, 3, 4, 5, 6]  # step 3 ran again from the step-2 checkpoint; none skipped


def test_augmentation_on_the_device_trains_exactly_as_on_the_host(tmp_path, shapes_dir):
  """--augment_on=device ships uint8 crops and augments inside the step: the same views, so the same weights."""
  base = tiny_config(dataset='image_folder', data_dir=shapes_dir, train_steps=3, use_blur=True)
  run_py.run(base.replace(model_dir=str(tmp_path / 'host')))
  run_py.run(base.replace(model_dir=str(tmp_path / 'device'), augment_on='device'))
  host = weights.WeightFile(str(tmp_path / 'host')).model_values()
  device = weights.WeightFile(str(tmp_path / 'device')).model_values()
  assert host.keys() == device.keys()
  for key in host:
    np.testing.assert_array_equal(host[key], device[key], err_msg=key)


def test_curves_have_units_and_no_panel_that_cannot_move(tmp_path):
  records = [dict(step=s, mode='pretrain', loss=5.0 - s, contrast_acc=0.1 * s, knn_top5=1.0, learning_rate=0.1)
             for s in (1, 2, 3)]
  moving, constant = monitor.curve_panels(records)
  assert moving == ['contrast_acc', 'loss'] and constant == {'knn_top5': 1.0, 'learning_rate': 0.1}
  assert [monitor.unit_of(n) for n in ('loss', 'contrast_acc', 'knn_top1', 'images_per_second', 'learning_rate')] == [
      'nats', 'accuracy (fraction)', 'accuracy (fraction)', 'images / s', 'learning rate']
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  assert open(monitor.plot_curves(str(tmp_path)), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  # Grouped: losses, accuracies, the rest, speed, the learning rate; chance where the run's record tells it.
  assert monitor.panel_order(['learning_rate', 'contrast_acc', 'images_per_second', 'sup_loss', 'loss',
                              'contrast_entropy', 'knn_top1', 'contrast_loss']) == [
      'loss', 'contrast_loss', 'sup_loss', 'contrast_acc', 'knn_top1', 'contrast_entropy', 'images_per_second',
      'learning_rate']
  (tmp_path / 'config.json').write_text(json.dumps(dict(train_batch_size=8, class_names=['a', 'b', 'c', 'd'])))
  assert monitor.chance_levels(str(tmp_path), records + [dict(step=3, knn_top1=0.5)]) == {
      'contrast_acc': 1 / 15, 'knn_top1': 0.25}
