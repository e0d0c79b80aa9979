"""Our SavedModels in the clients people deploy and reuse them with, each run as a user runs it: `saved_model_cli
run` (a session over the graph, as TF Serving's C++ server loads) on every signature, TF-Hub's KerasLayer inside a
tf_keras model (a venv of its own: tf-keras pulls the full `tensorflow` wheel over tensorflow-cpu), and Keras's
own .keras files."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, tiny_config
from simclr_tf import export, weights
from simclr_tf.data import augment
from simclr_tf.models.simclr import build_model

CLI = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """A fine-tuned-shaped tiny model (SK, a supervised head) and its export, with the run's weight decay."""
  config = tiny_config(mode='finetune', ft_proj_selector=1, sk_ratio=0.0625, weight_decay=1e-4)
  model = build_model(config, pretraining=False, num_classes=4)
  # As after pretraining: at initialisation the last batch norm of every residual block has gamma 0, so nothing
  # below it in the block gets a gradient on the first step, and on the second too little to move a gamma of 1.0
  # in float32 (which would hide whether hub trains those variables).
  rng = np.random.RandomState(3)
  for v in model.weights:
    if v.name == 'gamma':
      v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
  path = str(tmp_path_factory.mktemp('interop') / 'saved_model')
  export.export_saved_model(model, path, config.to_json())
  return model, path


