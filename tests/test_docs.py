"""Every run.py command in the README and docs/: extracted from the Markdown's code blocks, parsed by the real flag
parser into a Config that passes its checks; and the ones that read the quick start's output run as written
against a tiny quick start (the README's own quick-start command, one epoch of 8 images per class), in a folder of
their own, with only their training length cut to two steps."""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags

import run as run_py
from conftest import ROOT

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
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *quickstart[0], '--train_epochs=1',
                         '--knn_every_epochs=1'], capture_output=True, text=True, cwd=folder, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return folder


ON_QUICKSTART = [(p, n, a) for p, n, a in ALL if any('runs/quickstart' in w for w in a)
                 and not any(w.startswith('--flagfile') for w in a)]


def test_the_commands_on_the_quick_starts_output_run_as_written(quickstart_folder):
  assert len(ON_QUICKSTART) >= 6
  done = set()
  for path, line, args in ON_QUICKSTART:  # in the documents' order: a fine-tuning before what reads it
    if tuple(args) in done:
      continue
    done.add(tuple(args))
    mode = re.search(r'--mode=(\w+)', ' '.join(args))
    shorter = []
    if mode and mode.group(1) in TRAINING:  # 2 steps, and an export only if a command reads the SavedModel
      model_dir = next(w.split('=', 1)[1] for w in args if w.startswith('--model_dir='))
      read = any(f'{model_dir}/saved_model' in w for _, _, a in ON_QUICKSTART for w in a)
      shorter = ['--train_steps=2'] + ([] if read else ['--export_at_end=false'])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args, *shorter], capture_output=True,
                          text=True, cwd=quickstart_folder, timeout=900)
    assert proc.returncode == 0, f'{path}:{line}: {" ".join(args)}\n{proc.stderr[-3000:]}'
