"""Test set-up: two logical CPU devices for the whole session (so mirrored two-replica runs and single-device runs
share one process), a tiny generated image folder, the tiny network every test trains (as a Config and as flags),
and helpers to run run.py. simclr_tf and run.py are imported as installed (`pip install -r requirements.txt`
installs the project in editable mode)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from simclr_tf.config import Config  # noqa: E402

# What sits beside the project in its development workspace: real data (data/cifar10) and files written by the
# paper's own code (reference/golden, reference_flags.md). A user's clone has none of it; SIMCLR_TF_SHARED=/none
# runs the suite as that clone does (CI runs the tests that read it both ways).
SHARED = os.environ.get('SIMCLR_TF_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))


def needs_shared(relative: str, what: str):
  """Skips a test (or, as `pytestmark`, a file) unless SHARED/relative exists, with a reason naming what did not
  run, so that `pytest -rs` tells a user of a clone which proofs ran only in the project's own workspace."""
  path = os.path.join(SHARED, relative)
  return pytest.mark.skipif(not os.path.exists(path),
                            reason=f'{what} did not run: it needs ../shared/{relative}, which only the project\'s '
                                   f'development workspace has (not a clone)')


# A ResNet-18 at 1/8 width on 32x32 images, batch 8: seconds per run on two CPU cores. Training runs do not export
# at the end unless a test asks for it (--export_at_end=true): the export is 3-4 s of a run's ~16 s, and the tests
# that read SavedModels ask for them.
TINY = dict(resnet_depth=18, width_multiplier=0.125, image_size=32, proj_out_dim=16, train_batch_size=8,
            use_blur=False, warmup_epochs=0, export_at_end=False)


def tiny_config(**overrides) -> Config:
  """The tiny network in a Config, with a short, logged, unsaved run of it."""
  base = dict(TINY, eval_batch_size=8, temperature=0.5, color_jitter_strength=0.5, log_every_steps=1,
              shuffle_buffer=64, learning_rate=0.1, train_steps=3, checkpoint_steps=0, checkpoint_epochs=0,
              weight_decay=1e-4)
  base.update(overrides)
  return Config(**base)


def tiny_flags(**values) -> list:
  """The tiny network as run.py flags, with `values` added (or replaced)."""
  flag = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
  return [f'--{name}={flag(value)}' for name, value in dict(TINY, **values).items()]


@pytest.fixture(scope='session')
def shapes_dir(tmp_path_factory):
  """A labelled image folder (5 classes x 8 images in train and test)."""
  from simclr_tf.data import shapes
  root = str(tmp_path_factory.mktemp('data') / 'shapes')
  shapes.generate(root, per_class=8)
  return root


@pytest.fixture(scope='session')
def unlabeled_dir(tmp_path_factory, shapes_dir):
  """ROOT/train/*.png without classes (the shapes' train images, flattened)."""
  import shutil
  root = tmp_path_factory.mktemp('unlabeled')
  os.makedirs(root / 'train')
  for cls in sorted(os.listdir(os.path.join(shapes_dir, 'train'))):
    for f in sorted(os.listdir(os.path.join(shapes_dir, 'train', cls))):
      shutil.copy(os.path.join(shapes_dir, 'train', cls, f), root / 'train' / f'{cls}_{f}')
  return str(root)


# The environment of every run.py subprocess: TensorFlow's C++ logs quiet, Python's output unbuffered (tests that
# read a run's progress while it runs see each line when it is written).
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')


def run_py_command(*args) -> list:
  """The argv of `python run.py ARGS` with this interpreter."""
  return [sys.executable, os.path.join(ROOT, 'run.py'), *args]


