"""Nothing a user points us at is destroyed: export targets we did not write, a run whose checkpoint state file is
lost, places that cannot be written, a full disk, checkpoints of a bigger network, signals during an export; and a
fault-injection test that kills a run at seeded moments of its checkpoint saves and its export and checks the
invariants after each rerun. Every case runs run.py as a user runs it."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import (ROOT, SUBPROCESS_ENV, checkpoint_values, run_cli, start_run_py, tiny_config,
                      tiny_flags)
from simclr_tf import weights

TINY = tiny_flags(dataset='image_folder', log_every_steps=1)


def one_error_line(proc, *expected):
  """The run failed with exactly one line on stderr, an `error:` line holding every expected text."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: ') and 'Traceback' not in proc.stderr, proc.stderr
  for text in expected:
    assert text in lines[0], lines[0]
  return lines[0]


def snapshot(folder):
  """{relative path: sha256 of the content (None for a folder)} of everything under `folder`."""
  found = {}
  for dirpath, dirnames, names in os.walk(folder):
    for d in dirnames:
      found[os.path.relpath(os.path.join(dirpath, d), folder)] = None
    for n in names:
      path = os.path.join(dirpath, n)
      found[os.path.relpath(path, folder)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return found


@pytest.fixture(scope='module')
def trained(tmp_path_factory, shapes_dir):
  """A finished tiny pretraining run (2 steps, checkpoints at 1 and 2) with its SavedModel in run/saved_model."""
  model_dir = tmp_path_factory.mktemp('trained') / 'run'
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={model_dir}', '--train_steps=2',
                 '--checkpoint_steps=1', '--export_at_end=true')
  assert proc.returncode == 0, proc.stderr[-2000:]
  return model_dir


def export_cli(checkpoint, export_dir, *extra, env=None):
  return run_cli('--mode=export', f'--checkpoint={checkpoint}', f'--export_dir={export_dir}', *tiny_flags(), *extra,
                 env=env)


# ---- export never removes what it did not write -----------------------------------------------------------------

def test_export_refuses_every_target_it_did_not_write_and_touches_nothing(tmp_path, trained):
  notes = tmp_path / 'notes'
  notes.mkdir()
  (notes / 'notes.txt').write_text('mine')
  (notes / 'data.csv').write_text('1,2,3')
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a folder')
  ours_plus = tmp_path / 'ours_plus'
  shutil.copytree(trained / 'saved_model', ours_plus)
  (ours_plus / 'README.txt').write_text('my notes about this model')
  run_copy = tmp_path / 'run_copy'
  shutil.copytree(trained, run_copy)
  cases = [
      (a_file, 'is a file'),
      (notes, 'not a SavedModel written by simclr-tf'),
      (ours_plus, 'also holds README.txt'),
      (run_copy, 'would replace --checkpoint'),  # the folder of --checkpoint itself
      (tmp_path, 'which lies inside it'),  # a folder that holds the checkpoint's
  ]
  before = snapshot(tmp_path)
  for target, expected in cases:
    one_error_line(export_cli(run_copy, target), f'--export_dir={target}', expected)
  # A folder that holds checkpoints, named by neither --checkpoint nor --model_dir.
  one_error_line(export_cli(trained, run_copy), 'holds training checkpoints')
  assert snapshot(tmp_path) == before


def test_training_with_export_dir_equal_to_model_dir_is_refused_before_any_work(tmp_path, shapes_dir):
  run = tmp_path / 'run'
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={run}', f'--export_dir={run}',
                 '--train_steps=1', '--export_at_end=true')
  one_error_line(proc, f'--export_dir={run} would replace --model_dir={run}')
  assert not run.exists()


