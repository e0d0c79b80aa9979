"""Where cloud and TPU users train: filesystem URIs for every path flag, N steps per call, SIGTERM/Ctrl-C, one run
per model_dir, and an unreadable latest checkpoint."""

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

import run as run_py
from conftest import start_run_py, tiny_config, tiny_flags
from simclr_tf import weights
from simclr_tf.config import Config
from simclr_tf.errors import UserError
from simclr_tf.runtime import preemption, runlock

TINY = tiny_flags(dataset='image_folder', eval_batch_size=8, checkpoint_epochs=0)


def start(args, cwd, tiny=True, **popen):
  return start_run_py(*(TINY if tiny else []), *args, cwd=cwd, **popen)


def cli(args, cwd, timeout=300, tiny=True):
  proc = start(args, cwd, tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out, err


def stages(paths):
  """pretrain -> finetune (1/4 of the labels, evaluated) -> distill -> export, on the given path strings."""
  base = dict(dataset='image_folder', data_dir=paths['data'], eval_batch_size=8, checkpoint_epochs=0)
  return [
      tiny_config(mode='pretrain', model_dir=paths['pretrain'], log_every_steps=3, **base),
      tiny_config(mode='finetune', model_dir=paths['finetune'], checkpoint=paths['pretrain'], train_steps=2,
                  label_fraction=0.25, eval_split='test', ft_proj_selector=1, **base),
      tiny_config(mode='distill', model_dir=paths['student'], teacher=paths['finetune'], train_steps=2,
                  eval_split='test', width_multiplier=0.0625, **base),
      tiny_config(mode='export', checkpoint=paths['student'], export_dir=paths['export'], width_multiplier=0.0625,
                  **base)]


def as_flags(config):
  """The command line that gives `config`: every field that differs from its default."""
  default = Config()
  return [f'--{f.name}={getattr(config, f.name)}' for f in dataclasses.fields(Config)
          if getattr(config, f.name) != getattr(default, f.name)]


def chain(paths, cwd):
  for config in stages(paths):
    cli(as_flags(config.validate()), cwd, tiny=False)


def local(path):
  return path[len('file://'):] if path.startswith('file://') else path


def results(paths):
  """What the chain produced: evaluation JSONs, label subset, final weights, exported weights."""
  read = lambda p: json.loads(tf.io.gfile.GFile(p).read())
  out = {'label_subset': read(os.path.join(paths['finetune'], 'label_subset.json'))['ids']}
  for run in ('finetune', 'student'):
    result = read(os.path.join(paths[run], 'eval_test.json'))
    out[run] = {k: result[k] for k in ('top1', 'top5', 'loss', 'num_examples', 'step')}
    prefix = tf.train.latest_checkpoint(paths[run])
    out[run + '_weights'] = weights.WeightFile(prefix).model_values()
  out['export'] = weights.WeightFile(paths['export']).model_values()
  return out


def assert_same_results(a, b):
  assert a['label_subset'] == b['label_subset']
  for run in ('finetune', 'student'):
    assert a[run] == pytest.approx(b[run], rel=1e-5), run
  for key in ('finetune_weights', 'student_weights', 'export'):
    assert set(a[key]) == set(b[key]) and len(a[key]) > 50
    for name in a[key]:
      np.testing.assert_allclose(a[key][name], b[key][name], rtol=1e-5, atol=1e-6, err_msg=f'{key} {name}')


def copy_tree(source, target):
  for directory, _, names in tf.io.gfile.walk(source):
    relative = os.path.relpath(directory, source)
    tf.io.gfile.makedirs(os.path.join(target, relative))
    for name in names:
      tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, relative, name), overwrite=True)


def layout(root):
  return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, names in os.walk(root) for n in names + dirs)


def chain_in_process(root, shapes_dir):
  """The chain of `stages` run in this process, under `root` (a local path or a URI)."""
  paths = {k: os.path.join(root, k) for k in ('data', 'pretrain', 'finetune', 'student', 'export')}
  copy_tree(shapes_dir, paths['data'])
  for config in stages(paths):
    run_py.run(config.validate())
  return paths


@pytest.fixture(scope='module')
def local_chain(tmp_path_factory, shapes_dir):
  """What the chain gives with plain local paths."""
  return results(chain_in_process(str(tmp_path_factory.mktemp('local')), shapes_dir))