def run_cli(*args, timeout=300, env=None, cwd=ROOT):
  """Runs `python run.py ARGS` and returns the CompletedProcess (text output), as subprocess.run would."""
  proc = start_run_py(*args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
    raise
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# Environment variables a test may give a command that is forked from tests/run_py_server.py: read at run time
# (a new process's tempfile reads TMPDIR on first use; the server's children too). Any other makes the command
# start from scratch: TensorFlow may read it at import.
READ_AT_RUN_TIME = ('TF_CONFIG', 'TMPDIR')
FORK = sys.platform.startswith('linux') and os.environ.get('SIMCLR_TF_TESTS_FORK') != '0'


def start_run_py(*args, cwd=ROOT, env=None, stdout=None, stderr=None, text=True):
  """`python run.py ARGS` started as subprocess.Popen starts it (SUBPROCESS_ENV with `env` added; stdout and stderr
  None, PIPE, DEVNULL or, for stderr, STDOUT): a new process, forked from one that has imported TensorFlow already
  (tests/run_py_server.py), on Linux, unless `env` sets a variable TensorFlow may read at import or
  SIMCLR_TF_TESTS_FORK=0. Returns an object with Popen's pid, stdout, stderr, returncode, poll, wait, communicate,
  send_signal, kill. (macOS does not promise that a process which loaded its system frameworks survives a fork.)"""
  env = dict(SUBPROCESS_ENV, **(env or {}))
  if not FORK or any(
      env.get(k) != SUBPROCESS_ENV.get(k) for k in set(env) | set(SUBPROCESS_ENV) if k not in READ_AT_RUN_TIME):
    return subprocess.Popen(run_py_command(*args), cwd=str(cwd), env=env, stdout=stdout, stderr=stderr, text=text)
  return RUN_PY_SERVER.start(list(args), str(cwd), env, stdout, stderr, text)


class ForkedRunPy:
  """A run.py process the server forked, with the part of subprocess.Popen's interface the tests use."""

  def __init__(self, server, request_id, args, stdout, stderr):
    self.server, self.id, self.args = server, request_id, run_py_command(*args)
    self.stdout, self.stderr = stdout, stderr
    self.pid = server.wait_for(request_id, 'pid')
    self.returncode = None
    self._output = None

  def poll(self):
    if self.returncode is None:
      self.returncode = self.server.answer(self.id, 'returncode')
    return self.returncode

  def wait(self, timeout=None):
    if self.returncode is None:
      self.returncode = self.server.wait_for(self.id, 'returncode', timeout, self.args)
    return self.returncode

  def send_signal(self, sig):
    if self.poll() is None:
      os.kill(self.pid, sig)

  def terminate(self):
    self.send_signal(signal.SIGTERM)

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def communicate(self, timeout=None):
    """(stdout, stderr) read to their end (None where not a pipe), then the exit code waited for."""
    if self._output is None:  # one reader per pipe, as Popen.communicate reads both at once
      self._output = []
      for stream in (self.stdout, self.stderr):
        chunks = []
        reader = stream and threading.Thread(target=lambda s=stream, c=chunks: c.append(s.read()), daemon=True)
        if reader:
          reader.start()
        self._output.append((stream, chunks, reader))
    deadline = None if timeout is None else time.monotonic() + timeout
    for _, _, reader in self._output:
      if reader:
        reader.join(None if deadline is None else max(0, deadline - time.monotonic()))
        if reader.is_alive():
          raise subprocess.TimeoutExpired(self.args, timeout)
    self.wait(None if deadline is None else max(0, deadline - time.monotonic()))
    found = []
    for stream, chunks, _ in self._output:
      found.append(chunks[0] if stream else None)
      if stream:
        stream.close()
    return tuple(found)


class RunPyServer:
  """The client of tests/run_py_server.py: one server per test process, started on first use."""

  def __init__(self):
    self.process = None
    self.lock = threading.Condition()
    self.answers = {}
    self.next_id = 0

  def _start_server(self):
    import socket
    import tempfile
    self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    self.log = tempfile.NamedTemporaryFile('w+', prefix='simclr-tf-run-py-server-', suffix='.log')
    self.process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'run_py_server.py'),
                                     str(theirs.fileno())], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=self.log, cwd=ROOT, env=SUBPROCESS_ENV, pass_fds=[theirs.fileno()])
    theirs.close()
    threading.Thread(target=self._read_answers, daemon=True).start()

  def _read_answers(self):
    while True:
      message = self.channel.recv(1 << 16)
      with self.lock:
        if not message:
          self.answers[None] = 'tests/run_py_server.py ended: ' + open(self.log.name).read()[-3000:]
          self.lock.notify_all()
          return
        answer = json.loads(message)
        self.answers.setdefault(answer.pop('id'), {}).update(answer)
        self.lock.notify_all()

  def answer(self, request_id, key):
    with self.lock:
      if None in self.answers:
        raise RuntimeError(self.answers[None])
      return self.answers.get(request_id, {}).get(key)

  def wait_for(self, request_id, key, timeout=None, args=None):
    with self.lock:
      found = self.lock.wait_for(lambda: None in self.answers or key in self.answers.get(request_id, {}), timeout)
      if None in self.answers:
        raise RuntimeError(self.answers[None])
      if not found:
        raise subprocess.TimeoutExpired(args, timeout)
      return self.answers[request_id][key]

  def start(self, args, cwd, env, stdout, stderr, text):
    import socket
    with self.lock:
      if self.process is None or self.process.poll() is not None:
        self._start_server()
      self.next_id += 1
      request_id = self.next_id
    null = os.open(os.devnull, os.O_RDWR)
    ours, theirs = {}, {}
    for name, how in (('stdout', stdout), ('stderr', stderr)):
      if how == subprocess.PIPE:
        read, write = os.pipe()
        ours[name], theirs[name] = open(read, 'r' if text else 'rb'), write
      elif how == subprocess.DEVNULL:
        theirs[name] = null
      elif how == subprocess.STDOUT and name == 'stderr':
        theirs[name] = theirs['stdout']
      elif how is None:
        theirs[name] = 1 + (name == 'stderr')
      else:
        raise ValueError(f'{name}={how!r} is not supported by start_run_py')
    request = json.dumps(dict(id=request_id, argv=args, env=env, cwd=cwd)).encode()
    socket.send_fds(self.channel, [request], [null, theirs['stdout'], theirs['stderr']])
    for fd in {null, *theirs.values()} - {1, 2}:
      os.close(fd)
    return ForkedRunPy(self, request_id, args, ours.get('stdout'), ours.get('stderr'))