def test_replacing_our_saved_model_keeps_a_complete_one_at_the_path_at_every_instant(tmp_path, trained):
  target = tmp_path / 'served'
  shutil.copytree(trained / 'saved_model', target)
  old_inode = os.stat(target).st_ino
  seen_missing = []
  stop = threading.Event()

  def reader():  # what a server polling the path sees
    while not stop.is_set():
      if not (os.path.exists(target / 'saved_model.pb') and os.path.exists(target / 'variables' /
                                                                            'variables.index')):
        seen_missing.append(time.time())

  thread = threading.Thread(target=reader)
  thread.start()
  try:
    for _ in range(2):
      proc = export_cli(trained, target)
      assert proc.returncode == 0, proc.stderr[-2000:]
  finally:
    stop.set()
    thread.join()
  assert not seen_missing
  assert os.stat(target).st_ino != old_inode  # replaced, not written over
  assert sorted(os.listdir(tmp_path)) == ['served']  # nothing left beside it
  assert tf.saved_model.load(str(target)).signatures['serving_default'] is not None


# ---- links, two exports at once, torn and half-written files ----------------------------------------------------

def test_an_export_dir_that_is_a_symbolic_link_is_one_line_and_what_it_points_at_is_untouched(tmp_path, trained):
  from conftest import run_here
  v1 = tmp_path / 'v1'
  shutil.copytree(trained / 'saved_model', v1)
  before = snapshot(v1)
  latest, dangling = tmp_path / 'latest', tmp_path / 'dangling'
  latest.symlink_to(v1)
  dangling.symlink_to(tmp_path / 'gone')
  for link, words in ((latest, f'(to {v1})'), (dangling, f'(to {tmp_path / "gone"}, which does not exist)')):
    code, message = run_here('--mode=export', f'--checkpoint={trained}', f'--export_dir={link}', *tiny_flags())
    assert code == 2 and f'--export_dir={link} is a symbolic link {words}' in message, message
    assert os.path.islink(link) and not os.path.exists(str(link) + '.simclr-tf-partial')
  assert snapshot(v1) == before and not (tmp_path / 'gone').exists()
  # A link an earlier version left as the partial folder is removed, never what it points at.
  (tmp_path / 'e.simclr-tf-partial').symlink_to(v1)
  code, _ = run_here('--mode=export', f'--checkpoint={trained}', f'--export_dir={tmp_path / "e"}', *tiny_flags())
  assert code == 0 and not os.path.lexists(tmp_path / 'e.simclr-tf-partial') and snapshot(v1) == before
  assert {'config.json', 'saved_model.pb'} <= set(os.listdir(tmp_path / 'e'))


