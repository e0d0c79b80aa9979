"""The distributed training loop and the pretraining mode.

`fit` is the one loop every mode shares: per-replica batches from distribute_datasets_from_function, one
tf.function step, metrics averaged over each logging window, checkpoints every N steps (resumed exactly: the
step counter is the optimizer's, and the data stream restarts at that step), summaries and a progress line.
"""

import contextlib
import dataclasses
import functools
import logging
import math
import os
import shutil
import tempfile
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

from simclr_tf import losses, monitor
from simclr_tf import checkpoints, export, files, precision, preemption, runlock
from simclr_tf.checkpoints import CheckpointKeeper
from simclr_tf.config import Config, UserError
from simclr_tf.data import inputs
from simclr_tf.distribute import check_batch_divides
from simclr_tf.evaluate import evaluate, write_result
from simclr_tf.models.simclr import build_model
from simclr_tf.optim.lars import LARS, is_bn_or_bias
from simclr_tf.optim.schedule import WarmupCosine, scaled_learning_rate

log = logging.getLogger('simclr_tf')


# ---- schedule and optimizer ------------------------------------------------------------------------------------

def steps_per_epoch(config: Config, num_examples: int) -> int:
  return max(1, num_examples // config.train_batch_size)


def total_steps(config: Config, num_examples: int) -> int:
  if config.train_steps > 0:
    return config.train_steps
  return max(1, config.train_epochs * num_examples // config.train_batch_size)


def learning_rate_schedule(config: Config, num_examples: int) -> WarmupCosine:
  peak = scaled_learning_rate(config.learning_rate, config.train_batch_size, config.learning_rate_scaling)
  warmup = int(round(config.warmup_epochs * num_examples / config.train_batch_size))
  return WarmupCosine(peak, warmup, total_steps(config, num_examples))


def is_supervised_head(variable) -> bool:
  return 'supervised_head' in variable.path


def make_optimizer(config: Config, schedule) -> keras.optimizers.Optimizer:
  """The --optimizer, loss-scaled under --precision=mixed_float16."""
  if config.optimizer == 'lars':
    # The supervised head gets its weight decay through the loss (as in the paper's code), not from LARS.
    optimizer = LARS(schedule, momentum=config.momentum, weight_decay_rate=config.weight_decay, eta=config.lars_eta,
                     exclude=lambda v: is_bn_or_bias(v) or is_supervised_head(v))
  elif config.optimizer == 'momentum':
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
  else:
    optimizer = keras.optimizers.Adam(schedule)
  return precision.wrap_optimizer(optimizer, config.precision)


def weight_decay_loss(model, config: Config) -> tf.Tensor:
  """The part of weight decay that goes through the loss: the supervised kernel under LARS, else every
  non-batch-norm variable."""
  if not config.weight_decay:
    return tf.constant(0.0)
  if config.optimizer == 'lars':
    variables = [v for v in model.trainable_variables if is_supervised_head(v) and v.name == 'kernel']
  else:
    variables = [v for v in model.trainable_variables if v.name not in ('gamma', 'beta')]
  if not variables:
    return tf.constant(0.0)
  return config.weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


# ---- multi-worker file writing ---------------------------------------------------------------------------------

def is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == 'chief':
    return True
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return resolver.task_type == 'worker' and resolver.task_id == 0 and not has_chief


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Hosts in the cluster (each with its own input pipeline); 1 without a cluster."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return 1
  spec = resolver.cluster_spec().as_dict()
  return max(1, sum(len(spec.get(job, [])) for job in ('chief', 'worker')))


def writable_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """model_dir on the chief; a private temporary directory on other workers (they must save too, TF requires)."""
  if is_chief(strategy):
    return model_dir
  resolver = strategy.cluster_resolver
  return tempfile.mkdtemp(prefix=f'simclr-{resolver.task_type}-{resolver.task_id}-')


# ---- the loop --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Task:
  """What a mode trains: the model, its optimizer, the data and the per-replica step.

  replica_step(batch) -> (loss to minimise, dict of scalar metrics); the loop scales the loss by the number of
  replicas, takes the gradients of `trainable` and applies them.
  """
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  source: inputs.Source
  view_fn: Callable
  replica_step: Callable
  metric_names: tuple
  trainable: Optional[list] = None
  extra_checkpoint: Optional[dict] = None


def checkpoint_every(config: Config, epoch_steps: int) -> int:
  if config.checkpoint_steps:
    return config.checkpoint_steps
  return max(1, config.checkpoint_epochs * epoch_steps) if config.checkpoint_epochs else 0


def write_run_config(config: Config) -> None:
  files.write_atomically(os.path.join(config.model_dir, 'config.json'), config.to_json())


def check_resume_compatible(config: Config) -> None:
  """Refuses to continue a run in model_dir whose recorded config differs in what is being trained."""
  from simclr_tf.config import resume_conflicts
  path = os.path.join(config.model_dir, 'config.json')
  if not (tf.io.gfile.exists(path) and checkpoints.latest_checkpoint(config.model_dir)):
    return
  conflicts = resume_conflicts(files.read_json(path), config)
  if conflicts:
    listed = ', '.join(f'--{k}={new} (was {old})' for k, old, new in conflicts)
    raise UserError(f'--model_dir={config.model_dir} holds a run with other settings; resuming it with {listed} '
                    f'would not continue it. Use a new --model_dir, or the recorded values.')


def error_summary(error: Exception) -> str:
  """The informative line of a TF runtime error (its first lines are 'Graph execution error:' and a node)."""
  lines = [l.strip() for l in str(getattr(error, 'message', error)).splitlines()]
  useful = [l for l in lines if l and not l.startswith(('Graph execution error', 'Detected at node', '[[', 'File ',
                                                         'Traceback')) and not l.endswith(':')]
  return (useful[-1] if useful else lines[0])[:200]


def cluster_error_reason(error: Exception) -> str:
  """Why a collective failed, from TF's message ('Collective ops is aborted by: <cause>' [+ the task named on the
  next line]), or the error's summary line."""
  lines = [l.strip() for l in str(getattr(error, 'message', error)).splitlines()]
  for i, line in enumerate(lines):
    if 'aborted by:' in line:
      reason = line.split('aborted by:', 1)[1].strip()
      if reason.endswith(':') and i + 1 < len(lines):
        reason += ' ' + lines[i + 1]
      return reason[:240]
  return error_summary(error)


def jit_compile_step(config: Config, strategy: tf.distribute.Strategy) -> bool:
  """Whether to XLA-compile the per-replica step. TPUs compile everything anyway. With several replicas on
  CPUs/GPUs TF cannot: their cross-replica calls (synchronised batch norm, the gathering of negatives) are
  merge_calls, which may not run inside a compiled function."""
  if not config.jit_compile or isinstance(strategy, tf.distribute.TPUStrategy):
    return False
  if strategy.num_replicas_in_sync > 1 or num_workers(strategy) > 1:
    raise UserError(f'--jit_compile works on one device per run (or on TPUs); this run has '
                    f'{strategy.num_replicas_in_sync} replicas, whose cross-replica batch norm and negatives TF '
                    f'cannot compile. Drop --jit_compile (or --cpu_replicas).')
  return True


def _finite_or_raise(step: int, values: dict, first_bad: int, last_good: Optional[str]) -> None:
  if first_bad >= 0 or not all(math.isfinite(v) for v in values.values()):
    at = first_bad if first_bad >= 0 else step
    raise UserError(f'training diverged: the loss became NaN or infinite at step {at}; stopped without saving. '
                    f'The last good checkpoint is {last_good or "none (none was written yet)"}. '
                    f'Lower --learning_rate or check the data.')


def make_replica_update(task: Task, trainable: list, num_replicas: int, jit: bool) -> Callable:
  """The per-replica training update: loss, gradients (XLA-compiled with `jit`), update; returns the metrics.
  The loss is divided by the number of replicas because the optimizer sums gradients across them."""

  def replica_gradients(batch):
    with tf.GradientTape() as tape:
      loss, metrics = task.replica_step(batch)
      scaled = precision.scale_loss(task.optimizer, loss / num_replicas)
    return tape.gradient(scaled, trainable), metrics

  if jit:
    # XLA compiles the forward and backward pass; the update runs outside it.
    replica_gradients = tf.function(replica_gradients, jit_compile=True)

  def replica_update(batch):
    grads, metrics = replica_gradients({k: v for k, v in batch.items() if k != 'index'})
    task.optimizer.apply_gradients(zip(grads, trainable))
    return metrics

  return replica_update


@dataclasses.dataclass
class LoopState:
  """What the training loop accumulates on the device between two visits of the host."""
  sums: Dict[str, tf.Variable]  # per metric, the sum over the steps since the last logging step
  count: tf.Variable  # steps since the last logging step
  first_bad_step: tf.Variable  # first step whose loss was not finite (-1: none)
  last_index: tf.Variable  # highest stream position consumed so far (on this worker)


def make_train_loop(strategy: tf.distribute.Strategy, task: Task, trainable: list, jit: bool):
  """(train_loop, LoopState): train_loop(iterator, num_steps) runs num_steps training steps in one tf.function
  call, a loop in the graph over the distributed iterator, with the metrics accumulated on the device (LoopState)."""
  state = LoopState(sums={name: tf.Variable(0.0, trainable=False) for name in task.metric_names},
                    count=tf.Variable(0.0, trainable=False),
                    first_bad_step=tf.Variable(-1, dtype=tf.int64, trainable=False),
                    last_index=tf.Variable(-1, dtype=tf.int64, trainable=False))
  replica_update = make_replica_update(task, trainable, strategy.num_replicas_in_sync, jit)

  def replica_train_step(batch):
    return replica_update(batch), tf.reduce_max(batch['index'])

  def train_step(iterator):
    metrics, index = strategy.run(replica_train_step, args=(next(iterator),))
    for name in task.metric_names:
      state.sums[name].assign_add(strategy.reduce(tf.distribute.ReduceOp.MEAN, metrics[name], axis=None))
    loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, metrics['loss'], axis=None)
    bad = tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), state.first_bad_step < 0)
    state.first_bad_step.assign(tf.where(bad, task.optimizer.iterations, state.first_bad_step))
    # Stream positions are per input pipeline (per worker): the maximum over this worker's replicas.
    local_max = tf.reduce_max(tf.stack(strategy.experimental_local_results(index)))
    state.last_index.assign(tf.maximum(state.last_index, local_max))
    state.count.assign_add(1.0)

  @tf.function
  def loop(iterator, num_steps):
    for _ in tf.range(num_steps):
      train_step(iterator)

  # One step is traced without the graph loop: cheaper to trace, for runs that hand back to the host every step.
  one_step = tf.function(train_step)

  def train_loop(iterator, num_steps: int):
    if num_steps == 1:
      one_step(iterator)
    else:
      loop(iterator, tf.constant(num_steps, tf.int64))

  return train_loop, state


