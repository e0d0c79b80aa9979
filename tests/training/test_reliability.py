"""Nothing lost on a crash, nothing cryptic on bad input."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, run_cli, start_run_py, tiny_flags
from simclr_tf import record

TINY = tiny_flags(dataset='image_folder', log_every_steps=1)


def run_args(model_dir, data_dir, *extra):
  """The run.py flags of a tiny run in model_dir."""
  return [*TINY, f'--data_dir={data_dir}', f'--model_dir={model_dir}', *extra]


def assert_checkpoints_intact(model_dir, final_step):
  state = tf.train.get_checkpoint_state(str(model_dir))
  assert state.model_checkpoint_path.endswith(f'ckpt-{final_step}')
  for path in state.all_model_checkpoint_paths:
    reader = tf.train.load_checkpoint(path)  # every listed checkpoint is complete and readable
    assert reader.get_variable_to_shape_map()
  reader = tf.train.load_checkpoint(state.model_checkpoint_path)
  iterations = [k for k in reader.get_variable_to_shape_map() if k.startswith('optimizer/') and 'iteration' in k]
  assert int(reader.get_tensor(iterations[0])) == final_step


# One seeded step: the fault injection of test_nothing_destroyed.py kills at seeded moments of the saves themselves.
@pytest.mark.parametrize('seed', [0])
def test_kill_9_at_a_random_step_then_resume(tmp_path, shapes_dir, seed):
  kill_after = random.Random(seed).randint(2, 9)
  args = run_args(tmp_path, shapes_dir, '--train_steps=12', '--checkpoint_steps=3')
  proc = start_run_py(*args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  for line in proc.stdout:
    if f'step {kill_after}/12' in line:
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=120)
  assert proc.returncode == -signal.SIGKILL
  done = run_cli(*args)
  assert done.returncode == 0, done.stderr[-2000:]
  resumed_from = (kill_after // 3) * 3
  if resumed_from:
    assert f'at step {resumed_from}' in done.stdout
  assert_checkpoints_intact(tmp_path, 12)
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')]
  assert sorted(set(steps)) == list(range(1, 13))  # no step skipped; a re-run step only repeats its own number


def test_kill_while_writing_a_checkpoint(tmp_path, shapes_dir):
  args = run_args(tmp_path, shapes_dir, '--train_steps=6', '--checkpoint_steps=2')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CRASH_AT_SAVE='2')
  crashed = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'crash_during_save.py'), *args],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert crashed.returncode == -signal.SIGKILL
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-2')  # ckpt-4 was written but never completed
  done = run_cli(*args)  # (CRASH_AT_SAVE is read by crash_during_save.py only)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'at step 2' in done.stdout
  assert_checkpoints_intact(tmp_path, 6)


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, shapes_dir):
  # Warmup starts the learning rate at 0, so step 1 is fine and saved; then 1e30 overflows the weights.
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', '--train_steps=8',
                 '--checkpoint_steps=1', '--optimizer=momentum', '--learning_rate=1e30', '--warmup_epochs=1',
                 '--log_every_steps=1', timeout=300)
  assert proc.returncode == 2, proc.stderr
  line = proc.stderr.strip()
  assert len(line.splitlines()) == 1 and 'NaN or infinite at step' in line, proc.stderr
  latest = tf.train.latest_checkpoint(str(tmp_path))
  reader = tf.train.load_checkpoint(latest)
  assert all(np.all(np.isfinite(reader.get_tensor(k))) for k in reader.get_variable_to_shape_map()
             if k not in ('_CHECKPOINTABLE_OBJECT_GRAPH', record.CHECKPOINT_KEY))
  assert latest in line


@pytest.fixture
def folder_with_corrupt_images(tmp_path, shapes_dir):
  import shutil
  root = tmp_path / 'data'
  shutil.copytree(shapes_dir, root)
  (root / 'train' / 'circle' / 'broken.png').write_bytes(b'not an image at all')
  (root / 'train' / 'square' / 'truncated.jpg').write_bytes(b'\xff\xd8\xff\xe0' + b'\x00' * 10)
  return root


def test_corrupt_images_are_skipped_and_counted(tmp_path, folder_with_corrupt_images):
  proc = run_cli(*TINY, f'--data_dir={folder_with_corrupt_images}', f'--model_dir={tmp_path / "run"}',
                 '--train_steps=12', '--log_every_steps=6', timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'unreadable image(s)' in proc.stdout
  records = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  # 12 steps x 8 = 96 reads of a 42-image epoch: each bad file comes up at least twice.
  assert records[-1]['skipped_images'] >= 4


def test_strict_data_fails_clearly_on_a_corrupt_image(tmp_path, folder_with_corrupt_images):
  proc = run_cli(*TINY, f'--data_dir={folder_with_corrupt_images}', f'--model_dir={tmp_path / "run"}',
                 '--train_steps=12', '--strict_data', timeout=300)
  assert proc.returncode == 2
  line = proc.stderr.strip()
  assert len(line.splitlines()) == 1 and 'cannot be read' in line and '--strict_data' in line, proc.stderr


def test_resume_refuses_another_architecture_and_allows_harmless_changes(tmp_path, shapes_dir):
  assert run_cli(*run_args(tmp_path, shapes_dir, '--train_steps=2')).returncode == 0
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', '--train_steps=3',
                 '--resnet_depth=34', '--temperature=0.2', timeout=120)
  assert proc.returncode == 2
  line = proc.stderr.strip()
  assert '--resnet_depth=34 (was 18)' in line and '--temperature=0.2 (was 0.1)' in line, line
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', '--train_steps=3',
                 '--eval_split=test', '--log_every_steps=5', timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.load(open(tmp_path / 'config.json'))['eval_split'] == 'test'


@pytest.mark.parametrize('extra,expected', [
    (['--label_fraction=1.5'], '--label_fraction must be in (0, 1]'),
    (['--label_fraction=0'], '--label_fraction must be in (0, 1]'),
    (['--image_size=4'], '--image_size=4 is too small'),
    (['--mode=eval'], '--mode=eval needs --checkpoint'),
    (['--mode=finetune', '--checkpoint=/no/such/dir'], '--checkpoint=/no/such/dir does not exist'),
])
def test_more_user_errors(tmp_path, shapes_dir, extra, expected):
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', '--train_steps=1', *extra,
                 timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_empty_data_dir(tmp_path):
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  proc = run_cli(*TINY, f'--data_dir={tmp_path / "empty"}', f'--model_dir={tmp_path / "run"}', timeout=120)
  assert proc.returncode == 2 and 'holds no images' in proc.stderr.strip(), proc.stderr