def test_one_export_per_target_at_a_time(tmp_path, trained, simclr_log):
  from conftest import run_here
  from simclr_tf import export
  target = tmp_path / 'e'
  export_args = ('--mode=export', f'--checkpoint={trained}', f'--export_dir={target}', *tiny_flags())
  # Another export holds the target (a live process named in its lock): refused in one line, nothing touched.
  holder = subprocess.Popen(['sleep', '60'])
  try:
    lock = export.export_lock(str(target))
    lock.heartbeat(force=True)
    files = export.files.read_json(lock.path)
    export.files.write_json(lock.path, dict(files, pid=holder.pid))
    code, message = run_here(*export_args)
    assert code == 2 and f'--export_dir={target} is in use by another export (host' in message, message
    assert f'pid {holder.pid}' in message and not target.exists()
  finally:
    holder.kill()
    holder.wait()
  # Its process gone, the lock is taken over with a warning; the export ends with its record and no lock.
  code, _ = run_here(*export_args)
  assert code == 0 and any('from an export that is no longer running' in m for m in simclr_log)
  assert not os.path.exists(export.lock_path(str(target))) and export.is_our_saved_model(str(target))
  # Two exports started at once: each either finished (its SavedModel whole, with its record) or was refused in
  # one line; never both "exported" over each other.
  procs = [start_run_py(*export_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
  stderrs = [p.communicate(timeout=300)[1] for p in procs]
  outcomes = [(p.returncode, stderr) for p, stderr in zip(procs, stderrs)]
  for code, stderr in outcomes:
    assert code == 0 or (code == 2 and 'is in use by another export' in stderr and
                         len(stderr.strip().splitlines()) == 1), stderr[-2000:]
  assert any(code == 0 for code, _ in outcomes)
  assert export.is_our_saved_model(str(target)) and set(os.listdir(tmp_path)) == {'e'}


def test_a_torn_metrics_line_and_a_killed_runs_leftovers_are_repaired_on_resume(tmp_path, shapes_dir, trained,
                                                                                 simclr_log):
  from conftest import run_here
  run = tmp_path / 'run'
  shutil.copytree(trained, run)
  with open(run / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 3, "mode": "train", "lo')  # a kill in the middle of a line (an earlier version appended)
  gone = subprocess.Popen(['true'])
  gone.wait()
  (run / f'config.json.tmp-{gone.pid}-0123abcd').write_text('{"resnet_de')  # a kill before the rename
  (run / 'ckpt-3_temp').mkdir()  # a kill while TF wrote a checkpoint's shards
  (run / 'ckpt-3_temp' / 'part-00000-of-00001.data-00000-of-00001').write_bytes(b'\0' * 10)
  code, result = run_here(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=3',
                          '--checkpoint_steps=1', '--export_at_end=false')
  assert code == 0, result
  assert any(f'{run / "metrics.jsonl"}: line 3 does not parse (cut short?); rewrote the file without it' in m
             for m in simclr_log), simclr_log
  assert any(m.startswith(f'removed what an interrupted run left unfinished in {run}: ckpt-3_temp, config.json.tmp-')
             for m in simclr_log), simclr_log
  records = [json.loads(line) for line in open(run / 'metrics.jsonl')]
  assert [r['step'] for r in records if 'contrast_loss' in r] == [1, 2, 3]
  assert not [n for n in os.listdir(run) if '.tmp-' in n or '_temp' in n]


# ---- the versioned layout: what TF Serving polls -----------------------------------------------------------------

def test_versions_are_written_beside_each_other_never_changed_and_the_oldest_removed(tmp_path, trained, simclr_log):
  from conftest import run_here
  from simclr_tf import export
  base = tmp_path / 'served'
  versioned = lambda checkpoint, *extra: run_here('--mode=export', f'--checkpoint={checkpoint}', f'--export_dir={base}',
                                                   '--keep_export_versions=2', *tiny_flags(), *extra)
  code, result = versioned(trained)  # the checkpoint's step is the version
  assert code == 0 and result['export_dir'] == str(base / '2'), result
  first = snapshot(base / '2')
  code, result = versioned(trained)
  assert code == 0 and snapshot(base / '2') == first
  assert any(m.startswith(f'{base / "2"} exists: a version is never changed') for m in simclr_log)
  for _ in range(2):  # a SavedModel has no step: the next number
    code, result = versioned(trained / 'saved_model')
    assert code == 0
  assert sorted(os.listdir(base)) == ['3', '4'] and export.is_our_saved_model(str(base / '4'))
  assert not [n for n in os.listdir(tmp_path) if 'simclr-tf' in n]
  # Readers take the highest version (weights.saved_model_in); the reference's flag is the same layout.
  code, result = run_here('--mode=export', f'--checkpoint={base}', f'--export_dir={tmp_path / "single"}',
                          *tiny_flags())
  assert code == 0 and export.is_our_saved_model(str(tmp_path / 'single'))
  code, message = run_here('--mode=export', f'--checkpoint={trained}', f'--export_dir={base}', *tiny_flags(),
                           '--keep_hub_module_max=1')  # step 2 would be removed at once
  assert code == 2 and 'holds versions up to 4; version 2 would be removed at once' in message, message
  code, result = run_here('--mode=export', f'--checkpoint={trained / "saved_model"}', f'--export_dir={base}',
                          *tiny_flags(), '--keep_hub_module_max=1')
  assert code == 0 and sorted(os.listdir(base)) == ['5'], os.listdir(base)
  # A base that holds a SavedModel of the single layout, or anything else, is one line, nothing touched.
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('a file of the user')
  for other, words in ((tmp_path / 'single', 'holds one SavedModel (the single layout'),
                       (tmp_path / 'other', 'holds notes.txt, which is not a version')):
    before = snapshot(other)
    code, message = run_here('--mode=export', f'--checkpoint={trained}', f'--export_dir={other}',
                             '--keep_export_versions=2', *tiny_flags())
    assert code == 2 and words in message, message
    assert snapshot(other) == before


POLLER = """
import json, os, sys, time
import tensorflow as tf
base, stop = sys.argv[1], sys.argv[2]
loads, failures, seen = 0, [], set()
open(stop + '.ready', 'w').close()
while not os.path.exists(stop):
  versions = [int(n) for n in os.listdir(base) if n.isdigit()] if os.path.isdir(base) else []
  if not versions:
    time.sleep(0.05)
    continue
  version = max(versions)  # what TF Serving's file-system poller serves
  try:
    outputs = tf.saved_model.load(os.path.join(base, str(version))).signatures['serving_default'](
        images=tf.zeros([1, 32, 32, 3]))
    assert outputs['final_avg_pool'].shape[0] == 1
    loads += 1
    seen.add(version)
  except Exception as e:
    failures.append(f'{version}: {type(e).__name__}: {str(e)[:200]}')
print(json.dumps(dict(loads=loads, failures=failures, seen=sorted(seen))))
"""


def test_a_server_polling_the_versions_always_loads_a_whole_saved_model(tmp_path, trained):
  """A reader loading the newest version in a loop, in another process, while 10 exports land: no failed load."""
  from conftest import run_here
  base, stop = tmp_path / 'served', tmp_path / 'stop'
  poller = subprocess.Popen([sys.executable, '-c', POLLER, str(base), str(stop)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV)
  try:
    while not os.path.exists(str(stop) + '.ready'):
      assert poller.poll() is None, poller.stderr.read()[-2000:]
      time.sleep(0.1)
    for _ in range(10):
      code, result = run_here('--mode=export', f'--checkpoint={trained / "saved_model"}', f'--export_dir={base}',
                              '--keep_export_versions=3', *tiny_flags())
      assert code == 0, result
  finally:
    stop.touch()
    out, err = poller.communicate(timeout=120)
  counts = json.loads(out.strip().splitlines()[-1])
  assert counts['failures'] == [], counts
  assert counts['loads'] >= 10 and len(counts['seen']) >= 3, counts
  assert sorted(os.listdir(base)) == ['10', '8', '9']


# ---- a lost checkpoint state file --------------------------------------------------------------------------------

@pytest.mark.parametrize('damage', ['lost', 'garbled'])
def test_a_lost_or_garbled_state_file_resumes_from_the_highest_checkpoint(tmp_path, shapes_dir, trained, damage):
  run = tmp_path / 'run'
  shutil.copytree(trained, run, ignore=shutil.ignore_patterns('saved_model'))  # checkpoints 1 and 2
  if damage == 'lost':
    os.remove(run / 'checkpoint')
  else:
    (run / 'checkpoint').write_bytes(b'model_checkpoint_path: \x00\xff{{{ garbled')
  again = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=4',
                  '--checkpoint_steps=1')
  assert again.returncode == 0, again.stderr[-2000:]
  warnings = [line for line in again.stdout.splitlines() if 'highest-numbered checkpoint' in line]
  assert len(warnings) == 1 and 'ckpt-2' in warnings[0], again.stdout
  assert 'resuming from' in again.stdout and 'at step 2' in again.stdout
  assert tf.train.get_checkpoint_state(str(run)).model_checkpoint_path.endswith('ckpt-4')  # rewritten, and kept
  steps = [json.loads(line)['step'] for line in open(run / 'metrics.jsonl')]
  assert steps == [1, 2, 3, 4]  # nothing trained twice


def test_checkpoint_at_a_folder_without_its_state_file_takes_the_highest_checkpoint(tmp_path, shapes_dir, trained):
  run = tmp_path / 'run'
  shutil.copytree(trained, run, ignore=shutil.ignore_patterns('saved_model'))
  os.remove(run / 'checkpoint')
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path / "ft"}', f'--checkpoint={run}',
                 '--mode=finetune', '--train_steps=1')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'using the highest-numbered checkpoint beside it, ckpt-2' in proc.stdout
  assert f'from {run}' in proc.stdout


# ---- places that cannot be used ----------------------------------------------------------------------------------

def can_mount():
  probe = f'/tmp/simclr-tf-mount-probe-{os.getpid()}'
  os.makedirs(probe, exist_ok=True)
  ok = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], capture_output=True).returncode == 0
  if ok:
    subprocess.run(['umount', probe])
  os.rmdir(probe)
  return ok