def saved_model_cli_run(path, signature, inputs, out_dir):
  proc = subprocess.run([CLI, 'run', '--dir', path, '--tag_set', 'serve', '--signature_def', signature, '--inputs',
                         inputs, '--outdir', str(out_dir), '--overwrite'], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {os.path.basename(f)[:-4]: np.load(f) for f in glob.glob(os.path.join(out_dir, '*.npy'))}


def test_every_signature_runs_in_a_session_based_loader(tmp_path, exported):
  model, path = exported
  assert sorted(tf.saved_model.load(path).signatures) == sorted(export.SIGNATURES)
  # serving_default: float images.
  images = np.random.RandomState(0).rand(3, 32, 32, 3).astype(np.float32)
  np.save(tmp_path / 'images.npy', images)
  served = saved_model_cli_run(path, 'serving_default', f'images={tmp_path / "images.npy"}', tmp_path / 'out')
  expected = model(images, training=False)
  assert set(served) == set(export.SAVED_OUTPUTS) | {'logits_sup'}
  for key, value in served.items():
    np.testing.assert_allclose(value, expected[key].numpy(), atol=1e-5, err_msg=key)
  # serving_bytes: real JPEG and PNG encodings of images of other sizes, preprocessed inside.
  rng = np.random.RandomState(1)
  pictures = [(rng.rand(48, 40, 3) * 255).astype(np.uint8), (rng.rand(32, 32, 3) * 255).astype(np.uint8),
              (rng.rand(20, 28, 3) * 255).astype(np.uint8)]
  encoded = [tf.io.encode_jpeg(pictures[0], quality=90).numpy(), tf.io.encode_png(pictures[1]).numpy(),
             tf.io.encode_png(pictures[2]).numpy()]
  assert encoded[0][:2] == b'\xff\xd8' and encoded[1][:4] == b'\x89PNG'
  np.save(tmp_path / 'bytes.npy', np.array(encoded, dtype=object))
  served = saved_model_cli_run(path, 'serving_bytes', f'image_bytes={tmp_path / "bytes.npy"}', tmp_path / 'out2')
  preprocessed = tf.stack([augment.eval_view(augment.to_float(augment.decode_image(e)), 32) for e in encoded])
  expected = model(preprocessed, training=False)
  for key, value in served.items():
    np.testing.assert_allclose(value, expected[key].numpy(), atol=1e-5, err_msg=key)


def test_keras_tfsm_layer_on_its_default_endpoint(exported):
  """keras.layers.TFSMLayer(path) calls `serve` (what Keras's own export writes): the serving_default function."""
  model, path = exported
  images = np.random.RandomState(2).rand(2, 32, 32, 3).astype(np.float32)
  outputs = keras.layers.TFSMLayer(path)(images)
  for key in ('final_avg_pool', 'logits_sup'):
    np.testing.assert_allclose(outputs[key].numpy(), model(images, training=False)[key].numpy(), atol=1e-5)


def test_loading_our_export_prints_no_warnings(exported):
  _, path = exported
  proc = subprocess.run([sys.executable, '-c', f'import tensorflow as tf; m = tf.saved_model.load({path!r}); '
                         f'm(tf.zeros([1, 32, 32, 3]), trainable=True)'],
                        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  warnings = [line for line in proc.stderr.splitlines() if 'WARNING' in line and 'absl::InitializeLog' not in line]
  assert not warnings, '\n'.join(warnings[:5])


def test_the_papers_call_and_the_reusable_saved_model_api(exported):
  model, path = exported
  loaded = tf.saved_model.load(path)
  images = tf.random.uniform([2, 32, 32, 3], seed=4)
  for call in (dict(trainable=False), dict(training=False), {}):
    outputs = loaded(images, **call)
    np.testing.assert_allclose(outputs['logits_sup'].numpy(), model(images, training=False)['logits_sup'].numpy(),
                               atol=1e-5)
  assert [v.shape for v in loaded.variables] == [v.shape for v in model.weights]
  assert len(loaded.trainable_variables) == len(model.trainable_weights) == len(loaded.trainable_variables_list)
  assert len(loaded.all_variables) == len(loaded.variables)
  # The run's weight decay (1e-4) on every kernel: the loss of the L2 norm of what is decayed.
  kernels = [v for v in model.trainable_weights if v.name not in ('gamma', 'beta', 'bias')]
  expected = 1e-4 * sum(float(tf.nn.l2_loss(v)) for v in kernels)
  (regularization,) = loaded.regularization_losses
  np.testing.assert_allclose(float(regularization()), expected, rtol=1e-5)


def client_python(name: str, packages, modules: str) -> str:
  """The python of a venv of clients (`packages`, installed without dependencies; `modules`: the imports that must
  work) that sees this environment's packages (TensorFlow among them) through a .pth file: `python -m venv
  --system-site-packages` run from inside a venv sees the base interpreter's packages, not the venv's. Made once per
  environment in the clone's .test-cache/<name>-venv-<key> (ignored by git) and reused; skips the test, saying why,
  when the packages cannot be installed (no package registry)."""
  import hashlib
  import site
  here = [p for p in site.getsitepackages() if os.path.isdir(p)]
  key = hashlib.sha256(('\n'.join(here + list(packages)) + tf.__version__).encode()).hexdigest()[:10]
  venv = os.path.join(ROOT, '.test-cache', f'{name}-venv-{key}')
  python = os.path.join(venv, 'bin', 'python')
  check = [python, '-c', f'import {modules}']
  if os.path.exists(python) and subprocess.run(check, capture_output=True, timeout=300).returncode == 0:
    return python
  subprocess.run([sys.executable, '-m', 'venv', '--clear', venv], check=True)
  own = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], check=True,
                       capture_output=True, text=True).stdout.strip()
  with open(os.path.join(own, 'simclr-tf-tests-environment.pth'), 'w') as f:
    f.write('\n'.join(here) + '\n')  # after the venv's own site-packages: its packages win
  proc = subprocess.run([python, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-deps',
                         '--ignore-installed', *packages], capture_output=True, text=True, timeout=600)
  if proc.returncode:
    pytest.skip(f'{", ".join(packages)} could not be installed in a venv (no package registry?): '
                f'{proc.stderr.strip().splitlines()[-1:]}')
  found = subprocess.run(check, capture_output=True, text=True, timeout=300)
  assert found.returncode == 0, found.stderr[-2000:]
  return python


def hub_python():
  """A venv with tensorflow-hub and tf-keras (tf-keras pulls the full `tensorflow` wheel over tensorflow-cpu)."""
  major_minor = '.'.join(tf.__version__.split('.')[:2])
  return client_python('hub', ['tensorflow-hub==0.16.1', f'tf-keras=={major_minor}.*'],
                       'tensorflow, tensorflow_hub, tf_keras')


