"""Files written by an earlier version of simclr-tf (tests/resources/written_before_layout_change: a training
checkpoint and a SavedModel from commit 512c5fa, before the package was reorganised) are read by this one: the same
outputs, and a run resumed from that checkpoint continues it, saving the same object paths."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import run as run_py
from conftest import ROOT
from simclr_tf import record, weights
from simclr_tf.config import from_dict
from simclr_tf.errors import UserError
from simclr_tf.runtime import files

BEFORE = os.path.join(ROOT, 'tests', 'resources', 'written_before_layout_change')


@pytest.fixture(scope='module')
def recorded():
  return from_dict(files.read_json(os.path.join(BEFORE, 'config.json'))), dict(np.load(os.path.join(BEFORE,
                                                                                                    'outputs.npz')))


def assert_outputs_match(outputs, recorded_outputs, prefix, training_floor=None):
  """Each output as recorded (to rtol 1e-5, atol 1e-6), or in training mode, when `training_floor` is given, within
  training_floor()[name]: what float32 moves on this machine (see float32_floor; measured only when needed)."""
  keys = [k for k in recorded_outputs if k.startswith(prefix)]
  assert len(keys) == 8, keys  # 4 outputs x (inference, training)
  floor = {}
  for key in keys:
    _, mode, name = key.split('/')
    found = outputs[mode][name]
    try:
      np.testing.assert_allclose(found, recorded_outputs[key], rtol=1e-5, atol=1e-6, err_msg=key)
    except AssertionError:
      if mode != 'train' or training_floor is None:
        raise
      floor = floor or training_floor()
      error = float(np.abs(found - recorded_outputs[key]).max())
      assert error <= floor[name], f'{key}: off by {error:.2e} > {floor[name]:.2e}'


def float32_floor(model, images, eager):
  """Per output, how far float32 moves training mode's outputs on this machine: the largest difference from the
  eager call's outputs `eager` of the XLA-compiled call and of calls on images one ulp up and down. The recorded values come from
  another machine, whose kernels round differently; with the 2-image batch norm of training mode, an AMD EPYC's
  outputs differ from the Intel Xeon's that recorded them by up to 4.8e-6 (proj_head_output, of magnitude 1),
  while its own XLA and eager calls differ by 7.9e-6 and a 1-ulp nudge moves them by 3.8e-6."""
  train = lambda x: {k: v.numpy() for k, v in model(tf.constant(x), training=True).items()}
  compiled = tf.function(lambda x: model(x, training=True), jit_compile=True)
  others = [{k: v.numpy() for k, v in compiled(tf.constant(images)).items()}] + [
      train(np.nextafter(images, np.float32(direction * np.inf)).astype(np.float32)) for direction in (1, -1)]
  return {k: max(float(np.abs(other[k] - eager[k]).max()) for other in others) for k in eager}


@pytest.mark.parametrize('source', ['checkpoint', 'saved_model'])
def test_outputs_from_files_written_before(recorded, source):
  config, expected = recorded
  path = BEFORE if source == 'checkpoint' else os.path.join(BEFORE, 'saved_model')
  model, found = weights.load_model(config, path)
  assert found.layout == (weights.OURS if source == 'checkpoint' else weights.OURS_SAVEDMODEL)
  images = tf.constant(expected['images'])
  outputs = {mode: {k: v.numpy() for k, v in model(images, training=mode == 'train').items()}
             for mode in ('infer', 'train')}
  # Our model runs eagerly, as the old code's model did when it recorded 'checkpoint/...' (the 'saved_model/...'
  # values come from the SavedModel's traced graph, whose float32 rounding differs in training mode's 2-image
  # batch norm); the two files hold the same weights, bit for bit.
  assert_outputs_match(outputs, expected, 'checkpoint/',
                       lambda: float32_floor(model, expected['images'], outputs['train']))


def test_both_files_written_before_hold_the_same_weights():
  from_checkpoint = weights.WeightFile(BEFORE).model_values()
  from_saved_model = weights.WeightFile(os.path.join(BEFORE, 'saved_model')).model_values()
  assert from_checkpoint.keys() == from_saved_model.keys() and len(from_checkpoint) > 100
  for k, v in from_checkpoint.items():
    np.testing.assert_array_equal(v, from_saved_model[k], err_msg=k)


def test_saved_model_written_before_still_serves(recorded):
  _, expected = recorded
  loaded = tf.saved_model.load(os.path.join(BEFORE, 'saved_model'))
  images = tf.constant(expected['images'])
  outputs = {mode: {k: v.numpy() for k, v in loaded(images, trainable=mode == 'train').items()}
             for mode in ('infer', 'train')}

  def floor():  # float32's own error here: how far these outputs are from the same network's in float64
    config, _ = recorded
    exact = float64_outputs(config, BEFORE, expected['images'])
    return {k: float(np.abs(outputs['train'][k] - exact[k]).max()) for k in outputs['train']}

  # The recorded values come from another machine. Training mode's batch norm over 2 images is ill-conditioned: on a
  # 2-core AMD EPYC with AVX2 only, proj_head_output (magnitude 1) is 2.3e-5 from the recorded value, while both
  # are 1.2e-4 and 1.4e-4 from the float64 value; an AVX-512 Xeon matched the recorded values to 1e-6.
  assert_outputs_match(outputs, expected, 'saved_model/', floor)


def float64_outputs(config, path, images) -> dict:
  """Training-mode outputs of the model in `path` computed in float64 (a twin of the float32 model, its weights
  cast), the value float32 approximates."""
  import dataclasses
  from simclr_tf.models.simclr import SimCLRModel
  model, _ = weights.load_model(config, path)
  twin = SimCLRModel(dataclasses.asdict(config.architecture), num_classes=model.supervised_head.dense.units,
                     proj_keep_layers=model.projection_head.keep_layers, dtype='float64')
  twin.build((None, *images.shape[1:]))
  for mine, theirs in zip(twin.weights, model.weights):
    mine.assign(tf.cast(theirs, mine.dtype))
  return {k: v.numpy() for k, v in twin(tf.constant(images, tf.float64), training=True).items()}


def copy_of_the_run_written_before(tmp_path) -> str:
  """A model_dir holding the old run's checkpoint and config.json (copied: resuming writes to it)."""
  model_dir = str(tmp_path / 'run')
  os.makedirs(model_dir)
  for name in ('checkpoint', 'ckpt-2.index', 'ckpt-2.data-00000-of-00001', 'config.json'):
    shutil.copy(os.path.join(BEFORE, name), model_dir)
  return model_dir