def next_boundary(step: int, steps: int, config: Config, save_every: int) -> int:
  """The first step after `step` at which the loop must hand back to the host: a logging step, a checkpoint step,
  the end, or --steps_per_loop steps on."""
  candidates = [steps, step + config.steps_per_loop, (step // config.log_every_steps + 1) * config.log_every_steps]
  if save_every:
    candidates.append((step // save_every + 1) * save_every)
  return min(candidates)


def uses_preemption_handler(strategy: tf.distribute.Strategy) -> bool:
  """Clusters (multi-worker, TPU) stop through TF's PreemptionCheckpointHandler, which agrees on one step for all
  workers; a single host catches the signals itself (preemption.StopRequests)."""
  return num_workers(strategy) > 1 or isinstance(strategy, tf.distribute.TPUStrategy)


def holds_model_dir(mode: Callable) -> Callable:
  """A training mode that holds model_dir/run.lock (on the chief) from before its first write to after its last:
  one run per model_dir."""

  @functools.wraps(mode)
  def locked(config: Config, strategy: tf.distribute.Strategy):
    with runlock.held(config.model_dir, enabled=is_chief(strategy)):
      return mode(config, strategy)

  return locked


def fit(config: Config, strategy: tf.distribute.Strategy, task: Task) -> int:
  """Trains `task` to the configured number of steps, resuming from model_dir. Returns the final step."""
  per_replica_batch = check_batch_divides(config.train_batch_size, strategy, 'train_batch_size')
  jit = jit_compile_step(config, strategy)
  steps = total_steps(config, task.source.num_examples)
  epoch_steps = steps_per_epoch(config, task.source.num_examples)
  chief = is_chief(strategy)
  out_dir = writable_dir(config.model_dir, strategy)
  check_resume_compatible(config)
  if chief:
    write_run_config(config)

  with strategy.scope():
    trainable = task.trainable if task.trainable is not None else task.model.trainable_variables
    task.optimizer.build(trainable)
  keeper = CheckpointKeeper(out_dir, config.keep_checkpoint_max, model=task.model, optimizer=task.optimizer,
                            **(task.extra_checkpoint or {}))
  if chief:
    restored = keeper.restore_latest()
  else:  # other workers restore the chief's checkpoint so that all start from the same state
    restored = CheckpointKeeper(config.model_dir, config.keep_checkpoint_max, model=task.model,
                                optimizer=task.optimizer, **(task.extra_checkpoint or {})).restore_latest()
  start = int(task.optimizer.iterations.numpy())
  if restored:
    log.info('resuming from %s at step %d', restored, start)
  if start >= steps:
    log.info('already trained to step %d of %d', start, steps)
    return start

  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: inputs.train_dataset(task.source, config, task.view_fn, per_replica_batch, ctx, start_step=start))
  iterator = iter(dataset)
  num_replicas = strategy.num_replicas_in_sync
  train_loop, state = make_train_loop(strategy, task, trainable, jit)
  sums, count, first_bad_step, last_index = state.sums, state.count, state.first_bad_step, state.last_index

  @tf.function
  def weights_finite():
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in trainable])

  def skipped_images(step):
    """Unreadable images skipped so far in this process: gaps in the consumed stream positions."""
    pipelines = num_workers(strategy)
    consumed = (step - start) * config.train_batch_size // pipelines
    first = start * config.train_batch_size // pipelines
    return max(0, int(last_index.numpy()) + 1 - first - consumed)

  def save(step):
    # The loss of step k comes before its update: check the weights too, so no checkpoint holds a NaN.
    _finite_or_raise(step, {}, int(first_bad_step.numpy()) if bool(weights_finite()) else step, keeper.latest)
    return keeper.save(step)

  save_every = checkpoint_every(config, epoch_steps)
  progress = monitor.Monitor(out_dir, steps, config.train_batch_size, start, write=chief, prefix=config.mode)
  log.info('%s: %d steps (%d per epoch) at global batch %d on %d replica(s), %s',
           config.mode, steps, epoch_steps, config.train_batch_size, num_replicas, task.source.name)
  handler = None
  if uses_preemption_handler(strategy):
    handler = preemption.cluster_handler(
        strategy, keeper.manager,
        lambda: (f'stopped by a preemption notice at step {int(task.optimizer.iterations.numpy())} of {steps}, '
                 f'with a checkpoint of that step in {config.model_dir}. Restart every worker with the same command '
                 f'to resume.'))
  step = start
  reported_skips = 0
  with preemption.StopRequests() if handler is None else contextlib.nullcontext() as stop:
    while step < steps:
      boundary = next_boundary(step, steps, config, save_every)
      try:
        if handler is None:
          train_loop(iterator, boundary - step)
        else:  # saves (at this loop's start, on every worker) and stops if any worker was told to stop
          handler.run(train_loop, iterator, boundary - step)
      except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
              tf.errors.CancelledError) as e:
        if num_workers(strategy) == 1:
          raise
        raise UserError(f'another worker of the cluster stopped or stopped answering before step {boundary} '
                        f'({cluster_error_reason(e)}); restart every worker with the same command to resume from '
                        f'the last checkpoint ({keeper.latest or "none yet"}), or raise --worker_timeout if '
                        f'workers are slow.') from None
      except tf.errors.InvalidArgumentError as e:
        if config.strict_data:
          raise UserError(f'an image in {task.source.name} ({config.train_split}) cannot be read '
                          f'({error_summary(e)}); remove it, or run without --strict_data to skip unreadable '
                          f'images.') from None
        raise
      step = boundary
      if int(first_bad_step.numpy()) >= 0:
        _finite_or_raise(step, {}, int(first_bad_step.numpy()), keeper.latest)
      if step % config.log_every_steps == 0 or step == steps:
        n = max(count.numpy(), 1.0)
        values = {name: float(sums[name].numpy() / n) for name in task.metric_names}
        values['learning_rate'] = float(task.optimizer.learning_rate.numpy()) if hasattr(
            task.optimizer.learning_rate, 'numpy') else float(task.optimizer.learning_rate)
        for v in list(sums.values()) + [count]:
          v.assign(0.0)
        _finite_or_raise(step, values, int(first_bad_step.numpy()), keeper.latest)
        skipped = skipped_images(step)
        if skipped:
          values['skipped_images'] = float(skipped)
          if skipped > reported_skips:
            log.warning('skipped %d unreadable image(s) so far (use --strict_data to stop at the first)', skipped)
            reported_skips = skipped
        progress.report(step, values)
      if (save_every and step % save_every == 0) or step == steps:
        save(step)
      runlock.heartbeat()
      if handler is None and stop.requested and step < steps:
        path = keeper.latest if keeper.latest and keeper.latest.endswith(f'-{step}') else save(step)
        raise preemption.Interrupted(
            f'stopped by {stop.name} at step {step} of {steps}; saved {path}. Rerun the same command to resume.',
            stop.requested)
  if chief:
    monitor.plot_curves(config.model_dir)
  if num_workers(strategy) > 1:
    resolver = strategy.cluster_resolver
    log.info('%s %d: finished at step %d with weights fingerprint %s', resolver.task_type, resolver.task_id, step,
             checkpoints.weights_fingerprint(task.model.weights))
    if not chief:  # its checkpoints only had to be written; the chief's are the run's
      shutil.rmtree(out_dir, ignore_errors=True)
  return step