needs_mount = pytest.mark.skipif(sys.platform != 'linux' or os.geteuid() != 0 or not can_mount(),
                                 reason='needs root and mount(8) to make a small or read-only file system')


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MiB tmpfs (room for two tiny checkpoints), unmounted afterwards. (The test runs as root: a read-only
  or full file system is the only place root cannot write.)"""
  mount_point = tmp_path / 'disk'
  mount_point.mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mount_point)], check=True)
  yield mount_point
  subprocess.run(['umount', str(mount_point)])


@pytest.mark.parametrize('verbose', [False, True])
def test_a_model_dir_that_cannot_be_used_is_one_line_before_any_work(tmp_path, shapes_dir, verbose):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  env = {'SIMCLR_TF_VERBOSE': '1'} if verbose else None
  for model_dir, why in [(a_file, 'is a file'), (a_file / 'run', 'not a directory'),
                         ('/proc/simclr-tf-run', 'cannot be written')]:
    proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={model_dir}', '--train_steps=1', env=env)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and f'--model_dir={model_dir}' in errors[0] and why in errors[0], proc.stderr[-3000:]
    if not verbose:
      one_error_line(proc)


@needs_mount
def test_read_only_places_are_one_line_before_any_work(tmp_path, shapes_dir, trained, small_disk):
  shutil.copytree(trained, small_disk / 'run', ignore=shutil.ignore_patterns('saved_model'))
  subprocess.run(['mount', '-o', 'remount,ro', str(small_disk)], check=True)
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={small_disk / "new"}', '--train_steps=1')
  one_error_line(proc, f'--model_dir={small_disk / "new"}', 'read-only file system')
  proc = export_cli(trained, small_disk / 'export')
  one_error_line(proc, f'--export_dir={small_disk / "export"}', 'read-only file system')
  # An evaluation whose result cannot be written says so before it evaluates.
  proc = run_cli('--mode=eval', f'--checkpoint={small_disk / "run"}', *TINY, f'--data_dir={shapes_dir}')
  one_error_line(proc, 'read-only file system', 'results go to the folder of --checkpoint')
  assert 'eval on' not in proc.stdout


@needs_mount
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path, shapes_dir, small_disk):
  run = small_disk / 'run'
  args = (*TINY, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=5', '--checkpoint_steps=1')
  proc = run_cli(*args)
  line = one_error_line(proc, 'cannot write checkpoint ckpt-3', 'no space left on device',
                        f'The last complete checkpoint is {run}/ckpt-2')
  assert 'partial files were removed' in line
  assert not [n for n in os.listdir(run) if n.startswith('ckpt-3')]
  subprocess.run(['mount', '-o', 'remount,size=64m', str(small_disk)], check=True)
  again = run_cli(*args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'at step 2' in again.stdout
  assert tf.train.get_checkpoint_state(str(run)).model_checkpoint_path.endswith('ckpt-5')


# ---- a checkpoint of a bigger network ----------------------------------------------------------------------------

def test_a_deeper_checkpoint_is_refused_unless_a_partial_start_is_asked_for(tmp_path, shapes_dir):
  r34 = tmp_path / 'r34'
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={r34}', '--resnet_depth=34', '--train_steps=1')
  assert proc.returncode == 0, proc.stderr[-2000:]
  finetune = (*TINY, f'--data_dir={shapes_dir}', '--mode=finetune', f'--checkpoint={r34}', '--train_steps=1')
  proc = run_cli(*finetune, f'--model_dir={tmp_path / "ft"}')  # TINY says --resnet_depth=18; the run's config.json 34
  one_error_line(proc, '--resnet_depth=18 contradicts', 'resnet_depth=34', '--partial_checkpoint')
  # Through the Python API (a Config, its non-default fields as the flags given): the same one line.
  with pytest.raises(weights.UserError, match='--resnet_depth=18 contradicts .*resnet_depth=34'):
    weights.load_model(tiny_config(), str(r34))
  proc = run_cli(*finetune, f'--model_dir={tmp_path / "ft_partial"}', '--partial_checkpoint')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'left out 80 variables' in proc.stdout and 'resnet/block_group1/block2/' in proc.stdout


# ---- signals during an export ------------------------------------------------------------------------------------

@pytest.mark.parametrize('sig,code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_export_leaves_the_old_saved_model_and_no_lock(tmp_path, shapes_dir, trained, sig,
                                                                          code):
  run = tmp_path / 'run'
  shutil.copytree(trained, run)
  before = snapshot(run / 'saved_model')
  # Rerunning the finished training exports again; the signal comes while the new SavedModel is being written.
  proc = start_run_py(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=2',
                      '--checkpoint_steps=1', '--export_at_end=true', stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  partial = run / 'saved_model.simclr-tf-partial'
  while not (partial / 'config.json').exists():
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(0.002)
  proc.send_signal(sig)
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == code, stderr[-2000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and f'stopped by {signal.Signals(sig).name} while writing the SavedModel' in lines[0], stderr
  assert 'the previous one is still there' in lines[0]
  assert not partial.exists() and not (run / 'run.lock').exists()
  assert snapshot(run / 'saved_model') == before


def a_tiny_export(tmp_path):
  """A tiny pretraining model exported to tmp_path/saved_model: (model, config, its path, snapshot of the folder)."""
  from simclr_tf import export
  from simclr_tf.models.simclr import build_model
  config = tiny_config()
  model = build_model(config, pretraining=True)
  target = str(tmp_path / 'saved_model')
  export.export_saved_model(model, target, config.to_json())
  return model, config, target, snapshot(target)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize('tf_code', ['turns it into a TypeError', 'drops it'])
def test_a_signal_that_lands_in_tfs_bare_except_still_stops_the_export(tmp_path, monkeypatch, sig, tf_code):
  """The handler's Interrupted is raised in whatever code runs when the signal comes. tf.function's tracing has
  bare `except:` clauses (trace_type_builder.from_value) that turn it into a TypeError, or drop it: the export still
  ends as stopped by that signal, cleaned up (the first case came up in the CLI test above, one run in many)."""
  from simclr_tf import export
  from simclr_tf.errors import Interrupted
  model, config, target, before = a_tiny_export(tmp_path)
  trace = export.ExportModule.trace

  def trace_with_a_bare_except(module):  # as TF's code does
    try:
      os.kill(os.getpid(), sig)
      time.sleep(30)  # cut short by the handler's raise
    except:  # noqa: E722
      if tf_code == 'turns it into a TypeError':
        raise TypeError('Could not generate a generic TraceType for None.')  # pylint: disable=raise-missing-from
    return trace(module)

  monkeypatch.setattr(export.ExportModule, 'trace', trace_with_a_bare_except)
  with pytest.raises(Interrupted) as stopped:
    export.export_saved_model(model, target, config.to_json())
  assert stopped.value.exit_code == 128 + sig
  assert not os.path.exists(target + export.PARTIAL)
  if tf_code == 'turns it into a TypeError':
    assert str(stopped.value) == (f'stopped by {sig.name} while writing the SavedModel to {target}; the previous '
                                  'one is still there. Rerun the same command to export.')
    assert snapshot(target) == before
  else:  # the export went on to the end: the new SavedModel is whole, and the run still stops
    assert str(stopped.value) == f'stopped by {sig.name} right after writing the SavedModel to {target} (complete).'
    assert tf.saved_model.load(target).signatures['serving_default'] is not None


def test_a_second_signal_does_not_cut_the_exports_cleanup_short(tmp_path, monkeypatch):
  """Ctrl-C twice, or a SIGTERM then Ctrl-C: the first stops the export, the second comes while its partial
  SavedModel is being removed; the removal finishes, and the run ends as the first signal said."""
  from simclr_tf import export
  from simclr_tf.runtime import files
  from simclr_tf.errors import Interrupted
  model, config, target, before = a_tiny_export(tmp_path)

  def trace_stopped_by_sigterm(module):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # cut short by the handler's raise

  remove_tree = files.remove_tree

  def remove_tree_meeting_a_sigint(path):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler runs here
    remove_tree(path)

  monkeypatch.setattr(export.ExportModule, 'trace', trace_stopped_by_sigterm)
  monkeypatch.setattr(files, 'remove_tree', remove_tree_meeting_a_sigint)
  with pytest.raises(Interrupted) as stopped:
    export.export_saved_model(model, target, config.to_json())
  assert stopped.value.exit_code == 128 + signal.SIGTERM and 'stopped by SIGTERM while writing' in str(stopped.value)
  assert not os.path.exists(target + export.PARTIAL) and snapshot(target) == before


# ---- the smaller ones --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('value,expected', [('nan', '--learning_rate=nan is not a number'),
                                            ('inf', '--learning_rate=inf is infinite'),
                                            ('0', '--learning_rate must be positive, got 0.0 (at 0 nothing')])
def test_a_learning_rate_that_trains_nothing_is_named(tmp_path, shapes_dir, value, expected):
  proc = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', f'--learning_rate={value}')
  one_error_line(proc, expected)


def test_one_class_and_a_batch_larger_than_the_split_are_warned_about(tmp_path, shapes_dir):
  one_class = tmp_path / 'one_class'
  shutil.copytree(os.path.join(shapes_dir, 'train', 'circle'), one_class / 'train' / 'circle')
  proc = run_cli(*TINY, f'--data_dir={one_class}', f'--model_dir={tmp_path / "run"}', '--mode=finetune',
                 '--train_steps=1', '--train_batch_size=16')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "split 'train' of" in proc.stdout and 'has one class (circle)' in proc.stdout
  assert '--train_batch_size=16 is larger than the 8 examples' in proc.stdout


# ---- fault injection: SIGKILL at seeded moments of the whole run ------------------------------------------------
# On-disk events (the checkpoint saves' stages, the export's), each watched for and killed just after; and every
# small-file write of the run (the record, metrics.jsonl, result files, locks, the SavedModel's config.json), each
# killed inside (tests/crash_during_write.py) with half its bytes written or all of them before the rename.

STEPS = 4
EVENTS = [('temp', k) for k in range(1, STEPS + 1)] + [('index', k) for k in range(1, STEPS + 1)] + \
         [('state', k) for k in range(1, STEPS + 1)] + [('partial', 0), ('partial_variables', 0), ('partial_pb', 0)]
LEFTOVER_MARKS = ('.tmp-', '_temp', '.simclr-tf-partial', '.simclr-tf-old', '.simclr-tf-lock', 'run.lock')


def happened(event, run, export):
  """Whether `event` can be seen on disk now (the moment to kill at)."""
  kind, k = event
  try:
    if kind == 'temp':
      return any(n.startswith(f'ckpt-{k}_temp') for n in os.listdir(run))
    if kind == 'index':
      return os.path.exists(run / f'ckpt-{k}.index')
    if kind == 'state':
      return f'"ckpt-{k}"' in open(run / 'checkpoint').readline()
    partial = export.parent / (export.name + '.simclr-tf-partial')
    return os.path.exists(partial / {'partial': '', 'partial_variables': 'variables',
                                     'partial_pb': 'saved_model.pb'}[kind])
  except OSError:
    return False


def kill_points(count, writes, seed=0):
  """`count` kill points, spread over the on-disk events and the run's `writes` small-file writes (each kind once
  before any repeats): (('write', n, 'torn' or 'written'), 0) or (event, delay after it)."""
  rng = random.Random(seed)
  kinds = EVENTS + [('write', n, how) for n in range(1, writes + 1) for how in ('torn', 'written')]
  events = []
  while len(events) < count:
    events += rng.sample(kinds, len(kinds))
  return [(event, 0 if event[0] == 'write' else rng.uniform(0, 0.02)) for event in events[:count]]


def fault_args(base, data_dir):
  """The run.py flags of the run the fault injection kills: base/run, exported to base/export."""
  return [*TINY, f'--data_dir={data_dir}', f'--model_dir={base / "run"}', f'--export_dir={base / "export"}',
          f'--train_steps={STEPS}', '--checkpoint_steps=1', '--keep_checkpoint_max=2', '--steps_per_loop=1',
          '--export_at_end=true', '--eval_split=test']


WRITE_HARNESS = os.path.join(ROOT, 'tests', 'crash_during_write.py')


def under_write_harness(args):
  """`python tests/crash_during_write.py ARGS`: run.py with its small-file writes counted or killed."""
  return [sys.executable, WRITE_HARNESS, *args]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, shapes_dir):
  """The weights of an uninterrupted run, and the number of small-file writes it made."""
  base = tmp_path_factory.mktemp('uninterrupted')
  writes = base / 'writes.log'
  proc = subprocess.run(under_write_harness(fault_args(base, shapes_dir)), capture_output=True, text=True, cwd=ROOT,
                        env=dict(SUBPROCESS_ENV, WRITES_LOG=str(writes)), timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  names = writes.read_text().split()
  assert {'config.json', 'metrics.jsonl', 'run.lock', 'eval_test.json'} <= set(names), names
  return checkpoint_values(base / 'run'), len(names)


def assert_nothing_or_a_saved_model_that_loads(export):
  if not export.exists():
    return
  assert {'config.json', 'saved_model.pb', 'variables'} <= set(os.listdir(export))
  loaded = tf.saved_model.load(str(export))
  outputs = loaded.signatures['serving_default'](images=tf.zeros([1, 32, 32, 3]))
  assert np.all(np.isfinite(outputs['final_avg_pool'].numpy()))


def assert_every_file_parses_and_nothing_is_left(base, event):
  for dirpath, dirnames, names in os.walk(base):
    for name in names + dirnames:
      assert not any(mark in name for mark in LEFTOVER_MARKS), f'{event}: left behind {dirpath}/{name}'
    for name in names:
      path = os.path.join(dirpath, name)
      if name.endswith('.json'):
        json.load(open(path))
      elif name.endswith('.jsonl'):
        [json.loads(line) for line in open(path)]


POINTS = int(os.environ.get('SIMCLR_TF_KILL_POINTS', '3'))


@pytest.mark.parametrize('point', range(POINTS))
def test_sigkill_at_seeded_moments_then_rerun(tmp_path, shapes_dir, uninterrupted, point):
  """SIMCLR_TF_KILL_POINTS=40 runs 40 points (the default 3 keep the suite short)."""
  weights_uninterrupted, writes = uninterrupted
  event, delay = kill_points(max(POINTS, 40), writes)[point]
  base = tmp_path / 'parent'
  base.mkdir()
  (base / 'unrelated.txt').write_text('a file of the user beside the run')
  before = snapshot(base)
  args = fault_args(base, shapes_dir)
  run, export = base / 'run', base / 'export'
  if event[0] == 'write':
    proc = subprocess.Popen(under_write_harness(args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT,
                            env=dict(SUBPROCESS_ENV, KILL_AT_WRITE=str(event[1]), KILL_HOW=event[2]))
  else:
    proc = start_run_py(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=False)
    while not happened(event, run, export):
      assert proc.poll() is None, f'{event} never happened: ' + proc.stderr.read().decode()[-2000:]
      time.sleep(0.0005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=600)
  assert proc.returncode == -signal.SIGKILL, f'the run ended before the kill at {event}: ' + \
      proc.stderr.read().decode()[-2000:]
  assert_nothing_or_a_saved_model_that_loads(export)

  rerun = run_cli(*args, timeout=600)
  assert rerun.returncode == 0, f'{event}: ' + rerun.stderr[-2000:]
  resumed = [line for line in rerun.stdout.splitlines() if 'resuming from' in line]
  if resumed:  # from a complete checkpoint: it is listed in the state file and readable
    assert 'cannot be read' not in rerun.stdout
  values = checkpoint_values(run)
  assert sorted(values) == sorted(weights_uninterrupted)
  for key, value in weights_uninterrupted.items():
    np.testing.assert_array_equal(values[key], value, err_msg=f'{event}: {key}')
  assert_nothing_or_a_saved_model_that_loads(export)
  assert export.exists()
  assert_every_file_parses_and_nothing_is_left(base, event)
  after = snapshot(base)
  outside = lambda files: {k: v for k, v in files.items() if k.split(os.sep)[0] not in ('run', 'export')}
  assert outside(after) == outside(before), f'{event}: changed beside the run: {set(after) ^ set(before)}'