def test_every_path_flag_takes_file_uris_and_writes_nowhere_else(tmp_path, shapes_dir, local_chain):
  (tmp_path / 'cwd').mkdir()
  copy_tree(shapes_dir, str(tmp_path / 'data'))
  data_before = layout(tmp_path / 'data')
  paths = {k: f'file://{tmp_path / k}' for k in ('data', 'pretrain', 'finetune', 'student', 'export')}
  chain(paths, tmp_path / 'cwd')
  # Nothing outside the given paths: the working directory stays empty, no literal 'file:' folder appears.
  assert not os.listdir(tmp_path / 'cwd')
  assert sorted(os.listdir(tmp_path)) == ['cwd', 'data', 'export', 'finetune', 'pretrain', 'student']
  assert layout(tmp_path / 'data') == data_before
  assert os.path.isfile(tmp_path / 'export' / 'saved_model.pb') and os.path.isfile(tmp_path / 'student' /
                                                                                   'curves.png')
  assert not any(name.endswith('.tmp') or '.tmp-' in name for name in layout(tmp_path))
  assert not os.path.exists(tmp_path / 'finetune' / runlock.LOCK_NAME)
  assert_same_results(results(paths), local_chain)


def test_ram_filesystem_in_one_process(shapes_dir, local_chain):
  """The same chain in-process through ram:// (TF's in-memory filesystem) gives what local paths give."""
  paths = chain_in_process(f'ram://simclr-{os.getpid()}', shapes_dir)
  assert tf.io.gfile.exists(os.path.join(paths['student'], 'metrics.jsonl'))
  assert_same_results(results(paths), local_chain)


def final_weights(model_dir):
  prefix = tf.train.latest_checkpoint(model_dir)
  return prefix, weights.WeightFile(prefix).model_values()


