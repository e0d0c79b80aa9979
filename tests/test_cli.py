"""Every user mistake ends in one line on stderr and exit code 2, never a traceback."""

import pytest

from conftest import run_cli

TINY = ['--image_size=32', '--resnet_depth=18', '--width_multiplier=0.125', '--train_steps=1']


@pytest.mark.parametrize('args,expected', [
    (['--resnet_depth=42'], '--resnet_depth=42 is not supported'),
    (['--train_batch_size=-8'], '--train_batch_size must be positive'),
    (['--dataset=image_folder'], '--dataset=image_folder needs --data_dir'),
    (['--mode=pretrain'], '--mode=pretrain needs --model_dir'),
    (['--no_such_flag=1'], 'no_such_flag'),
    (['--optimizer=sgd'], 'optimizer'),
    (['--train_batch_size=abc'], 'train_batch_size'),
    (['--ft_proj_selector=5'], '--ft_proj_selector=5 must be between 0 and'),
])
def test_bad_flags_give_one_line(args, expected, tmp_path):
  model_dir = [] if '--mode=pretrain' in args else [f'--model_dir={tmp_path}']
  proc = run_cli(*TINY, *model_dir, *args, timeout=60)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and expected in lines[0], proc.stderr
  assert 'Traceback' not in proc.stdout + proc.stderr


@pytest.mark.parametrize('extra,expected', [
    (['--dataset=image_folder', '--train_batch_size=9', '--cpu_replicas=2'],
     '--train_batch_size=9 is not divisible by the 2 replicas'),
    (['--dataset=image_folder', '--data_dir=/nonexistent/dir'], '--data_dir=/nonexistent/dir does not exist'),
    (['--dataset=image_folder', '--train_split=validation'], "split 'validation' not found"),
    (['--dataset=no_such_tfds_dataset'], 'is not a tfds dataset'),
])
def test_runtime_user_errors_give_one_line(extra, expected, tmp_path, shapes_dir):
  data = [] if any(a.startswith('--data_dir') for a in extra) else [f'--data_dir={shapes_dir}']
  proc = run_cli(*TINY, f'--model_dir={tmp_path}', '--train_batch_size=8', *data, *extra, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and expected in lines[0], proc.stderr