HUB_CLIENT = r'''
import json, os, sys
os.environ['TF_USE_LEGACY_KERAS'] = '1'
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

path, key = sys.argv[1], sys.argv[2]
layer = hub.KerasLayer(path, trainable=True, output_key=key)
inputs = tf_keras.Input((32, 32, 3))
features = layer(inputs)
if len(features.shape) > 2:
  features = tf_keras.layers.Flatten()(features)
classifier = tf_keras.Model(inputs, tf_keras.layers.Dense(4)(features))
classifier.compile(tf_keras.optimizers.SGD(0.05), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.RandomState(0).rand(16, 32, 32, 3).astype(np.float32)
y = np.arange(16) % 4
weights = lambda vs: [v.numpy().copy() for v in vs]
moving = [v for v in layer.non_trainable_weights if 'moving_mean' in v.name]
trainable_before, moving_before = weights(layer.trainable_weights), weights(moving)
served_before = layer(x[:2], training=False).numpy()
classifier.fit(x, y, epochs=1, batch_size=8, verbose=0)
moving_after_fit = weights(moving)
classifier.predict(x, verbose=0)
# Every call hub users write: hub.load's module with trainable= and training= in every combination, and a KerasLayer
# given the paper's argument (arguments=dict(trainable=True)) beside its own training flag, inferring and fitting.
calls = {}
if key == 'logits_sup':  # once: the calls in inference mode first (one in training mode moves the statistics)
  module = hub.load(path)
  for trainable, training in ((False, None), (False, False), (True, False), (True, None), (False, True),
                              (True, True)):
    kwargs = dict(trainable=trainable) if training is None else dict(trainable=trainable, training=training)
    calls[f'{trainable},{training}'] = module(x[:2], **kwargs)['logits_sup'].numpy().tolist()
  with_argument = hub.KerasLayer(path, trainable=True, arguments=dict(trainable=True), output_key='logits_sup')
  calls['layer,inference'] = with_argument(x[:2], training=False).numpy().tolist()
  head = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), with_argument])
  head.compile(tf_keras.optimizers.SGD(0.01), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  head.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0)
print(json.dumps(dict(calls=calls,
    trainable=len(layer.trainable_weights),
    changed=[v.name for a, v in zip(trainable_before, layer.trainable_weights) if not np.array_equal(a, v.numpy())],
    moving=len(moving), moving_changed_by_fit=sum(not np.array_equal(a, b) for a, b in zip(moving_before,
                                                                                             moving_after_fit)),
    moving_changed_by_predict=sum(not np.array_equal(a, v.numpy()) for a, v in zip(moving_after_fit, moving)),
    losses=len(classifier.losses), served_before=served_before.tolist())))
'''