RUN_PY_SERVER = RunPyServer()


def run_here(*args):
  """`python run.py ARGS` in this process (run.execute: the command's own path once its flags are parsed), for
  tests that call many commands without paying a new process's TensorFlow import each time. Returns (0, the mode's
  result dict) or (2, the one-line error a user would see)."""
  from absl import flags
  import run as run_py
  from simclr_tf.errors import UserError
  flag_values = flags.FlagValues()
  run_py.declare_flags(flag_values)
  flag_values(['run.py', *args])
  try:
    return 0, run_py.execute(flag_values, native_stderr_to_file=False)
  except UserError as e:
    return 2, str(e)


def tensorboard_events(folder):
  """{tag: [(step, value)]} of the event files in `folder` (a path), in the order written: a scalar's value as a
  pytest.approx, an image's the decoded batch [N, H, W, 3], a histogram's its buckets [K, 3] (left, right, count)."""
  import numpy as np
  found = {}
  for name in sorted(n for n in os.listdir(folder) if n.startswith('events.out.tfevents')):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == 'images':
          tensor = np.stack([tf.io.decode_png(png).numpy() for png in tensor[2:]])
        elif plugin != 'histograms':
          tensor = pytest.approx(float(tensor))
        found.setdefault(value.tag, []).append((event.step, tensor))
  return found


@pytest.fixture
def simclr_log():
  """The messages the 'simclr_tf' logger emits during a test (run_here's runs log there; it does not propagate to
  pytest's caplog)."""
  import logging
  messages = []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: messages.append(record.getMessage())
  logger = logging.getLogger('simclr_tf')
  logger.addHandler(handler)
  yield messages
  logger.removeHandler(handler)


def checkpoint_values(model_dir) -> dict:
  """name -> value of every variable in the latest checkpoint of model_dir (model, optimizer and extra state; not
  the run's record, which names its own model_dir)."""
  from simclr_tf.record import CHECKPOINT_KEY
  path = tf.train.latest_checkpoint(str(model_dir))
  reader = tf.train.load_checkpoint(path)
  return {k: reader.get_tensor(k) for k, _ in tf.train.list_variables(path)
          if k not in ('_CHECKPOINTABLE_OBJECT_GRAPH', CHECKPOINT_KEY)}


def model_values(model_dir) -> dict:
  """{path in the model: value} of the latest checkpoint of model_dir (read through its object graph, as every
  reader of ours reads it: the model's variables only, under the names the model gives them)."""
  from simclr_tf import weights
  return weights.WeightFile(tf.train.latest_checkpoint(str(model_dir))).model_values()


def run_interrupted_then_resumed(config, monkeypatch, stop_after_step: int = 3):
  """Runs `config` through run.run until the step after `stop_after_step` is reported (KeyboardInterrupt), then
  runs it again in the same model_dir, which resumes from the last checkpoint."""
  import run as run_py
  from simclr_tf.runtime import monitor
  original = monitor.Monitor.report

  def stop(self, step, metrics):
    original(self, step, metrics)
    if step == stop_after_step:
      raise KeyboardInterrupt

  monkeypatch.setattr(monitor.Monitor, 'report', stop)
  with pytest.raises(KeyboardInterrupt):
    run_py.run(config)
  checkpoint = tf.train.latest_checkpoint(config.model_dir)
  monkeypatch.setattr(monitor.Monitor, 'report', original)
  run_py.run(config)
  return checkpoint


# The slowest files, slowest first (seconds per file in a profile of the suite). With `-n 2 --dist loadfile` a
# worker takes the next file when it is free; starting with the longest files keeps both busy to the end.
SLOWEST_FILES = ('training/test_nothing_destroyed.py', 'training/test_scale.py', 'training/test_cloud.py',
                 'training/test_reliability.py', 'test_experiment.py', 'models/test_encoders.py',
                 'test_reference_commands.py', 'modes/test_pretrain.py', 'weights/test_reference_files.py',
                 'weights/test_interop.py', 'test_docs.py', 'modes/test_embed_knn.py', 'test_memory.py',
                 'methods/test_byol.py', 'models/test_models.py')


def pytest_configure(config):
  config.addinivalue_line('markers', 'reads_shared: reads ../shared when it is there (needs_shared, or a fallback); '
                                     'CI runs these again with SIMCLR_TF_SHARED=/nonexistent (-m reads_shared)')


def pytest_collection_modifyitems(session, config, items):
  for item in items:
    if any(mark.name == 'skipif' and '../shared/' in str(mark.kwargs.get('reason', ''))
           for mark in item.iter_markers()):
      item.add_marker(pytest.mark.reads_shared)

  def rank(item):
    path = os.path.relpath(str(item.path), os.path.join(ROOT, 'tests'))
    return SLOWEST_FILES.index(path) if path in SLOWEST_FILES else len(SLOWEST_FILES)
  items.sort(key=rank)  # stable: the tests of a file keep their order
