"""--mode=eval of a run's model_dir: every checkpoint in step order, beside a training process, with its results kept
by step and in TensorBoard; and what training writes to TensorBoard (weight decay, the total loss, weights)."""

import json
import os
import subprocess
import time

import numpy as np
import pytest

from conftest import run_cli, start_run_py, tensorboard_events, tiny_config, tiny_flags
from simclr_tf.modes import evaluate

FINETUNE = ['--mode=finetune', '--dataset=image_folder', '--train_steps=6', '--checkpoint_steps=1',
            '--keep_checkpoint_max=2', '--weight_decay=0.01', '--optimizer=momentum', '--log_every_steps=1']


def start(*args):
  return start_run_py(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_evaluator_beside_a_training_run(tmp_path, shapes_dir, monkeypatch, simclr_log):
  """An evaluator started before its training run waits for the first checkpoint, evaluates the checkpoints as
  they come (those the keeper removed first are skipped), never blocks the run, and stops at the run's final step;
  each result is kept by step and drawn in TensorBoard at its step. A second evaluator has nothing left to do; a
  third, into another folder, skips with one line a checkpoint removed between its listing and its reading."""
  run = tmp_path / 'run'
  data = [f'--data_dir={shapes_dir}', '--eval_batch_size=8']
  evaluator = start('--mode=eval', f'--checkpoint={run}', '--eval_wait_secs=240', '--eval_poll_secs=1',
                    '--dataset=image_folder', *data)
  time.sleep(1)
  trainer = start(*tiny_flags(), *FINETUNE, *data, f'--model_dir={run}')
  trained_out, trained_err = trainer.communicate(timeout=600)
  assert trainer.returncode == 0, trained_err[-3000:]
  out, err = evaluator.communicate(timeout=600)
  assert evaluator.returncode == 0, err[-3000:]
  assert 'waiting for the first checkpoint' in out and "evaluated the run's final step, 6" in out, out[-3000:]
  assert 'run.lock' not in out + trained_out  # the evaluator took no lock, and the run was never refused

  results = {int(n[len('result_'):-len('.json')]): json.loads((run / 'eval_test' / n).read_text())
             for n in os.listdir(run / 'eval_test') if n.startswith('result_')}
  evaluated = [int(line.split('(step ')[1].rstrip(')')) for line in out.splitlines() if 'evaluating ' in line]
  skipped = [line for line in out.splitlines() if 'skipped ckpt-' in line]
  assert evaluated == sorted(evaluated) and evaluated[-1] == 6 and set(evaluated) <= set(results), out[-3000:]
  assert len(evaluated) + len(skipped) <= 6
  assert all(results[s]['mode'] == 'eval' and results[s]['step'] == s and results[s]['num_examples'] == 40
             for s in evaluated)
  latest = json.loads((run / 'eval_test.json').read_text())
  assert latest['step'] == 6 and latest['mode'] == 'eval'
  curve = tensorboard_events(run / 'eval_test')
  assert sorted(curve['top1']) == [(s, results[s]['top1']) for s in evaluated]

  # Nothing new: a second evaluator says so and changes nothing.
  before = sorted(os.listdir(run / 'eval_test'))
  proc = run_cli('--mode=eval', f'--checkpoint={run}', '--dataset=image_folder', *data)
  assert proc.returncode == 0 and 'is evaluated on test already' in proc.stdout, proc.stderr[-2000:]
  assert sorted(os.listdir(run / 'eval_test')) == before

  listed = evaluate.complete_checkpoints(str(run))
  assert [n for n, _ in listed] == [5, 6]  # --keep_checkpoint_max=2

  def listed_then_removed(directory):
    for name in os.listdir(run):
      if name.startswith('ckpt-5.'):
        os.remove(run / name)
    return listed

  monkeypatch.setattr(evaluate, 'complete_checkpoints', listed_then_removed)
  # As if the run had died before its final step: waiting ends after --eval_wait_secs without a new checkpoint.
  recorded = json.loads((run / 'config.json').read_text())
  assert recorded['total_steps'] == 6
  (run / 'config.json').write_text(json.dumps(dict(recorded, total_steps=8)))
  import run as run_py
  started = time.time()
  result = run_py.run(tiny_config(mode='eval', dataset='image_folder', data_dir=shapes_dir, checkpoint=str(run),
                                  model_dir=str(tmp_path / 'again'), eval_wait_secs=3, eval_poll_secs=1))
  assert time.time() - started >= 3
  assert result['evaluated'] == [6] and result['step'] == 6 and result['top1'] == latest['top1']
  assert any('skipped ckpt-5: removed' in m for m in simclr_log), simclr_log
  assert any('no new checkpoint in' in m and 'for --eval_wait_secs=3 seconds: stopping' in m for m in simclr_log)
  assert [n for n in os.listdir(tmp_path / 'again' / 'eval_test') if n.endswith('.json')] == ['result_6.json']

  # TensorBoard of the training run: the weight-decay term, the total loss it is part of, the weights at each
  # checkpoint.
  trained = tensorboard_events(run / 'finetune')
  steps = [s for s, _ in trained['loss']]
  assert steps == list(range(1, 7))
  for (_, total), (_, sup), (_, decay) in zip(trained['loss'], trained['sup_loss'], trained['weight_decay']):
    assert decay.expected > 0 and total.expected == pytest.approx(sup.expected + decay.expected, rel=1e-5)
  kernels = [tag for tag in trained if tag.startswith('weights/') and tag.endswith('kernel')]
  assert kernels and all([s for s, _ in trained[tag]] == steps for tag in kernels)
  assert all(np.sum(buckets[:, 2]) > 0 for tag in kernels for _, buckets in trained[tag])
