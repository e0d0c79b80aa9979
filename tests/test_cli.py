"""Every user mistake ends in one line on stderr and exit code 2, never a traceback."""

import pytest

from conftest import run_cli, tiny_flags

TINY = tiny_flags(train_steps=1)


@pytest.mark.parametrize('args,expected', [
    (['--resnet_depth=42'], '--resnet_depth=42 is not supported'),
    (['--train_batch_size=-8'], '--train_batch_size must be positive'),
    (['--dataset=image_folder'], '--dataset=image_folder needs --data_dir'),
    (['--mode=pretrain'], '--mode=pretrain needs --model_dir'),
    (['--no_such_flag=1'], 'no_such_flag'),
    (['--optimizer=sgd'], 'optimizer'),
    (['--train_batch_size=abc'], 'train_batch_size'),
    (['--ft_proj_selector=5'], '--ft_proj_selector=5 must be between 0 and'),
    (['--memory_size=-1'], '--memory_size must not be negative'),
    (['--memory_momentum=1'], '--memory_momentum must be in [0, 1)'),
    (['--memory_size=8'], '--memory_size=8 cannot hold the 16 keys a step enqueues'),
    (['--export_momentum_network'], '--export_momentum_network needs a memory of negatives'),
    (['--train_batchsize=8'], "Did you mean --train_batch_size? See"),
    (['--flagfile=/nonexistent/recipe.cfg'], 'error: Unable to open flagfile'),
])
def test_bad_flags_give_one_line(args, expected, tmp_path):
  model_dir = [] if '--mode=pretrain' in args else [f'--model_dir={tmp_path}']
  proc = run_cli(*TINY, *model_dir, *args, timeout=60)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and expected in lines[0], proc.stderr
  assert 'Traceback' not in proc.stdout + proc.stderr and 'ERROR' not in lines[0] and '?.' not in lines[0]


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


def test_installed_package_and_command(tmp_path):
  """`pip install -r requirements.txt` installs the project: simclr_tf imports from any directory, and the
  `simclr-tf` command is run.py (same messages, same exit codes)."""
  import os
  import shutil
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  imported = subprocess.run([sys.executable, '-c', 'import simclr_tf, run; print(simclr_tf.Config().mode)'],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
  assert imported.returncode == 0 and imported.stdout.strip() == 'pretrain', imported.stderr
  command = shutil.which('simclr-tf')
  assert command, 'no simclr-tf command on the PATH: install with `pip install -r requirements.txt`'
  for args in (['--mode=eval'], ['--train_batch_size=0'], ['--mode=nope']):
    by_command = subprocess.run([command, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    by_script = run_cli(*args, timeout=120)
    assert by_command.returncode == by_script.returncode == 2, by_command.stderr
    assert by_command.stderr.strip() == by_script.stderr.strip(), (by_command.stderr, by_script.stderr)
  # --help: the description and every flag, exit 0, the same both ways.
  by_command = subprocess.run([command, '--help'], capture_output=True, text=True, cwd=tmp_path, timeout=120)
  by_script = run_cli('--help', timeout=120)
  assert by_command.returncode == by_script.returncode == 0, by_command.stderr
  assert by_command.stdout == by_script.stdout
  assert by_script.stdout.startswith('simclr-tf: SimCLRv2')
  from simclr_tf.config import flag_fields
  listed = lambda name: f'--{name}:' in by_script.stdout or f'--[no]{name}:' in by_script.stdout
  assert [name for name, *_ in flag_fields() if not listed(name)] == [] and listed('train_mode')
