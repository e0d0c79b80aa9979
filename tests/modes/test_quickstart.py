"""The quick start (flags/quickstart.cfg) as a newcomer runs it, shortened: the generated dataset, pretraining with
the kNN monitor and the linear head, and the summary it ends with."""

import json
import os

from conftest import run_cli
from simclr_tf.runtime import monitor


def test_quickstart_recipe_reduced(tmp_path):
  data, model_dir = tmp_path / 'shapes', tmp_path / 'run'
  proc = run_cli('--flagfile=flags/quickstart.cfg', f'--data_dir={data}', f'--model_dir={model_dir}',
                 '--train_epochs=2', '--knn_every_epochs=1', '--width_multiplier=0.0625', timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert os.path.exists(data / 'train' / 'circle' / '0399.png') and os.path.exists(data / '.complete-v2')
  # No silent start, and a --data_dir that did not exist (a typo?) is said to be drawn anew.
  assert f'--data_dir={data} does not exist: drawing a new shapes dataset (2500 images of 5 classes) there' in (
      proc.stdout + proc.stderr)
  with open(model_dir / 'eval_test.json') as f:
    result = json.load(f)
  steps = 2 * 2000 // 128
  assert result['num_examples'] == 500 and result['chance'] == 0.2 and result['step'] == steps
  assert result['knn_step'] == steps and 0 <= result['knn_top1'] <= 1 and 0 <= result['top1'] <= 1
  summary = proc.stdout.strip().splitlines()[-1]
  assert all(part in summary for part in ('kNN top-1', 'linear probe top-1', 'linear head top-1', 'chance 0.2000'))
  assert 0 <= result['probe_top1'] <= 1
  # An epoch is 2000/128 = 15.625 steps for the schedule, the checkpoints and the kNN measurements alike: epoch 1
  # ends at step 15, epoch 2 at step 31, the last.
  knn_steps = [r['step'] for r in monitor.read_metrics(str(model_dir)) if 'knn_top1' in r]
  assert knn_steps == [15, steps] and steps == 31
  assert os.path.getsize(model_dir / 'curves.png') > 10000
  # Rerunning the finished command: the same closing line, the result file whole.
  again = run_cli('--flagfile=flags/quickstart.cfg', f'--data_dir={data}', f'--model_dir={model_dir}',
                  '--train_epochs=2', '--knn_every_epochs=1', '--width_multiplier=0.0625', timeout=900)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'already trained' in again.stdout + again.stderr
  assert again.stdout.strip().splitlines()[-1].split(' ', 1)[1] == summary.split(' ', 1)[1]  # after the time
  with open(model_dir / 'eval_test.json') as f:
    assert json.load(f) == result
