"""SavedModel export and loading; reference checkpoints of variants the golden files lack (width 2, SE), rebuilt
from the key listings in ../shared/reference (tests/test_reference_files.py checks those listings against a real
reference checkpoint, and loads the real files)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import run as run_py
from conftest import SHARED, needs_shared, run_cli, tiny_config
from simclr_tf import export, weights
from simclr_tf.config import Config
from simclr_tf.models.simclr import build_model

REFERENCE = os.path.join(SHARED, 'reference')
needs_reference = needs_shared('reference', 'Exporting the paper\'s own checkpoint')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  model = build_model(tiny_config(mode='finetune', ft_proj_selector=1, sk_ratio=0.0625), pretraining=False,
                      num_classes=4)
  path = str(tmp_path_factory.mktemp('export') / 'saved_model')
  export.export_saved_model(model, path, tiny_config(sk_ratio=0.0625).to_json())
  return model, path


def test_reload_gives_the_same_outputs(exported):
  model, path = exported
  images = tf.random.uniform([3, 32, 32, 3], seed=1)
  expected = model(images, training=False)
  loaded = tf.saved_model.load(path)
  outputs = loaded(images, trainable=False)
  assert set(outputs) == set(export.SAVED_OUTPUTS) | {'logits_sup'}
  for k, v in outputs.items():
    np.testing.assert_allclose(v.numpy(), expected[k].numpy(), atol=1e-5, err_msg=k)
  served = loaded.signatures['serving_default'](images=images)
  np.testing.assert_allclose(served['logits_sup'].numpy(), expected['logits_sup'].numpy(), atol=1e-5)


def test_reloaded_model_fine_tunes(exported):
  _, path = exported
  loaded = tf.saved_model.load(path)
  variables = loaded.trainable_variables_list
  assert len(variables) > 10 and len(loaded.all_variables) > len(variables)
  before = [v.numpy().copy() for v in variables]
  images = tf.random.uniform([4, 32, 32, 3], seed=2)
  with tf.GradientTape() as tape:
    logits = loaded(images, trainable=True)['logits_sup']
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1, 2, 3], logits=logits))
  grads = tape.gradient(loss, variables)
  assert all(g is not None for g in grads)
  keras.optimizers.SGD(0.1).apply_gradients(zip(grads, variables))
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]
  # The stem and the head move; convs feeding a zero-initialised BN gamma get a zero gradient at first.
  assert changed[0] and changed[-1] and sum(changed) > len(variables) // 4


def test_tfsm_layer_trains(exported):
  _, path = exported
  layer = keras.layers.TFSMLayer(path, call_endpoint='serving_default', trainable=True)
  assert len(layer.trainable_weights) > 10
  images = tf.random.uniform([2, 32, 32, 3], seed=3)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(images)['logits_sup'] ** 2)
  grads = tape.gradient(loss, layer.trainable_weights)
  assert sum(g is not None for g in grads) > 10


def test_saved_model_cli_lists_serving_default(exported):
  _, path = exported
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  proc = subprocess.run([cli, 'show', '--dir', path, '--all'], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-1000:]
  assert "signature_def['serving_default']" in proc.stdout and 'logits_sup' in proc.stdout


def test_finetune_from_exported_saved_model_and_export_mode(tmp_path, shapes_dir, exported):
  _, path = exported
  config = tiny_config(mode='finetune', dataset='image_folder', data_dir=shapes_dir, model_dir=str(tmp_path / 'ft'),
                       checkpoint=path, sk_ratio=0.0625, ft_proj_selector=1, train_steps=1, export_at_end=True)
  run_py.run(config)
  assert weights.is_saved_model(str(tmp_path / 'ft' / 'saved_model'))
  # --mode=export converts a checkpoint into a SavedModel that loads back with the same weights.
  proc = run_cli('--mode=export', f'--checkpoint={tmp_path / "ft"}', f'--export_dir={tmp_path / "out"}',
                 '--image_size=32', '--resnet_depth=18', '--width_multiplier=0.125', '--sk_ratio=0.0625',
                 '--proj_out_dim=16', '--ft_proj_selector=1', timeout=120)
  assert proc.returncode == 0, proc.stderr
  a = weights.WeightFile(str(tmp_path / 'out'))
  b = weights.WeightFile(str(tmp_path / 'ft' / 'saved_model'))
  assert a.layout == b.layout == weights.OURS_SAVEDMODEL
  for p, o in a.model_paths().items():
    np.testing.assert_array_equal(a.value(o), b.value(b.model_paths()[p]))


# ---- reference layouts -----------------------------------------------------------------------------------------

def read_listing(name):
  rows = []
  for line in open(os.path.join(REFERENCE, name)):
    parts = line.rstrip('\n').split('\t')
    if parts[0] == '_CHECKPOINTABLE_OBJECT_GRAPH':
      continue
    rows.append(parts)
  return rows


class Node(tf.__internal__.tracking.AutoTrackable):
  pass


def attach(root, path, value):
  """Puts `value` at object path `path` below root, making the intermediate objects."""
  *parents, leaf = path.split('/')
  node = root
  for part in parents:
    if not hasattr(node, part):
      setattr(node, part, Node())
    node = getattr(node, part)
  setattr(node, leaf, value)


def random_value(shape, rng):
  return rng.normal(size=shape).astype(np.float32) if shape else np.float32(rng.normal())


def build_reference_checkpoint(listing, directory):
  """A checkpoint whose keys are exactly those of the listing (random values). Returns {key: value}."""
  rng = np.random.default_rng(0)
  root, values = Node(), {}
  for key, shape in listing:
    shape = json.loads(shape)
    path = key.replace('/.ATTRIBUTES/VARIABLE_VALUE', '')
    values[path] = random_value(shape, rng)
    attach(root, path, tf.Variable(values[path]))
  prefix = tf.train.Checkpoint(**{k: getattr(root, k) for k in vars(root)
                                  if not k.startswith('_') and k != 'save_counter'}).write(
      os.path.join(directory, 'ckpt-1'))
  with open(os.path.join(directory, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "ckpt-1"\n')
  keys = {k for k, _ in tf.train.list_variables(prefix)}
  assert {k for k, _ in listing} <= keys | {'save_counter/.ATTRIBUTES/VARIABLE_VALUE'}
  return values


def our_values(model):
  paths = weights.ours.variable_paths(model)
  return {paths[id(v)]: v.numpy() for v in model.weights}


def assert_loads_by_structure(model, path, values, checks):
  """Every variable of the model is restored from `path`, those of `checks` from the named source, and every
  source value is used exactly once."""
  count, _ = weights.restore(model, model.weights, path)
  assert count == len(model.weights)
  ours = our_values(model)
  for theirs, mine in checks.items():
    np.testing.assert_array_equal(ours[mine], values[theirs], err_msg=theirs)
  assert_every_value_used_once(model, values)


def assert_every_value_used_once(model, reference_values):
  ours = our_values(model)
  fingerprint = lambda a: (a.shape, round(float(np.sum(a, dtype=np.float64)), 4))
  theirs = sorted(fingerprint(v) for k, v in reference_values.items()
                  if not k.startswith(('global_step', 'optimizer', 'save_counter')))
  assert sorted(fingerprint(v) for v in ours.values()) == theirs


@needs_reference
@pytest.mark.parametrize('listing,config,checks', [
    ('official_tf2_ckpt_keys_r50.txt', dict(resnet_depth=50, image_size=224), {
        'model/resnet_model/initial_conv_relu_max_pool/2/bn/gamma': 'resnet/stem/conv0/bn/bn/gamma',
        'model/resnet_model/block_groups/1/layers/0/projection_layers/0/conv2d/kernel':
            'resnet/block_group2/block0/shortcut/conv/conv/_kernel',
        'model/resnet_model/block_groups/1/layers/0/conv_relu_dropblock_layers/6/conv2d/kernel':
            'resnet/block_group2/block0/conv3/conv/conv/_kernel',
        'model/resnet_model/block_groups/2/layers/5/conv_relu_dropblock_layers/4/bn/moving_variance':
            'resnet/block_group3/block5/conv2/bn/bn/moving_variance',
        'model/_projection_head/linear_layers/2/bn_relu/bn/gamma': 'projection_head/layer3/bn/bn/gamma',
        'model/supervised_head/linear_layer/dense/bias': 'supervised_head/dense/bias'}),
    ('official_tf2_ckpt_keys_sk.txt', dict(resnet_depth=50, width_multiplier=2, sk_ratio=0.0625, se_ratio=0.25,
                                           image_size=224), {
        'model/resnet_model/initial_conv_relu_max_pool/4/conv2d/kernel': 'resnet/stem/conv2/conv/conv/_kernel',
        'model/resnet_model/initial_conv_relu_max_pool/6/bn/beta': 'resnet/stem/conv2/bn/bn/beta',
        'model/resnet_model/block_groups/0/layers/0/conv_relu_dropblock_layers/3/conv2d_0/kernel':
            'resnet/block_group1/block0/conv2/sk/reduce/_kernel',
        'model/resnet_model/block_groups/0/layers/0/conv_relu_dropblock_layers/3/batch_norm_relu_1/bn/gamma':
            'resnet/block_group1/block0/conv2/sk/reduce_bn/bn/gamma',
        'model/resnet_model/block_groups/3/layers/2/conv_relu_dropblock_layers/8/se_expand/bias':
            'resnet/block_group4/block2/se/expand/bias',
        'model/resnet_model/block_groups/1/layers/0/projection_layers/3/bn/moving_mean':
            'resnet/block_group2/block0/shortcut/bn/bn/moving_mean'}),
    ('official_tf2_ckpt_keys_ft.txt', dict(resnet_depth=18, image_size=32), {
        'model/resnet_model/block_groups/0/layers/0/shortcut_layers/1/bn/beta':
            'resnet/block_group1/block0/shortcut/bn/bn/beta',
        'model/resnet_model/block_groups/3/layers/1/conv2d_bn_layers/2/conv2d/kernel':
            'resnet/block_group4/block1/conv2/conv/conv/_kernel'}),
])
def test_reference_checkpoint_layout_loads_by_structure(tmp_path, listing, config, checks):
  rows = read_listing(listing)
  values = build_reference_checkpoint(rows, str(tmp_path))
  found = weights.WeightFile(str(tmp_path))
  assert found.layout == weights.REFERENCE_CHECKPOINT
  num_classes, layers = weights.describe_head(found)
  assert (num_classes, layers) == (10, 3)
  model = build_model(Config(mode='eval', **config), pretraining=False, num_classes=10, proj_keep_layers=3)
  assert_loads_by_structure(model, str(tmp_path), values, checks)
