"""The reference code's command line: its flags are accepted with its meaning (or refused in one line naming ours),
and the four commands its READMEs publish run as pasted, read from ../shared/reference/reference_flags.md and run
through bash from a folder holding our run.py. The tests append only overrides of where things are (data, model
and checkpoint folders, which the published commands name as /tmp/simclr_test or $VARS), of size and of length;
and `--use_tpu=False` after the ImageNet commands, whose TPU this machine does not have (their TPU flags are checked
on their own: they reach our TPU connection)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, needs_shared, run_cli, tiny_flags

FLAGS_MD = os.path.join(SHARED, 'reference', 'reference_flags.md')
GOLDEN = os.path.join(SHARED, 'reference', 'golden', 'r18_cifar_w0.125')
needs_flags_md = needs_shared('reference/reference_flags.md', 'The reference\'s published commands, run as pasted,')
needs_golden = needs_shared('reference/golden/r18_cifar_w0.125', 'The reference\'s commands on its own checkpoint')
SIZE = ['--width_multiplier=0.125', '--proj_out_dim=16', '--image_size=32', '--resnet_depth=18',
        '--train_batch_size=8', '--eval_batch_size=8', '--train_steps=2']


def published_commands():
  """The commands of reference_flags.md's last code block, each one line (continuations joined)."""
  text = open(FLAGS_MD).read()
  block = re.findall(r'```\n(.*?)```', text, re.S)[-1]
  return [' '.join(part.replace('\\\n', ' ').split()) for part in block.strip().split('\n\n')]


def reference_flag_names():
  return re.findall(r'^\| (\w+) \| ', open(FLAGS_MD).read(), re.M)[1:]  # the table's rows (not its header)


def run_pasted(command, overrides, env):
  """Runs a published command through bash in the project's folder (`python run.py` is ours), with `overrides`
  appended."""
  line = f'{command} {" ".join(overrides)}'.replace('python run.py', f'{sys.executable} run.py', 1)
  return subprocess.run(['bash', '-c', line], capture_output=True, text=True, cwd=ROOT,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env), timeout=900)


@needs_flags_md
def test_every_reference_flag_is_a_flag_of_ours():
  import run as run_py
  from absl import flags
  values = flags.FlagValues()
  run_py.declare_flags(values)
  names = reference_flag_names()
  assert len(names) == 48
  assert not [n for n in names if n not in values], [n for n in names if n not in values]
  # And the TF1 flags its README pastes.
  assert 'variable_schema' in values and 'train_summary_steps' in values