def test_run_written_before_resumes_with_the_same_object_paths(recorded, tmp_path, shapes_dir):
  config, _ = recorded
  model_dir = copy_of_the_run_written_before(tmp_path)
  # Every object of the model and optimizer must be found in the old checkpoint (restore asserts it).
  result = run_py.run(config.replace(model_dir=model_dir, data_dir=shapes_dir, train_steps=3, export_at_end=False))
  assert result['step'] == 3
  old = tf.train.list_variables(os.path.join(BEFORE, 'ckpt-2'))
  new = tf.train.list_variables(os.path.join(model_dir, 'ckpt-3'))
  assert new == sorted(old + [(record.CHECKPOINT_KEY, [])])  # names and shapes, and now the run's own record
  before = weights.WeightFile(os.path.join(BEFORE, 'ckpt-2')).model_values()
  after = weights.WeightFile(os.path.join(model_dir, 'ckpt-3')).model_values()
  assert before.keys() == after.keys()
  assert any(not np.array_equal(before[k], after[k]) for k in before)  # it trained on from there


def test_a_run_written_before_the_memory_existed_cannot_resume_with_one(recorded, tmp_path, shapes_dir):
  """Its config.json has no memory_size: it trained without a memory, and adding one would not continue it."""
  config, _ = recorded
  assert 'memory_size' not in json.load(open(os.path.join(BEFORE, 'config.json')))
  model_dir = copy_of_the_run_written_before(tmp_path)
  with pytest.raises(UserError, match=r'--memory_size=16 \(was 0\)'):
    run_py.run(config.replace(model_dir=model_dir, data_dir=shapes_dir, train_steps=3, memory_size=16))