def test_steps_per_loop_gives_the_same_weights_as_one_step_per_call(tmp_path, shapes_dir):
  weights = {}
  for n in (1, 4):
    model_dir = str(tmp_path / f'n{n}')
    run_py.run(tiny_config(mode='pretrain', dataset='image_folder', data_dir=shapes_dir, model_dir=model_dir,
                           train_steps=10, log_every_steps=5, checkpoint_steps=10, steps_per_loop=n).validate())
    prefix, weights[n] = final_weights(model_dir)
    assert prefix.endswith('ckpt-10')
    logged = [json.loads(l)['step'] for l in tf.io.gfile.GFile(os.path.join(model_dir, 'metrics.jsonl'))]
    assert logged == [5, 10]
  for name in weights[1]:
    np.testing.assert_allclose(weights[4][name], weights[1][name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_sigterm_at_a_random_step_saves_and_the_rerun_continues_exactly(tmp_path, shapes_dir):
  stop_after = random.randint(3, 12)
  args = [f'--data_dir={shapes_dir}', '--train_steps=16', '--log_every_steps=1', '--steps_per_loop=4',
          '--checkpoint_steps=8']
  stopped = tmp_path / 'stopped'
  proc = start(args + [f'--model_dir={stopped}'], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  for line in proc.stdout:
    if f'step {stop_after}/16' in line:
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and 'stopped by SIGTERM at step' in lines[0] and 'Rerun the same command' in lines[0], err
  at = int(lines[0].split('at step ')[1].split()[0])
  assert stop_after <= at <= stop_after + 1  # after the step it was in (log_every_steps=1 ends every loop)
  assert tf.train.latest_checkpoint(str(stopped)).endswith(f'ckpt-{at}')
  assert not os.path.exists(stopped / runlock.LOCK_NAME)

  cli(args + [f'--model_dir={stopped}'], tmp_path)
  cli(args + [f'--model_dir={tmp_path / "uninterrupted"}'], tmp_path)
  prefix, resumed = final_weights(str(stopped))
  _, uninterrupted = final_weights(str(tmp_path / 'uninterrupted'))
  assert prefix.endswith('ckpt-16')
  for name in uninterrupted:
    np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


def test_stop_requests_catch_sigint_and_sigterm_and_restore_handlers():
  previous = signal.getsignal(signal.SIGINT)
  with preemption.StopRequests() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert stop.requested == signal.SIGINT and stop.name == 'SIGINT'
    os.kill(os.getpid(), signal.SIGTERM)  # the first request is the one reported
    time.sleep(0.1)
    assert stop.requested == signal.SIGINT
  assert signal.getsignal(signal.SIGINT) is previous


def test_a_second_run_on_a_model_dir_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, shapes_dir):
  model_dir = tmp_path / 'run'
  args = [f'--data_dir={shapes_dir}', f'--model_dir={model_dir}', '--log_every_steps=1']
  first = start(args + ['--train_steps=100000'], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  for line in first.stdout:
    if 'step 1/' in line:
      break
  holder = json.loads((model_dir / runlock.LOCK_NAME).read_text())
  assert holder['pid'] == first.pid and holder['host'] == socket.gethostname()

  second = start(args + ['--train_steps=2'], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = second.communicate(timeout=120)
  assert second.returncode == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and 'is in use by another run' in lines[0] and f'pid {first.pid}' in lines[0], err
  assert 'started 20' in lines[0] and socket.gethostname() in lines[0]

  first.kill()  # dies holding the lock
  first.wait(timeout=60)
  assert (model_dir / runlock.LOCK_NAME).exists()
  third = start(args + ['--train_steps=2'], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = third.communicate(timeout=300)
  assert third.returncode == 0, err[-2000:]
  assert f'taking over {model_dir / runlock.LOCK_NAME} from a run that is no longer running' in out
  assert f'pid {first.pid}' in out
  assert not (model_dir / runlock.LOCK_NAME).exists()


def test_a_lock_from_another_host_counts_until_its_heartbeat_is_stale(tmp_path):
  lock_path = tmp_path / runlock.LOCK_NAME
  record = dict(host='another-host', pid=1, started=time.time() - 3600, token='theirs')
  lock_path.write_text(json.dumps(dict(record, heartbeat=time.time() - 30)))
  with pytest.raises(UserError, match='in use by another run \\(host another-host, pid 1'):
    runlock.RunLock(str(tmp_path)).acquire()
  lock_path.write_text(json.dumps(dict(record, heartbeat=time.time() - runlock.STALE_SECONDS - 1)))
  lock = runlock.RunLock(str(tmp_path)).acquire()
  assert json.loads(lock_path.read_text())['token'] == lock.token
  lock.release()
  assert not lock_path.exists()


@pytest.fixture
def logged():
  """The messages of the 'simclr_tf' logger (which does not propagate to pytest's caplog)."""
  import logging
  messages = []
  handler = logging.Handler()
  handler.emit = lambda record: messages.append(record.getMessage())
  logger = logging.getLogger('simclr_tf')
  logger.addHandler(handler)
  yield messages
  logger.removeHandler(handler)


def test_an_unreadable_latest_checkpoint_resumes_from_the_one_before(tmp_path, shapes_dir, logged):
  base = dict(mode='pretrain', dataset='image_folder', data_dir=shapes_dir, checkpoint_steps=2, log_every_steps=2)
  run_py.run(tiny_config(model_dir=str(tmp_path / 'run'), train_steps=6, **base).validate())
  data = tmp_path / 'run' / 'ckpt-6.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])  # a copy cut short, a disk that filled up

  run_py.run(tiny_config(model_dir=str(tmp_path / 'run'), train_steps=6, **base).validate())
  messages = logged
  assert any('ckpt-6 cannot be read' in m and 'resuming from the checkpoint before it' in m for m in messages)
  assert any('resuming from' in m and 'ckpt-4 at step 4' in m for m in messages)
  run_py.run(tiny_config(model_dir=str(tmp_path / 'clean'), train_steps=6, **base).validate())
  prefix, resumed = final_weights(str(tmp_path / 'run'))
  _, clean = final_weights(str(tmp_path / 'clean'))
  assert prefix.endswith('ckpt-6')
  for name in clean:
    np.testing.assert_array_equal(resumed[name], clean[name], err_msg=name)


def test_no_readable_checkpoint_is_one_line(tmp_path, shapes_dir):
  base = dict(mode='pretrain', dataset='image_folder', data_dir=shapes_dir, checkpoint_steps=2, log_every_steps=2,
              keep_checkpoint_max=1, model_dir=str(tmp_path))
  run_py.run(tiny_config(train_steps=2, **base).validate())
  (tmp_path / 'ckpt-2.data-00000-of-00001').write_bytes(b'')
  with pytest.raises(UserError, match='ckpt-2 cannot be read .* holds no older checkpoint'):
    run_py.run(tiny_config(train_steps=4, **base).validate())
