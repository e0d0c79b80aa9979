"""Scale and speed: multi-worker training on loopback, mixed precision, XLA compilation."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli, start_run_py, tiny_config, tiny_flags
from simclr_tf import precision
from simclr_tf.config import Config, resume_conflicts
from simclr_tf.models.simclr import build_model

TINY = tiny_flags(dataset='image_folder', log_every_steps=1, learning_rate=0.1)


# ---- multi-worker ----------------------------------------------------------------------------------------------

def free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def start_cluster(tmp_path, data_dir, *extra, workers=2):
  """`workers` run.py processes on loopback, each one CPU device and one thread, with TF_CONFIG as TF documents
  it. Returns the Popen objects (stdout+stderr merged, text)."""
  ports = free_ports(workers)
  cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
  procs = []
  for i in range(workers):
    scratch = tmp_path / f'tmp{i}'
    scratch.mkdir(exist_ok=True)
    env = dict(TMPDIR=str(scratch), TF_CONFIG=json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': i}}))
    procs.append(start_run_py(*TINY, f'--data_dir={data_dir}', f'--model_dir={tmp_path / "model"}',
                              '--strategy=multi_worker', '--num_threads=1', *extra, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  return procs


def finish(procs, timeout=300):
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  return [p.returncode for p in procs], outputs


def fingerprint(output):
  found = re.findall(r'finished at step (\d+) with weights fingerprint (\w+)', output)
  assert found, output[-3000:]
  return found[-1]


def test_two_workers_stop_together_on_sigterm_and_resume_identically_after_a_cluster_restart(tmp_path, shapes_dir):
  """TF's PreemptionCheckpointHandler: a SIGTERM to one worker makes every worker save at the step the cluster agrees
  on and stop; the restarted cluster resumes there, both workers with the same weights at every step."""
  procs = start_cluster(tmp_path, shapes_dir, '--train_steps=400', '--checkpoint_steps=400')
  for line in procs[0].stdout:
    if 'step 3/400' in line:
      procs[1].send_signal(signal.SIGTERM)
      break
  codes, outputs = finish(procs, timeout=240)
  assert codes == [128 + signal.SIGTERM] * 2, outputs[0][-3000:] + outputs[1][-3000:]
  stops = [re.findall(r'stopped by a preemption notice at step (\d+) of 400', out) for out in outputs]
  assert stops[0] and stops[0] == stops[1], outputs
  at = int(stops[0][0])
  assert tf.train.latest_checkpoint(str(tmp_path / 'model')).endswith(f'ckpt-{at}')

  # The whole cluster restarts: both resume from the chief's checkpoint and finish with the same weights.
  codes, outputs = finish(start_cluster(tmp_path, shapes_dir, f'--train_steps={at + 2}', '--checkpoint_steps=2'))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert 'on 2 replica(s)' in outputs[0]
  assert all(f'at step {at}' in out for out in outputs)
  assert fingerprint(outputs[0]) == fingerprint(outputs[1]) and fingerprint(outputs[0])[0] == str(at + 2)
  assert tf.train.latest_checkpoint(str(tmp_path / 'model')).endswith(f'ckpt-{at + 2}')  # the chief's
  assert not os.listdir(tmp_path / 'tmp1')  # the other worker's scratch checkpoints are gone

  # Fine-tuning and evaluation run on the same engine: one result, written once, for the whole test split.
  finetuned = tmp_path / 'finetuned'
  codes, outputs = finish(start_cluster(tmp_path, shapes_dir, '--mode=finetune', f'--checkpoint={tmp_path / "model"}',
                                        '--ft_proj_selector=1', '--train_steps=2', '--eval_split=test',
                                        f'--model_dir={finetuned}'))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert fingerprint(outputs[0]) == fingerprint(outputs[1])
  result = json.load(open(finetuned / 'eval_test.json'))
  assert result['num_examples'] == 40
  assert all(f'top1 {result["top1"]:.4f}' in out for out in outputs)


def test_each_worker_reads_its_own_shard(shapes_dir):
  """Over an epoch the input pipelines of two workers read disjoint halves of the split."""
  from simclr_tf.data import inputs
  config = tiny_config(dataset='image_folder', data_dir=shapes_dir)
  source = inputs.make_source(config, 'train')
  seen = []
  for pipeline in range(2):
    stream = inputs._epoch_stream(source, config, pipeline, 2, start_element=0)
    seen.append({r['image'] for _, r in stream.take(source.num_examples // 2).as_numpy_iterator()})
  assert len(seen[0]) == len(seen[1]) == source.num_examples // 2
  assert not seen[0] & seen[1]


@pytest.mark.parametrize('how', ['kill', 'stop'])
def test_a_dead_or_stuck_worker_stops_the_others_with_a_clear_message(tmp_path, shapes_dir, how):
  procs = start_cluster(tmp_path, shapes_dir, '--train_steps=1000', '--checkpoint_steps=2', '--worker_timeout=10')
  chief, other = procs
  for line in other.stdout:
    if 'step 3/1000' in line:
      break
  other.send_signal(signal.SIGKILL if how == 'kill' else signal.SIGSTOP)
  start = time.time()
  try:
    output = chief.communicate(timeout=120)[0]
  finally:
    other.kill()
    other.wait()
  assert time.time() - start < 90
  assert chief.returncode == 2
  last = output.strip().splitlines()[-1]
  assert last.startswith('error: another worker of the cluster stopped'), output[-3000:]
  assert 'restart every worker' in last and 'ckpt-' in last
  assert 'Traceback' not in output


@pytest.mark.parametrize('tf_config,expected', [
    ('{"cluster": ', 'error: TF_CONFIG is not a cluster description'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     'error: TF_CONFIG names this process worker 3, but its cluster lists 1 worker(s), indexed from 0'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}',
     "error: TF_CONFIG names this process chief 0, but its cluster has no 'chief' list (it has 'worker')")])
def test_tf_config_that_is_not_a_cluster_is_one_line(tmp_path, shapes_dir, tf_config, expected):
  done = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', '--strategy=multi_worker',
                 '--train_steps=1', env={'TF_CONFIG': tf_config})
  assert done.returncode == 2
  assert done.stderr.strip().startswith(expected), done.stderr[-2000:]
  assert len(done.stderr.strip().splitlines()) == 1


# ---- mixed precision -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_precision_computes_in_16_bits_and_keeps_float32_weights_and_outputs(policy):
  model = build_model(tiny_config(mode='finetune', precision=policy, se_ratio=0.25, sk_ratio=0.0625), pretraining=False,
                      num_classes=5)
  assert keras.config.dtype_policy().name == 'float32'  # the scope did not leak
  assert all(v.dtype == tf.float32 for v in model.weights)
  conv = model.resnet.block_group1.block0.conv2.conv.conv
  assert conv.compute_dtype == policy.split('_')[1]
  assert model.resnet.block_group1.block0.se.expand.compute_dtype == policy.split('_')[1]
  assert model.supervised_head.compute_dtype == 'float32'
  outputs = model(tf.random.uniform([2, 32, 32, 3]), training=True)
  assert all(v.dtype == tf.float32 for v in outputs.values())
  assert np.all(np.isfinite(outputs['logits_sup'].numpy()))


def test_float32_and_bfloat16_models_agree_closely():
  images = tf.random.uniform([4, 32, 32, 3], seed=1)
  full = build_model(tiny_config(mode='finetune'), pretraining=False, num_classes=5)
  half = build_model(tiny_config(mode='finetune', precision='mixed_bfloat16'), pretraining=False, num_classes=5)
  half.set_weights(full.get_weights())
  a = full(images, training=False)['final_avg_pool'].numpy()
  b = half(images, training=False)['final_avg_pool'].numpy()
  assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
  assert np.abs(a - b).max() > 0  # it really computed in bfloat16


def test_loss_scaling_counts_a_skipped_step_and_halves_the_scale():
  var = tf.Variable([1.0, 2.0])
  opt = precision.wrap_optimizer(keras.optimizers.SGD(0.1), 'mixed_float16')
  opt.build([var])
  scale = float(opt.dynamic_scale.numpy())
  opt.apply_gradients([(tf.constant([np.inf, 1.0]), var)])
  assert int(opt.iterations.numpy()) == 1  # Keras alone would leave it at 0
  np.testing.assert_array_equal(var.numpy(), [1.0, 2.0])  # the overflowed update was skipped
  assert float(opt.dynamic_scale.numpy()) == scale / 2
  loss = precision.scale_loss(opt, tf.constant(2.0))
  opt.apply_gradients([(tf.constant([loss.numpy(), 0.0]), var)])  # a scaled gradient is unscaled before use
  np.testing.assert_allclose(var.numpy(), [1.0 - 0.1 * 2.0, 2.0])
  assert int(opt.iterations.numpy()) == 2
  assert precision.wrap_optimizer(opt.inner_optimizer, 'mixed_bfloat16') is opt.inner_optimizer


@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_pretrain_in_mixed_precision_through_the_cli(tmp_path, shapes_dir, policy):
  done = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', f'--precision={policy}',
                 '--train_steps=3', '--checkpoint_steps=3')
  assert done.returncode == 0, done.stderr[-2000:]
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r['contrast_loss']) for r in records)
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
  dtypes = reader.get_variable_to_dtype_map()
  assert all(d == tf.float32 for n, d in dtypes.items() if n.startswith('model/'))


def test_float32_checkpoints_resume_in_bfloat16_but_not_in_float16():
  recorded = json.loads(Config(precision='float32').to_json())
  assert not resume_conflicts(recorded, Config(precision='mixed_bfloat16'))
  assert [c[0] for c in resume_conflicts(recorded, Config(precision='mixed_float16'))] == ['precision']


# ---- XLA -------------------------------------------------------------------------------------------------------

def test_jit_compile_trains_like_the_uncompiled_step(tmp_path, shapes_dir):
  runs = {}
  for jit in ('false', 'true'):
    model_dir = tmp_path / jit
    done = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={model_dir}', f'--jit_compile={jit}',
                   '--train_steps=2', '--checkpoint_steps=2')
    assert done.returncode == 0, done.stderr[-2000:]
    runs[jit] = [json.loads(l) for l in open(model_dir / 'metrics.jsonl')]
  for a, b in zip(runs['false'], runs['true']):
    assert a['step'] == b['step']
    np.testing.assert_allclose(a['contrast_loss'], b['contrast_loss'], rtol=1e-3)


def test_jit_compile_with_several_replicas_is_refused_in_one_line(tmp_path, shapes_dir):
  done = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', '--jit_compile',
                 '--cpu_replicas=2', '--train_steps=1')
  assert done.returncode == 2
  assert done.stderr.strip().startswith('error: --jit_compile works on one device per run')
  assert len(done.stderr.strip().splitlines()) == 1


# ---- TPU (no TPU here: the connection's failures) --------------------------------------------------------------

@pytest.mark.parametrize('tpu, expected', [('no-such-tpu', 'cannot connect to the TPU'),
                                           ('grpc://127.0.0.1:1', 'no answer from the TPU within')])
def test_a_tpu_that_cannot_be_reached_is_one_line_within_the_timeout(tmp_path, shapes_dir, tpu, expected):
  start = time.time()
  done = run_cli(*TINY, f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', f'--tpu={tpu}', '--worker_timeout=5',
                 '--train_steps=1', timeout=120)
  assert time.time() - start < 60
  assert done.returncode == 2
  assert done.stderr.strip().startswith(f'error: --tpu={tpu}: {expected}'), done.stderr[-2000:]
  assert len(done.stderr.strip().splitlines()) == 1
