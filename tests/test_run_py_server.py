"""The tests' run.py processes are forked from a process that has imported TensorFlow (tests/run_py_server.py):
each is still a process of its own that does what `python run.py` does. Here the same commands run both ways
and must agree: what they print, what they write, their exit codes; and the forked one is signalled, killed and
given an environment as a started one is."""

import os
import re
import signal
import subprocess

import numpy as np
import pytest

from conftest import FORK, SUBPROCESS_ENV, checkpoint_values, run_py_command, start_run_py, tiny_flags

TINY = tiny_flags(dataset='image_folder', log_every_steps=1)
pytestmark = pytest.mark.skipif(not FORK, reason='run.py commands are not forked here (not Linux, or '
                                                 'SIMCLR_TF_TESTS_FORK=0)')


def both_ways(tmp_path, *args, env=None):
  """(forked, started): each a CompletedProcess of `python run.py ARGS` with {} in ARGS the run's own folder."""
  done = []
  for way in ('forked', 'started'):
    folder = tmp_path / way
    argv = [a.format(folder) for a in args]
    if way == 'forked':
      proc = start_run_py(*argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
      assert type(proc).__name__ == 'ForkedRunPy'
      out, err = proc.communicate(timeout=300)
      done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    else:
      done.append(subprocess.run(run_py_command(*argv), capture_output=True, text=True, timeout=300,
                                 env=dict(SUBPROCESS_ENV, **(env or {}))))
  return done


def without_clock(text, tmp_path):
  """Output lines without their times, speeds and folders (which differ between two runs of one command)."""
  text = text.replace(str(tmp_path / 'forked'), 'RUN').replace(str(tmp_path / 'started'), 'RUN')
  return [re.sub(r'^\d\d:\d\d:\d\d |\|.*$', '', line) for line in text.splitlines()]


def test_a_forked_run_prints_writes_and_ends_as_a_started_one(tmp_path, shapes_dir):
  forked, started = both_ways(tmp_path, *TINY, f'--data_dir={shapes_dir}', '--model_dir={}', '--train_steps=2',
                              '--checkpoint_steps=1')
  assert forked.returncode == started.returncode == 0, forked.stderr[-2000:] + started.stderr[-2000:]
  assert without_clock(forked.stdout, tmp_path) == without_clock(started.stdout, tmp_path)
  assert forked.stderr == started.stderr
  assert sorted(os.listdir(tmp_path / 'forked')) == sorted(os.listdir(tmp_path / 'started'))
  values, expected = checkpoint_values(tmp_path / 'forked'), checkpoint_values(tmp_path / 'started')
  assert sorted(values) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(values[name], expected[name], err_msg=name)
  # A mistake: the same one line and exit code; a variable read at run time (TMPDIR) still lets it be forked.
  forked, started = both_ways(tmp_path, *TINY, f'--data_dir={shapes_dir}', '--model_dir={}',
                              '--checkpoint=/nonexistent/run', '--mode=finetune', env=dict(TMPDIR=str(tmp_path)))
  assert forked.returncode == started.returncode == 2
  assert forked.stderr.replace(str(tmp_path / 'forked'), 'RUN') == started.stderr.replace(str(tmp_path / 'started'),
                                                                                         'RUN')


def test_a_forked_run_is_signalled_and_killed_by_its_pid(tmp_path, shapes_dir):
  args = (*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path / "run"}', '--train_steps=1000')
  proc = start_run_py(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  for line in proc.stdout:
    if 'step 2/1000' in line:
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM and 'stopped by SIGTERM at step' in err, err[-2000:]
  assert not (tmp_path / 'run' / 'run.lock').exists()
  proc = start_run_py(*args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  for line in proc.stdout:
    if 'step' in line:
      proc.kill()
      break
  assert proc.wait(timeout=60) == -signal.SIGKILL and proc.poll() == -signal.SIGKILL
  # TensorFlow reads some variables at import: a command that sets one is started, not forked.
  started = start_run_py('--help', env=dict(TF_ENABLE_ONEDNN_OPTS='0'), stdout=subprocess.PIPE)
  assert isinstance(started, subprocess.Popen) and started.communicate(timeout=120)[0].startswith('simclr-tf')
