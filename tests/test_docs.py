"""Every run.py command in the README and docs/: extracted from the Markdown's code blocks, parsed by the real flag
parser into a Config that passes its checks; and the ones that read the quick start's output run as written
against a tiny quick start (the README's own quick-start command, one epoch of 8 images per class), in a folder of
their own, with only their training length cut to two steps."""

import glob
import json
import os
import re
import shlex

import pytest
from absl import flags

import run as run_py
from conftest import ROOT, run_cli

DOCUMENTS = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
PROGRAMS = (('python', 'run.py'), ('simclr-tf',))


def commands(path):
  """[(line number, [arguments after run.py])] of the run.py / simclr-tf commands in the file's code blocks, with
  their continuation lines joined and their comments dropped; `...` (more flags of the reader's choice) dropped."""
  found, block, pending, start = [], False, '', 0
  for number, line in enumerate(open(path, encoding='utf-8'), start=1):
    stripped = line.strip()
    if stripped.startswith('```'):
      block, pending = not block, ''
      continue
    if not block:
      continue
    if not pending:
      start = number
    pending += ' ' + stripped[:-1] if stripped.endswith('\\') else ' ' + stripped
    if stripped.endswith('\\'):
      continue
    text, pending = pending.strip(), ''
    if not text.startswith(tuple(' '.join(program) + ' ' for program in PROGRAMS)):
      continue  # other programs (pip, docker, curl, gsutil) and Python code
    words = shlex.split(text, comments=True)
    for program in PROGRAMS:
      if tuple(words[:len(program)]) == program:
        found.append((start, [w for w in words[len(program):] if w != '...']))
  return found


ALL = [(os.path.relpath(path, ROOT), line, args) for path in DOCUMENTS for line, args in commands(path)]


def test_the_documents_hold_the_commands_users_copy():
  by_file = {path for path, _, _ in ALL}
  assert 'README.md' in by_file and 'docs/recipes.md' in by_file and len(ALL) >= 20


@pytest.mark.parametrize('path,line,args', ALL, ids=[f'{p}:{n}' for p, n, _ in ALL])
def test_every_command_parses_into_a_valid_config(path, line, args, monkeypatch):
  monkeypatch.chdir(ROOT)  # flagfiles are named from the repository's root
  values = flags.FlagValues()
  run_py.declare_flags(values)
  try:
    values(['run.py', *args])
  except flags.Error as e:
    pytest.fail(f'{path}:{line}: {e}')
  run_py.config_from_flags(values).check_fields()


TRAINING = ('pretrain', 'finetune', 'distill')


@pytest.fixture(scope='module')
def quickstart_folder(tmp_path_factory):
  """A folder where the README's quick start ran, tiny: one epoch of a shapes dataset of 8 images per class (drawn
  beforehand at data/shapes, where the quick start finds it complete); runs/quickstart, and flags/."""
  from simclr_tf.data import shapes
  folder = tmp_path_factory.mktemp('newcomer')
  os.symlink(os.path.join(ROOT, 'flags'), folder / 'flags')
  shapes.generate(str(folder / 'data' / 'shapes'), per_class=8)
  readme = [args for path, _, args in ALL if path == 'README.md']
  quickstart = [args for args in readme if args == ['--flagfile=flags/quickstart.cfg']]
  assert quickstart, 'the README has no quick-start command'
  proc = run_cli(*quickstart[0], '--train_epochs=1', '--knn_every_epochs=1', cwd=folder, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return folder


ON_QUICKSTART = [(p, n, a) for p, n, a in ALL if any('runs/quickstart' in w for w in a)
                 and not any(w.startswith('--flagfile') for w in a)]


def flag_value(args, name):
  return next((w.split('=', 1)[1] for w in args if w.startswith(f'--{name}=')), None)


def test_the_commands_on_the_quick_starts_output_run_as_written(quickstart_folder):
  """...and what they report of a model is what the run that wrote it measured: an evaluation's figures are the
  training run's own at its end, and an exported classifier's loss on the same split too."""
  assert len(ON_QUICKSTART) >= 6
  done, measured, checked = set(), {}, []
  for path, line, args in ON_QUICKSTART:  # in the documents' order: a fine-tuning before what reads it
    if tuple(args) in done:
      continue
    done.add(tuple(args))
    mode = re.search(r'--mode=(\w+)', ' '.join(args))
    mode = mode and mode.group(1)
    shorter = []
    if mode in TRAINING:  # 2 steps, and an export only if a command reads the SavedModel
      model_dir = flag_value(args, 'model_dir')
      read = any(f'{model_dir}/saved_model' in w for _, _, a in ON_QUICKSTART for w in a)
      shorter = ['--train_steps=2'] + ([] if read else ['--export_at_end=false'])
    proc = run_cli(*args, *shorter, cwd=quickstart_folder, timeout=900)
    assert proc.returncode == 0, f'{path}:{line}: {" ".join(args)}\n{proc.stderr[-3000:]}'
    if mode in TRAINING and flag_value(args, 'eval_split'):
      model_dir = flag_value(args, 'model_dir')
      measured[model_dir] = json.loads((quickstart_folder / model_dir / f'eval_{flag_value(args, "eval_split")}.json')
                                       .read_text())
    checkpoint = flag_value(args, 'checkpoint')
    if mode == 'eval' and checkpoint in measured:  # written into the checkpoint's folder, replacing the run's own
      again = json.loads((quickstart_folder / checkpoint / f'eval_{measured[checkpoint]["split"]}.json').read_text())
      assert again['top1'] == measured[checkpoint]['top1'], f'{path}:{line}'
      assert abs(again['loss'] - measured[checkpoint]['loss']) <= 1e-5 * abs(measured[checkpoint]['loss'])
      checked.append(mode)
    if mode == 'export' and checkpoint in measured:
      assert abs(exported_loss(quickstart_folder / flag_value(args, 'export_dir'), quickstart_folder / 'data' /
                               'shapes', measured[checkpoint]['split']) - measured[checkpoint]['loss']) <= \
          1e-5 * measured[checkpoint]['loss'], f'{path}:{line}'
      checked.append(mode)
  assert sorted(checked) == ['eval', 'export'], checked


def exported_loss(saved_model, data_dir, split):
  """The mean cross-entropy of a SavedModel's logits_sup on a split of an image folder, by its own serving
  signature for encoded images (decoded and preprocessed inside), the labels numbered by the class names its
  config.json records."""
  import numpy as np
  import tensorflow as tf
  names = json.loads((saved_model / 'config.json').read_text())['class_names']
  paths = sorted(glob.glob(str(data_dir / split / '*' / '*.png')))
  labels = np.array([names.index(os.path.basename(os.path.dirname(p))) for p in paths])
  serve = tf.saved_model.load(str(saved_model)).signatures['serving_bytes']
  logits = serve(image_bytes=tf.constant([open(p, 'rb').read() for p in paths]))['logits_sup']
  return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
