"""--mode=eval: top-1/top-5/loss of a model's supervised head on --eval_split (default: test), written to
eval_<split>.json in --model_dir (default: the checkpoint's directory), with TensorBoard scalars at the model's step
and the result of each step kept in eval_<split>/result_<step>.json (simclr_tf.evaluation.write_result).

--checkpoint names either one model (a checkpoint prefix such as RUN/ckpt-100, a SavedModel, a reference run's
exported module), which is evaluated, or a run's model_dir holding numbered checkpoints: then every checkpoint not
yet evaluated on this split of this data is, in step order, a line each (the reference's evaluator, which runs beside
training). With --eval_wait_secs it keeps evaluating the checkpoints that appear while another process trains, until
the run's final step (its record's total_steps) is evaluated or none came for that long. It takes no lock and
writes nothing in the run but its results; a checkpoint the training run's keeper removes before it is read is
skipped with one line.
"""

import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from simclr_tf import record, weights
from simclr_tf.config import Config
from simclr_tf.errors import UserError
from simclr_tf.evaluation import read_result, result_paths
from simclr_tf.modes import common
from simclr_tf.runtime import checkpoints, files
from simclr_tf.weights.file import is_saved_model, saved_model_in

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.require(config.checkpoint, f'--mode={config.mode} needs --checkpoint.')
  common.require_data(config)


def is_run(path: str) -> bool:
  """Whether --checkpoint names a run's model_dir (a folder with numbered checkpoints), not one model."""
  return not tf.io.gfile.exists(path + '.index') and tf.io.gfile.isdir(path) and bool(complete_checkpoints(path))


def complete_checkpoints(directory: str) -> List[Tuple[int, str]]:
  """[(N, prefix)] of the numbered checkpoints of `directory` that are written whole, by N: those of the name of
  its latest checkpoint (ckpt-N, or the reference's model.ckpt-N), up to the latest the `checkpoint` state file
  names when there is one (a later one is still being written: TF updates that file after the save)."""
  try:
    latest = checkpoints.latest_checkpoint(directory)
  except tf.errors.OpError:
    return []
  if not latest:
    return []
  name, _, number = os.path.basename(latest).rpartition('-')
  if not number.isdigit():
    return []
  try:
    found = checkpoints.numbered_checkpoints(directory, name)
  except tf.errors.NotFoundError:  # the folder went away
    return []
  return [(n, prefix) for n, prefix in found if n <= int(number)]


def wait(config: Config) -> None:
  """Before the record of --checkpoint is read: with --eval_wait_secs, a run folder that has no checkpoint yet (its
  training started at the same moment, or not yet) is waited for, up to that long."""
  path = config.checkpoint
  if not (config.eval_wait_secs and path) or is_saved_model(path) or \
      tf.io.gfile.exists(path + '.index') or saved_model_in(path):
    return
  deadline = time.time() + config.eval_wait_secs
  if complete_checkpoints(path):
    return
  log.info('waiting for the first checkpoint in %s (up to %ds)', path, config.eval_wait_secs)
  while not complete_checkpoints(path):
    if time.time() >= deadline:
      raise UserError(f'--checkpoint={path}: no checkpoint appeared there in --eval_wait_secs='
                      f'{config.eval_wait_secs} seconds; start the training run, or check the path.')
    time.sleep(min(config.eval_poll_secs, max(deadline - time.time(), 0.0)))


def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  config = config.replace(eval_split=config.eval_split or 'test', model_dir=common.results_dir(config))
  if is_run(config.checkpoint):
    return evaluate_run(config, strategy)
  model, found = load(config, strategy, config.checkpoint)
  return common.evaluate_and_record(config, strategy, model, checkpoints.checkpoint_step(found.prefix),
                                    checkpoint=found.prefix)


def load(config: Config, strategy, path: str):
  model, found = weights.load_model(config, path, strategy, adopt=False)  # adopted: modes.prepare
  if model.supervised_head is None:
    raise UserError(f'{path} has no supervised head to evaluate (pretrain with labels and '
                    f'--lineareval_while_pretraining, or fine-tune it first).')
  return model, found