# ---- pretraining -----------------------------------------------------------------------------------------------

def contrastive_replica_step(model, config: Config, num_classes: int):
  """(replica_step, metric names) of pretraining: NT-Xent of the two views (stacked along channels in
  batch['image']) + weight decay, plus the linear head's cross-entropy on a stop-gradient when num_classes > 0."""

  def replica_step(batch):
    images = tf.concat(tf.split(batch['image'], 2, axis=-1), axis=0)
    outputs = model(images, training=True)
    z1, z2 = tf.split(outputs['proj_head_output'], 2, axis=0)
    con_loss, logits_ab, labels = losses.nt_xent(z1, z2, config.temperature, config.hidden_norm)
    accuracy, entropy = losses.contrastive_metrics(logits_ab, labels)
    loss = con_loss + weight_decay_loss(model, config)
    metrics = {'loss': loss, 'contrast_loss': con_loss, 'contrast_acc': accuracy, 'contrast_entropy': entropy}
    if num_classes:
      sup_labels = tf.concat([batch['label'], batch['label']], axis=0)
      sup_loss = losses.supervised_loss(sup_labels, outputs['logits_sup'])
      loss += sup_loss
      metrics['sup_loss'] = sup_loss
      metrics['sup_acc'] = tf.reduce_mean(tf.cast(
          tf.equal(tf.argmax(outputs['logits_sup'], -1), tf.cast(sup_labels, tf.int64)), tf.float32))
    metrics['loss'] = loss
    return loss, metrics

  names = ('loss', 'contrast_loss', 'contrast_acc', 'contrast_entropy') + (('sup_loss', 'sup_acc') if num_classes
                                                                          else ())
  return replica_step, names