@pytest.mark.parametrize('key', ['final_avg_pool', 'block_group2', 'logits_sup'])
def test_tf_hub_keras_layer_fine_tunes_the_encoder_in_a_tf_keras_model(exported, key):
  model, path = exported
  python = hub_python()
  proc = subprocess.run([python, '-c', HUB_CLIENT, path, key], capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['trainable'] == len(model.trainable_weights)
  # fit moves every encoder variable below the output, and batch norm's statistics; predict (inference) leaves the
  # statistics alone. The weight decay is one loss of the model: it moves every kernel, so above block_group2 only
  # what is not decayed (batch norm's gamma and beta) must stay.
  changed = set(result['changed'])
  below = lambda name: key != 'block_group2' or any(f'/{part}/' in name for part in ('stem', 'block_group1',
                                                                                     'block_group2'))
  encoder = [v.value.name for v in model.encoder.trainable_weights]
  assert {name for name in encoder if below(name)} <= changed, sorted(set(encoder) - changed)[:5]
  assert not [n for n in changed if not below(n) and ('gamma' in n or 'beta' in n)], result['changed']
  assert result['moving_changed_by_fit'] == result['moving'] > 0 and result['moving_changed_by_predict'] == 0
  assert result['losses'] == 1
  images = np.random.RandomState(0).rand(16, 32, 32, 3).astype(np.float32)[:2]
  expected = model(images, training=False)[key]
  np.testing.assert_allclose(np.array(result['served_before']), expected.numpy(), atol=1e-5)
  if key != 'logits_sup':
    return
  # Each (trainable, training) call in the mode it asks for (training= decides when given); a copy of the model
  # computes training mode, which moves its batch norm statistics.
  copy, _ = weights.load_model(path)
  inference, training = (copy(images, training=mode)['logits_sup'].numpy() for mode in (False, True))
  assert np.abs(inference - training).max() > 1e-4
  assert sorted(result['calls']) == sorted([f'{a},{b}' for a in (False, True) for b in (None, False, True)] +
                                           ['layer,inference'])
  for call, value in result['calls'].items():
    trainable, training_flag = call.split(',')
    in_training = training_flag == 'True' if training_flag != 'None' else trainable == 'True'
    np.testing.assert_allclose(np.array(value), training if in_training else inference, atol=1e-5, err_msg=call)


@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
def test_a_keras_model_holding_ours_round_trips_through_a_keras_file(tmp_path, precision):
  config = tiny_config(mode='finetune', ft_proj_selector=1, sk_ratio=0.0625, precision=precision)
  ours = build_model(config, pretraining=False, num_classes=3)
  described = ours.get_config()
  network = described['architecture']
  assert (network['encoder'], network['resnet_depth'], network['width_multiplier'], network['sk_ratio'],
          described['num_classes'], network['proj_out_dim'], network['image_size']) == (
              'resnet', 18, 0.125, 0.0625, 3, 16, 32)
  inputs = keras.Input((32, 32, 3))
  classifier = keras.Model(inputs, keras.layers.Dense(4)(ours(inputs)['final_avg_pool']))
  images = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
  expected = classifier(images).numpy()
  classifier.save(tmp_path / 'classifier.keras')
  loaded = keras.models.load_model(tmp_path / 'classifier.keras')
  np.testing.assert_array_equal(loaded(images).numpy(), expected)
  inner = [layer for layer in loaded.layers if type(layer).__name__ == 'SimCLRModel'][0]
  assert inner.get_config() == described
  assert inner.encoder.stem.conv0.conv.compute_dtype == ours.encoder.stem.conv0.conv.compute_dtype


# ---- on devices: the float signature converted to TFLite and to ONNX -------------------------------------------

def serving_default_outputs(path, images):
  return {k: v.numpy() for k, v in tf.saved_model.load(path).signatures['serving_default'](
      images=tf.constant(images)).items()}


def test_tflite_runs_the_float_signature(exported):
  """TFLite's converter and interpreter on serving_default (float images; serving_bytes decodes with DecodeImage,
  which TFLite has no kernel for: docs/interop.md says what to do instead)."""
  _, path = exported
  if not hasattr(tf.lite, 'Interpreter'):
    pytest.skip(f'TensorFlow {tf.__version__} has no tf.lite.Interpreter (LiteRT moved to the ai-edge-litert '
                f'package)')
  converted = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=['serving_default']).convert()
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # tf.lite.Interpreter's deprecation notice (ai-edge-litert's is the same code)
    interpreter = tf.lite.Interpreter(model_content=converted)
  images = np.random.RandomState(5).rand(2, 32, 32, 3).astype(np.float32)
  served = interpreter.get_signature_runner('serving_default')(images=images)
  expected = serving_default_outputs(path, images)
  assert set(served) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(served[key], value, atol=1e-5, err_msg=key)


ONNX_CLIENT = r'''
import json, sys
import numpy as np
import onnxruntime
model, images = sys.argv[1:3]
session = onnxruntime.InferenceSession(model, providers=['CPUExecutionProvider'])
outputs = session.run(None, {session.get_inputs()[0].name: np.load(images)})
print(json.dumps(dict(inputs=[i.name for i in session.get_inputs()],
                      outputs={o.name: v.tolist() for o, v in zip(session.get_outputs(), outputs)})))
'''


def test_onnx_runs_the_float_signature(tmp_path, exported):
  """tf2onnx converts serving_default as a user runs it (its command line) and onnxruntime runs it, in a venv of
  their own."""
  _, path = exported
  python = client_python('onnx', ['tf2onnx==1.17.0', 'onnx==1.23.2', 'onnxruntime==1.32.0'],
                         'tf2onnx, onnx, onnxruntime')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  converted = subprocess.run([python, '-m', 'tf2onnx.convert', '--saved-model', path, '--signature_def',
                              'serving_default', '--opset', '17', '--output', str(tmp_path / 'model.onnx')],
                             capture_output=True, text=True, timeout=600, env=env)
  assert converted.returncode == 0, converted.stderr[-3000:]
  images = np.random.RandomState(6).rand(2, 32, 32, 3).astype(np.float32)
  np.save(tmp_path / 'images.npy', images)
  proc = subprocess.run([python, '-c', ONNX_CLIENT, str(tmp_path / 'model.onnx'), str(tmp_path / 'images.npy')],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  expected = serving_default_outputs(path, images)
  assert result['inputs'] == ['images'] and set(result['outputs']) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(np.array(result['outputs'][key]), value, atol=1e-5, err_msg=key)
