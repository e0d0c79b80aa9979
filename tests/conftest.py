"""Test set-up: two logical CPU devices for the whole session (so mirrored two-replica runs and single-device runs
share one process), a tiny generated image folder, the tiny network every test trains (as a Config and as flags),
and helpers to run run.py. simclr_tf and run.py are imported as installed (`pip install -r requirements.txt`
installs the project in editable mode)."""

import os
import subprocess
import sys

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


def run_cli(*args, timeout=300, env=None):
  """Runs `python run.py ARGS` and returns the CompletedProcess (text output)."""
  return subprocess.run(run_py_command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                        env=dict(SUBPROCESS_ENV, **(env or {})))


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