def kept_results(config: Config) -> dict:
  """{checkpoint prefix: its result} of the results an evaluator kept in model_dir on this split of this data (and
  --eval_steps), of any run (a results folder may serve several)."""
  _, folder = result_paths(config.model_dir, config.eval_name or config.eval_split)
  if not tf.io.gfile.isdir(folder):
    return {}
  same = dict(mode='eval', split=config.eval_split, data=data_of(config), eval_steps=config.eval_steps)
  kept = {}
  for name in tf.io.gfile.listdir(folder):
    if name.startswith('result_') and name.endswith('.json') and name[len('result_'):-len('.json')].isdigit():
      found = read_result(os.path.join(folder, name))
      if found and all(found.get(k) == v for k, v in same.items()) and isinstance(found.get('checkpoint'), str):
        kept[found['checkpoint']] = found
  return kept


def data_of(config: Config) -> str:
  return f'{config.dataset}:{config.data_dir}' if config.data_dir else config.dataset


def final_step(run_dir: str, prefix: Optional[str]) -> Optional[int]:
  """The step the run trains to, as its newest record says (config.json, rewritten by each restart of the run,
  else the checkpoint's own); None when unrecorded."""
  try:
    found = record.total_steps(record.read(os.path.join(run_dir, 'config.json')))
    if found is None and prefix:
      found = record.total_steps(record.of_checkpoint(prefix))
  except UserError:
    return None
  return found


def evaluate_run(config: Config, strategy) -> Dict[str, float]:
  """Evaluates every checkpoint of the run in --checkpoint not evaluated yet, in step order; with --eval_wait_secs,
  those that appear later too. Returns the result of the last one evaluated (or, with nothing new, the kept result
  of the run's latest checkpoint), with 'evaluated': the checkpoint numbers evaluated by this call."""
  run_dir = config.checkpoint
  _, folder = result_paths(config.model_dir, config.eval_name or config.eval_split)
  files.remove_leftovers(folder)  # result files of an evaluator killed while writing them
  kept = kept_results(config)
  done = set()  # checkpoint numbers evaluated, kept from before, or gone
  model, evaluated, last, newest, latest_kept = None, [], None, None, None
  last_new = time.time()
  while True:
    for number, prefix in complete_checkpoints(run_dir):
      if number in done:
        continue
      if prefix in kept:
        done.add(number)
        latest_kept = kept[prefix]
        continue
      try:
        if model is None:
          model, _ = load(config, strategy, prefix)
        else:
          weights.restore(model, model.weights, prefix, allow_partial=config.partial_checkpoint)
        step = checkpoints.checkpoint_step(prefix)
      except (UserError, tf.errors.OpError):
        if tf.io.gfile.exists(prefix + '.index'):
          raise
        log.info('skipped %s: removed (by the training run\'s --keep_checkpoint_max) before it was read',
                 os.path.basename(prefix))
        done.add(number)
        continue
      step = step if step >= 0 else number
      log.info('evaluating %s (step %d)', prefix, step)
      last = common.evaluate_and_record(config, strategy, model, step, keep_later=True, checkpoint=prefix,
                                        checkpoint_number=number, data=data_of(config), eval_steps=config.eval_steps)
      done.add(number)
      evaluated.append(number)
      newest, last_new = prefix, time.time()
    if not config.eval_wait_secs:
      break
    total = final_step(run_dir, newest)
    if total is not None and done and max(done) >= total:
      log.info('evaluated the run\'s final step, %d', total)
      break
    if time.time() - last_new >= config.eval_wait_secs:
      log.info('no new checkpoint in %s for --eval_wait_secs=%d seconds: stopping', run_dir, config.eval_wait_secs)
      break
    time.sleep(min(config.eval_poll_secs, max(config.eval_wait_secs - (time.time() - last_new), 0.0)))
  if not evaluated:
    last = latest_kept or {}
    top1 = last.get('top1')
    log.info('every checkpoint of %s is evaluated on %s already (results in %s); the latest: step %s, top1 %s',
             run_dir, config.eval_split, folder, last.get('step', '?'),
             f'{top1:.4f}' if isinstance(top1, float) else '?')
  return dict(last, evaluated=evaluated)