@needs_flags_md
def test_the_four_published_commands_run_as_pasted(tmp_path, shapes_dir):
  pretrain_cifar, pretrain_imagenet, finetune_cifar, finetune_imagenet = published_commands()
  assert '--train_mode=pretrain' in pretrain_cifar and '--mode=train_then_eval' in finetune_cifar
  data = ['--dataset=image_folder', f'--data_dir={shapes_dir}']
  # 1. CIFAR-10 pretraining (--mode=train by default: no evaluation, as in the reference).
  pretrained = tmp_path / 'simclr_test'
  proc = run_pasted(pretrain_cifar, data + SIZE + [f'--model_dir={pretrained}'], {})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '--mode=train --train_mode=pretrain -> --mode=pretrain' in proc.stdout
  recorded = json.load(open(pretrained / 'config.json'))
  assert (recorded['mode'], recorded['temperature'], recorded['use_blur'], recorded['eval_split']) == (
      'pretrain', 0.5, False, '')
  assert not (pretrained / 'eval_test.json').exists()
  # 2. CIFAR-10 linear evaluation: train_then_eval, fine-tuning from the pretraining, evaluated on the test split.
  linear = tmp_path / 'simclr_test_ft'
  proc = run_pasted(finetune_cifar, data + SIZE + [f'--checkpoint={pretrained}', f'--model_dir={linear}'], {})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '--variable_schema' in proc.stdout
  result = json.load(open(linear / 'eval_test.json'))
  assert result['mode'] == 'finetune' and result['num_examples'] == 40
  recorded = json.load(open(linear / 'config.json'))
  assert (recorded['fine_tune_after_block'], recorded['zero_init_logits_layer'], recorded['global_bn']) == (
      4, True, False)
  # 3. ImageNet pretraining and 4. fine-tuning on 1% of the labels, their $VARS in the environment.
  env = dict(DATA_DIR=shapes_dir, MODEL_DIR=str(tmp_path / 'imagenet'), TPU_NAME='my-tpu',
             CHKPT_DIR=str(pretrained))
  proc = run_pasted(pretrain_imagenet, data + SIZE + ['--use_tpu=False', '--eval_split=test'], env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(tmp_path / 'imagenet' / 'config.json'))['learning_rate_scaling'] == 'sqrt'
  env['MODEL_DIR'] = str(tmp_path / 'imagenet_1pct')
  proc = run_pasted(finetune_imagenet, data + SIZE + ['--use_tpu=False', '--eval_split=test'], env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recorded = json.load(open(tmp_path / 'imagenet_1pct' / 'config.json'))
  assert (recorded['mode'], recorded['ft_proj_selector'], recorded['optimizer']) == ('finetune', 1, 'lars')
  assert json.load(open(tmp_path / 'imagenet_1pct' / 'eval_test.json'))['num_examples'] == 40


@needs_flags_md
def test_the_imagenet_commands_tpu_flags_reach_our_tpu_connection(tmp_path, shapes_dir):
  command = published_commands()[1]
  proc = run_pasted(command, ['--dataset=image_folder', f'--data_dir={shapes_dir}', '--worker_timeout=20'],
                    dict(DATA_DIR=shapes_dir, MODEL_DIR=str(tmp_path / 'run'), TPU_NAME='no-such-tpu'))
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --tpu=no-such-tpu'), proc.stderr[-2000:]


@pytest.mark.parametrize('args,expected', [
    (['--keep_hub_module_max=0'], '--keep_hub_module_max=0: give the number of versions to keep (1 or more)'),
    (['--proj_head_mode=none', '--ft_proj_selector=1'], '--proj_head_mode=none leaves no projection layer'),
    (['--mode=pretrain', '--train_mode=finetune'], '--train_mode=finetune contradicts --mode=pretrain'),
])
def test_what_cannot_be_honoured_is_one_line_naming_ours(tmp_path, args, expected):
  proc = run_cli(*tiny_flags(train_steps=1), f'--model_dir={tmp_path}', *args, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_reference_flags_translate_to_ours():
  from simclr_tf import reference_cli
  base = dict(mode='pretrain', eval_split='', checkpoint='', model_dir='m', strategy='auto', ft_proj_selector=0)
  changes, _ = reference_cli.translate(dict(base, mode='train_then_eval', train_mode='finetune'), {'mode'})
  assert changes == {'mode': 'finetune', 'eval_split': 'validation'}
  changes, _ = reference_cli.translate(dict(base, mode='eval'), {'mode'})
  assert changes == {'checkpoint': 'm'}
  changes, _ = reference_cli.translate(dict(base, use_tpu=True, tpu_name='t1'), {'use_tpu', 'tpu_name'})
  assert changes == {'tpu': 't1', 'strategy': 'tpu'}
  changes, _ = reference_cli.translate(dict(base, master='grpc://10.0.0.2:8470'), {'master'})
  assert changes['tpu'] == 'grpc://10.0.0.2:8470'
  changes, _ = reference_cli.translate(dict(base, use_tpu=False, tpu_name='t1'), {'use_tpu', 'tpu_name'})
  assert changes == {}
  changes, _ = reference_cli.translate(dict(base, proj_head_mode='linear', train_summary_steps=0),
                                       {'proj_head_mode', 'train_summary_steps'})
  assert changes == {'num_proj_layers': 1}


def test_a_linear_or_no_projection_head_trains(tmp_path, shapes_dir):
  for mode, layers in (('none', 0), ('linear', 1)):
    proc = run_cli(*tiny_flags(train_steps=2, log_every_steps=1), '--dataset=image_folder',
                   f'--data_dir={shapes_dir}', f'--model_dir={tmp_path / mode}', f'--proj_head_mode={mode}',
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.load(open(tmp_path / mode / 'config.json'))['num_proj_layers'] == layers


@needs_golden
def test_eval_and_checkpoint_of_a_reference_style_model_dir(tmp_path, shapes_dir):
  """A reference run's model_dir: ckpt-N without a state file we wrote, and its SavedModels under
  saved_model/<step>/."""
  run = tmp_path / 'reference_run'
  shutil.copytree(os.path.join(GOLDEN, 'checkpoint_after_1_step'), run)
  shutil.copytree(os.path.join(GOLDEN, 'saved_model'), run / 'saved_model' / '1')
  architecture = ['--resnet_depth=18', '--width_multiplier=0.125', '--image_size=32']
  data = ['--dataset=image_folder', f'--data_dir={shapes_dir}', '--eval_split=test', '--eval_batch_size=8']
  proc = run_cli('--mode=eval', '--train_mode=finetune', f'--model_dir={run}', *architecture, *data, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.load(open(run / 'eval_test.json'))
  assert result['num_examples'] == 40 and result['checkpoint'].endswith('ckpt-1')
  # Only the SavedModels left: --checkpoint takes the highest step's.
  exported_only = tmp_path / 'exported_only'
  shutil.copytree(os.path.join(GOLDEN, 'saved_model'), exported_only / 'saved_model' / '7')
  shutil.copytree(os.path.join(GOLDEN, 'saved_model'), exported_only / 'saved_model' / '12')
  proc = run_cli('--mode=eval', f'--checkpoint={exported_only}', f'--model_dir={tmp_path / "results"}',
                 *architecture, *data, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.load(open(tmp_path / 'results' / 'eval_test.json'))['checkpoint'].endswith(
      os.path.join('saved_model', '12', 'variables', 'variables'))
  proc = run_cli('--mode=eval', f'--checkpoint={tmp_path / "results"}', *architecture, *data, timeout=300)
  assert proc.returncode == 2 and 'holds no checkpoint or SavedModel' in proc.stderr, proc.stderr[-2000:]