@holds_model_dir
def pretrain(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  """Contrastive pretraining (NT-Xent across replicas, LARS), with linear evaluation while pretraining."""
  source = inputs.make_source(config, config.train_split)
  num_classes = 0
  if config.lineareval_while_pretraining:
    if source.labeled:
      num_classes = config.num_classes or source.num_classes
    else:
      log.info('%s has no labels: linear evaluation while pretraining is off', source.name)
  with strategy.scope():
    model = build_model(config, num_classes=num_classes)
    optimizer = make_optimizer(config, learning_rate_schedule(config, source.num_examples))

  replica_step, names = contrastive_replica_step(model, config, num_classes)
  task = Task(model, optimizer, source, inputs.pretrain_view_fn(config), replica_step, names)
  step = fit(config, strategy, task)
  export_at_end(config, strategy, model)
  result = evaluate_and_record(config, strategy, model, step) if num_classes else None
  return result or {'step': step}


# ---- fine-tuning -----------------------------------------------------------------------------------------------

def labelled_train_source(config: Config, strategy) -> inputs.Source:
  """The training split, reduced to --label_fraction (ids written to model_dir/label_subset.json)."""
  source = inputs.make_source(config, config.train_split)
  if not source.labeled:
    raise UserError(f'--mode={config.mode} needs labels, and split {config.train_split!r} of {source.name} has '
                    f'none (use ROOT/<split>/<class>/*.jpg).')
  if config.label_fraction < 1:
    source, description = inputs.label_fraction_source(source, config.label_fraction, config.seed)
    if is_chief(strategy):
      files.write_json(os.path.join(config.model_dir, 'label_subset.json'), description)
    log.info('label fraction %g: %d examples (%s per class)', config.label_fraction, source.num_examples,
             description['per_class'])
  return source


def initialise_from_checkpoint(config: Config, model, without_checkpoint: str) -> None:
  """Loads the encoder and the projection-head layers the model has (up to --ft_proj_selector) from
  --checkpoint; the checkpoint's other layers and its supervised head are ignored. Nothing happens when model_dir
  already has a checkpoint (fit resumes from it); without --checkpoint, logs `without_checkpoint`."""
  if checkpoints.latest_checkpoint(config.model_dir):
    return
  if not config.checkpoint:
    log.info('no --checkpoint: %s', without_checkpoint)
    return
  count, layout = export.restore(model, model.resnet.weights + model.projection_head.weights, config.checkpoint)
  log.info('initialised %d encoder and projection-head variables from %s (%s)', count, config.checkpoint, layout)


def supervised_replica_step(model, config: Config):
  def replica_step(batch):
    outputs = model(batch['image'], training=True)
    sup_loss = losses.supervised_loss(batch['label'], outputs['logits_sup'])
    loss = sup_loss + weight_decay_loss(model, config)
    accuracy = tf.reduce_mean(tf.cast(
        tf.equal(tf.argmax(outputs['logits_sup'], -1), tf.cast(batch['label'], tf.int64)), tf.float32))
    return loss, {'loss': loss, 'sup_loss': sup_loss, 'sup_acc': accuracy}
  return replica_step


def export_at_end(config: Config, strategy, model) -> Optional[str]:
  """Writes the trained model as a SavedModel (model_dir/saved_model unless --export_dir) on the chief."""
  if not (config.export_at_end and is_chief(strategy)):
    return None
  path = config.export_dir or os.path.join(config.model_dir, 'saved_model')
  export.export_saved_model(model, path, config.to_json())
  log.info('exported SavedModel to %s', path)
  return path


def export_checkpoint(config: Config, strategy) -> Dict[str, str]:
  """--mode=export: a checkpoint or SavedModel of any supported layout -> this project's SavedModel."""
  model, weights = load_model(config, config.checkpoint, strategy)
  path = config.export_dir or os.path.join(config.model_dir, 'saved_model')
  export.export_saved_model(model, path, config.to_json())
  log.info('exported %s (%s) to %s', config.checkpoint, weights.layout, path)
  return {'export_dir': path, 'source_layout': weights.layout}


def evaluate_and_record(config: Config, strategy, model, step: int, teacher_model=None, **extra) -> Optional[dict]:
  """Evaluates on --eval_split (if set) and writes model_dir/eval_<split>.json on the chief. With a teacher, the
  result also holds the teacher's accuracy and the student's top-1 agreement with it."""
  if not config.eval_split:
    return None
  result = evaluate(model, inputs.make_source(config, config.eval_split), config, strategy, teacher_model)
  result.update(split=config.eval_split, step=step, mode=config.mode, **extra)
  log.info('eval on %s: top1 %.4f  top5 %.4f  loss %.4f  (%d examples)', config.eval_split, result['top1'],
           result['top5'], result['loss'], result['num_examples'])
  if is_chief(strategy):
    write_result(config.model_dir, config.eval_split, result)
  return result


@holds_model_dir
def finetune(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  """Supervised fine-tuning from the projection head's layer --ft_proj_selector of a pretrained model (or from
  random weights without --checkpoint: the supervised baseline)."""
  source = labelled_train_source(config, strategy)
  num_classes = config.num_classes or source.num_classes
  with strategy.scope():
    model = build_model(config, num_classes=num_classes)
    optimizer = make_optimizer(config, learning_rate_schedule(config, source.num_examples))
  initialise_from_checkpoint(config, model, 'fine-tuning starts from random weights (the supervised baseline)')
  if config.fine_tune_after_block >= 0:
    log.info('frozen: stem%s (weights and batch-norm statistics)',
             f' and block groups 1..{config.fine_tune_after_block}' if config.fine_tune_after_block else '')
  task = Task(model, optimizer, source, inputs.finetune_view_fn(config), supervised_replica_step(model, config),
              ('loss', 'sup_loss', 'sup_acc'))
  step = fit(config, strategy, task)
  export_at_end(config, strategy, model)
  result = evaluate_and_record(config, strategy, model, step, initialised_from=config.checkpoint or 'random')
  return result or {'step': step}


# ---- evaluation of a checkpoint --------------------------------------------------------------------------------

def load_model(config: Config, path: str, strategy, flag: str = 'checkpoint'):
  """A model with every variable of `path` (a checkpoint or SavedModel of this project, or of the paper's
  reference code): its projection-head depth and number of classes are read from the file, the rest of the
  architecture from `config`. Returns (model, the file's description)."""
  weights = export.WeightFile(path, flag)
  num_classes, proj_layers = export.describe_head(weights)
  with strategy.scope():
    model = build_model(config.replace(mode='eval'), num_classes=num_classes, proj_keep_layers=proj_layers)
  export.restore(model, model.weights, path, flag)
  return model, weights


def evaluate_checkpoint(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  """--mode=eval: top-1/top-5/loss of a checkpoint's supervised head on --eval_split (default: test)."""
  config = config.replace(eval_split=config.eval_split or 'test',
                          model_dir=config.model_dir or checkpoints.directory_of(config.checkpoint))
  model, weights = load_model(config, config.checkpoint, strategy)
  if model.supervised_head is None:
    raise UserError(f'{config.checkpoint} has no supervised head to evaluate (pretrain with labels and '
                    f'--lineareval_while_pretraining, or fine-tune it first).')
  return evaluate_and_record(config, strategy, model, checkpoints.checkpoint_step(weights.prefix),
                             checkpoint=weights.prefix)


# ---- distillation ----------------------------------------------------------------------------------------------

ARCHITECTURE_FIELDS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio', 'num_proj_layers',
                       'proj_out_dim', 'ft_proj_selector', 'image_size', 'global_bn', 'batch_norm_decay')


def load_teacher(config: Config, strategy):
  """The teacher of --teacher, frozen. Its architecture comes from the config.json its run wrote (a model_dir of
  ours, or a SavedModel we exported); a file of the paper's reference code has none and is read from its
  variables (export.reference_architecture)."""
  path = config.teacher
  directory = checkpoints.directory_of(path)
  config_path = os.path.join(directory, 'config.json')
  if tf.io.gfile.exists(config_path):
    recorded = files.read_json(config_path)
    architecture = {k: recorded[k] for k in ARCHITECTURE_FIELDS if k in recorded}
  else:
    weights = export.WeightFile(path, 'teacher')
    if weights.layout not in (export.REFERENCE_CHECKPOINT, export.REFERENCE_SAVEDMODEL):
      raise UserError(f'--teacher={path}: no config.json in {directory or "."} to tell the teacher\'s architecture '
                      f'(give the model_dir of a finetune run, or a SavedModel this project exported).')
    architecture = export.reference_architecture(weights, config.ft_proj_selector)
    log.info('teacher %s (%s): %s', path, weights.layout, ', '.join(f'{k}={v}' for k, v in architecture.items()))
  teacher_config = config.replace(**architecture)
  teacher, weights = load_model(teacher_config, path, strategy, flag='teacher')
  if teacher.supervised_head is None:
    raise UserError(f'--teacher={path} has no supervised head: distil from a fine-tuned model.')
  teacher.trainable = False
  return teacher, weights.prefix


@holds_model_dir
def distill(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  """Trains a student on the teacher's soft labels over (unlabeled) training images; crop+flip augmentation.
  Loss: T^2 * CE(softmax(teacher/T), student/T) [+ alpha * CE(labels) with --distill_label_weight]."""
  source = inputs.make_source(config, config.train_split)
  alpha = config.distill_label_weight
  if alpha > 0 and not source.labeled:
    raise UserError(f'--distill_label_weight={alpha} needs labels, and split {config.train_split!r} of '
                    f'{source.name} has none; use --distill_label_weight=0 for unlabeled data.')
  teacher, teacher_prefix = load_teacher(config, strategy)
  num_classes = int(teacher.supervised_head.dense.kernel.shape[-1])
  with strategy.scope():
    student = build_model(config, num_classes=num_classes)
    optimizer = make_optimizer(config, learning_rate_schedule(config, source.num_examples))
  initialise_from_checkpoint(config, student, 'the student starts from random weights')
  log.info('distilling %s (teacher) into ResNet-%d %gx at T=%g%s', teacher_prefix, config.resnet_depth,
           config.width_multiplier, config.distill_temperature, f', label weight {alpha}' if alpha else '')
  temperature = config.distill_temperature

  def replica_step(batch):
    teacher_logits = tf.stop_gradient(teacher(batch['image'], training=False)['logits_sup'])
    logits = student(batch['image'], training=True)['logits_sup']
    distill_loss = losses.distillation_loss(teacher_logits, logits, temperature)
    loss = distill_loss + weight_decay_loss(student, config)
    agreement = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(teacher_logits, -1)), tf.float32))
    metrics = {'distill_loss': distill_loss, 'teacher_agreement': agreement}
    if alpha > 0:
      sup_loss = losses.supervised_loss(batch['label'], logits)
      loss += alpha * sup_loss
      metrics['sup_loss'] = sup_loss
    metrics['loss'] = loss
    return loss, metrics

  names = ('loss', 'distill_loss', 'teacher_agreement') + (('sup_loss',) if alpha > 0 else ())
  task = Task(student, optimizer, source, inputs.finetune_view_fn(config), replica_step, names)
  step = fit(config, strategy, task)
  export_at_end(config, strategy, student)
  result = evaluate_and_record(config, strategy, student, step, teacher=teacher_prefix, teacher_model=teacher)
  return result or {'step': step}
