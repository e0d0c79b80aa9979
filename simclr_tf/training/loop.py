"""The distributed training loop every training mode shares.

A mode describes what it trains as a `Task` (model, optimizer, data, the per-replica step, and hooks for state that
changes after the update: an EMA copy of the network, a queue of negatives); `fit` trains it:

  TrainingRun(config, strategy, task)
    .restore()   the latest readable checkpoint of model_dir (model, optimizer, step, the task's extra state)
    .run()       loops of --steps_per_loop steps in one tf.function call each (make_train_loop), metrics averaged
                 over each logging window on the device, checkpoints every N steps, summaries, a progress line,
                 SIGTERM/Ctrl-C -> checkpoint and stop; resumed exactly (the step counter is the optimizer's, and
                 the data stream restarts at that step); Measurements (e.g. a kNN monitor) every N steps, logged
                 with the metrics, which must leave the training state alone
    .close()     removes a non-chief worker's private checkpoint folder, however the run ended
"""

import contextlib
import dataclasses
import logging
import math
import os
import shutil
from typing import Callable, Dict, List, Optional

import keras
import tensorflow as tf

from simclr_tf import precision, record
from simclr_tf.config import Config, resume_conflicts
from simclr_tf.data import inputs
from simclr_tf.data.views import Views
from simclr_tf.errors import Interrupted, UserError, tf_error_summary
from simclr_tf.optim.build import Period, epoch_period, total_steps
from simclr_tf.runtime import checkpoints, distribute, files, monitor, preemption, runlock

log = logging.getLogger('simclr_tf')


@dataclasses.dataclass
class Task:
  """What a mode trains.

  views: how examples are made and batches finished (simclr_tf.data.views; the loop finishes a batch at the start of
  the step when the augmentation runs on the device). replica_step(batch) -> (loss to minimise, {metric name: scalar})
  or (loss, metrics, carry). The loop scales the loss by the number of replicas, takes the gradients of `trainable`
  (default: the model's trainable variables), applies them, then calls after_update(carry) in the same replica context
  (carry: whatever the step handed on, e.g. the keys the memory enqueues; None when the step returns two values).
  The metrics must include 'loss'; their names are those of the dict. `extra_checkpoint` names more objects
  (variables, layers, models) that change during training and must be saved and restored with the model and
  optimizer. `first_batch(batch)`, when given, is called on the chief of a run that starts from step 0 with the
  first per-replica batch of the run's own input pipeline (from an iterator of its own: the run's stream is
  untouched), e.g. to picture what the model is trained on.
  """
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  source: Optional[inputs.Source]
  views: Optional[Views]
  replica_step: Callable
  trainable: Optional[list] = None
  after_update: Optional[Callable] = None
  extra_checkpoint: Dict[str, object] = dataclasses.field(default_factory=dict)
  first_batch: Optional[Callable] = None

  def trainable_variables(self) -> list:
    return self.trainable if self.trainable is not None else self.model.trainable_variables


def make_replica_update(task: Task, num_replicas: int, jit: bool = False) -> Callable:
  """The per-replica training update: loss, gradients (XLA-compiled with `jit`), update, after_update; returns
  the metrics. The loss is divided by the number of replicas because the optimizer sums gradients across them."""
  trainable = task.trainable_variables()

  def replica_gradients(batch):
    if task.views is not None:
      batch = task.views.in_step(batch)  # --augment_on=device: the augmentation is part of the step
    with tf.GradientTape() as tape:
      loss, metrics, *carry = task.replica_step(batch)
      scaled = precision.scale_loss(task.optimizer, loss / num_replicas)
    return tape.gradient(scaled, trainable), metrics, (carry[0] if carry else None)

  if jit:
    # XLA compiles the forward and backward pass; the update runs outside it.
    replica_gradients = tf.function(replica_gradients, jit_compile=True, autograph=False)

  def replica_update(batch):
    grads, metrics, carry = replica_gradients({k: v for k, v in batch.items() if k != 'index'})
    task.optimizer.apply_gradients(zip(grads, trainable))
    if task.after_update is not None:
      task.after_update(carry)
    return metrics

  return replica_update


@dataclasses.dataclass
class Measurement:
  """Something measured at each step of `every` (a Period, e.g. every 10 epochs) and at a run's last step (e.g.
  kNN accuracy), logged with the metrics of that step. measure() -> {name: value} must not change the training
  state (inference mode only)."""
  every: Period
  measure: Callable[[], Dict[str, float]]
  last: Dict[str, float] = dataclasses.field(default_factory=dict)  # the latest values, with their 'step'


@dataclasses.dataclass
class LoopState:
  """What the training loop accumulates on the device between two visits of the host."""
  names: List[str]  # the metrics' names, in the order of `sums` (filled when the step is traced)
  sums: tf.Variable  # per metric, the sum over the steps since the last logging step
  count: tf.Variable  # steps since the last logging step
  first_bad_step: tf.Variable  # first step whose loss was not finite (-1: none)
  last_index: tf.Variable  # highest stream position consumed so far (on this worker)

  def take_means(self) -> Dict[str, float]:
    """The metrics averaged over the steps since the last call; starts the next window."""
    n = max(float(self.count.numpy()), 1.0)
    sums = self.sums.numpy()
    values = {name: float(sums[i]) / n if i < len(sums) else 0.0 for i, name in enumerate(self.names)}
    self.sums.assign(tf.zeros_like(self.sums))
    self.count.assign(0.0)
    return values


def make_train_loop(strategy: tf.distribute.Strategy, task: Task, jit: bool = False):
  """(train_loop, LoopState): train_loop(iterator, num_steps) runs num_steps training steps in one tf.function
  call, a loop in the graph over the distributed iterator, with the metrics accumulated on the device."""
  # The sums are one vector whose length the first trace sets: a variable made while tracing would make
  # tf.function trace the whole step a second time.
  state = LoopState(names=[], sums=tf.Variable(tf.zeros([0]), shape=tf.TensorShape(None), trainable=False),
                    count=tf.Variable(0.0, trainable=False),
                    first_bad_step=tf.Variable(-1, dtype=tf.int64, trainable=False),
                    last_index=tf.Variable(-1, dtype=tf.int64, trainable=False))
  replica_update = make_replica_update(task, strategy.num_replicas_in_sync, jit)

  def replica_train_step(batch):
    return replica_update(batch), tf.reduce_max(batch['index'])

  def train_step(iterator):
    metrics, index = strategy.run(replica_train_step, args=(next(iterator),))
    if not state.names:  # at the first trace: the metrics are what the step returns
      state.names.extend(metrics)
    values = tf.stack([tf.cast(strategy.reduce(tf.distribute.ReduceOp.MEAN, metrics[name], axis=None), tf.float32)
                       for name in state.names])
    sums = state.sums.read_value()
    state.sums.assign(tf.cond(tf.size(sums) > 0, lambda: sums + values, lambda: values))
    loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, metrics['loss'], axis=None)
    bad = tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), state.first_bad_step < 0)
    state.first_bad_step.assign(tf.where(bad, task.optimizer.iterations, state.first_bad_step))
    # Stream positions are per input pipeline (per worker): the maximum over this worker's replicas.
    local_max = tf.reduce_max(tf.stack(strategy.experimental_local_results(index)))
    state.last_index.assign(tf.maximum(state.last_index, local_max))
    state.count.assign_add(1.0)

  # Traced as written (autograph=False): nothing in a step branches on a tensor in Python, and AutoGraph's rewrite of
  # every function the step calls took seconds of each run's start.
  @tf.function(autograph=False)
  def loop(iterator, num_steps):
    def body(i):
      train_step(iterator)
      return (i + 1,)
    tf.while_loop(lambda i: i < num_steps, body, (tf.constant(0, num_steps.dtype),),
                  maximum_iterations=tf.cast(num_steps, tf.int32))  # the bound TPUs need (AutoGraph's hint too)

  # One step is traced without the graph loop: cheaper to trace, for runs that hand back to the host every step.
  one_step = tf.function(train_step, autograph=False)

  def train_loop(iterator, num_steps: int):
    if num_steps == 1:
      one_step(iterator)
    else:
      loop(iterator, tf.constant(num_steps, tf.int64))

  return train_loop, state


# ---- run-level checks ------------------------------------------------------------------------------------------

def checkpoint_every(config: Config, num_examples: int) -> Optional[Period]:
  if config.checkpoint_steps:
    return Period(config.checkpoint_steps)
  return epoch_period(config.optim, num_examples, config.checkpoint_epochs) if config.checkpoint_epochs else None


def next_boundary(step: int, steps: int, config: Config, save_every: Optional[Period], measure_every=()) -> int:
  """The first step after `step` at which the loop must hand back to the host: a logging step, a checkpoint step,
  a measurement step (Periods), the end, or --steps_per_loop steps on."""
  candidates = [steps, step + config.steps_per_loop, (step // config.log_every_steps + 1) * config.log_every_steps]
  for every in ([save_every] if save_every else []) + list(measure_every):
    candidates.append(every.next_after(step))
  return min(candidates)


RESUME_ADVICE = ('delete it to resume with the settings of the flags (nothing can check them then), or restore it '
                 'from a copy')


def resume_record(model_dir: str) -> Optional[dict]:
  """The record of the run in model_dir that a resume continues: its latest checkpoint's own record, else
  model_dir/config.json (read defensively: simclr_tf.record.parse); None for a new run, or (one warning) when
  neither says anything (a checkpoint of an earlier version whose config.json was lost)."""
  latest = checkpoints.latest_checkpoint(model_dir)
  if not latest:
    return None
  own = record.of_checkpoint(latest)
  if own is not None:
    return own
  path = os.path.join(model_dir, 'config.json')
  found = record.read(path, RESUME_ADVICE)
  if found is None:
    log.warning('%s is missing and %s holds no record of its run (written by an earlier version): resuming with '
                'the settings of the flags (data, schedule, optimizer, loss), which nothing can check against the '
                'run\'s; the restore checks the architecture', path, os.path.basename(latest))
  return found


def check_resume_compatible(config: Config, class_names=()) -> None:
  """Refuses to continue a run in model_dir whose record differs in what is being trained, or whose training
  split's classes were added or removed since (`class_names`: this run's, in label order)."""
  recorded = resume_record(config.model_dir)
  if recorded is None:
    return
  conflicts = resume_conflicts(recorded, config)
  if conflicts:
    listed = ', '.join(f'--{k}={new} (was {old})' for k, old, new in conflicts)
    raise UserError(f'--model_dir={config.model_dir} holds a run with other settings; resuming it with {listed} '
                    f'would not continue it. Use a new --model_dir, or the recorded values.')
  before = record.class_names(recorded)
  if before is not None and tuple(before) != tuple(class_names):
    added = [n for n in class_names if n not in before]
    removed = [n for n in before if n not in class_names]
    change = '; '.join(f'{what} {", ".join(names[:5])}{", ..." if len(names) > 5 else ""}'
                       for what, names in (('added', added), ('removed', removed)) if names) or 'reordered'
    raise UserError(f'the classes of --train_split={config.train_split} changed since the run in --model_dir='
                    f'{config.model_dir} started ({change}); a resumed run keeps its classes. Restore the split, or '
                    f'start a new --model_dir.')


def jit_compile_step(config: Config, strategy: tf.distribute.Strategy) -> bool:
  """Whether to XLA-compile the per-replica step. TPUs compile everything anyway. With several replicas on
  CPUs/GPUs TF cannot: their cross-replica calls (synchronised batch norm, the gathering of negatives) are
  merge_calls, which may not run inside a compiled function."""
  if not config.jit_compile or isinstance(strategy, tf.distribute.TPUStrategy):
    return False
  if strategy.num_replicas_in_sync > 1 or distribute.num_workers(strategy) > 1:
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


def learning_rate_now(optimizer) -> float:
  rate = optimizer.learning_rate
  return float(rate.numpy()) if hasattr(rate, 'numpy') else float(rate)


# ---- the run ---------------------------------------------------------------------------------------------------

class TrainingRun:
  """One training run of a task in model_dir: restore(), then run(). fit() does both."""

  def __init__(self, config: Config, strategy: tf.distribute.Strategy, task: Task, measurements=()):
    self.config, self.strategy, self.task = config, strategy, task
    self.measurements = [m for m in measurements if m.every.numerator > 0]
    self.per_replica_batch = distribute.check_batch_divides(config.train_batch_size, strategy, 'train_batch_size')
    self.jit = jit_compile_step(config, strategy)
    self.steps = total_steps(config.optim, task.source.num_examples)
    if config.train_batch_size > task.source.num_examples:
      log.warning('--train_batch_size=%d is larger than the %d examples of %s (%s): every batch repeats examples, '
                  'and an epoch is one step.', config.train_batch_size, task.source.num_examples, task.source.name,
                  config.train_split)
    self.chief = distribute.is_chief(strategy)
    self.out_dir = distribute.writable_dir(config.model_dir, strategy)
    self.class_names = tuple(getattr(task.model, 'class_names', ()))
    self.record = record.to_json(config, self.class_names, self.steps)
    self.keeper = checkpoints.CheckpointKeeper(self.out_dir, config.keep_checkpoint_max, record=self.record,
                                               model=task.model, optimizer=task.optimizer, **task.extra_checkpoint)
    self.start = 0

  @property
  def step(self) -> int:
    return int(self.task.optimizer.iterations.numpy())

  def restore(self) -> int:
    """Restores the latest checkpoint of model_dir (after checking that this run continues it), then records the
    run (model_dir/config.json, on the chief): written once the restore (or the start) succeeded, so that a run
    that fails to start changes nothing. Returns the step."""
    check_resume_compatible(self.config, self.class_names)
    with self.strategy.scope():
      self.task.optimizer.build(self.task.trainable_variables())
    # Other workers restore the chief's checkpoint, so that all start from the same state.
    restored = self.keeper.restore_latest(None if self.chief else self.config.model_dir)
    if self.chief:
      files.write_atomically(os.path.join(self.config.model_dir, 'config.json'), self.record)
    self.start = self.step
    if restored:
      log.info('resuming from %s at step %d', restored, self.start)
    return self.start

  def run(self) -> int:
    """Trains from the restored step to the configured number of steps; returns the final step."""
    config, strategy, task, steps, start = self.config, self.strategy, self.task, self.steps, self.start
    if start >= steps:
      log.info('already trained to step %d of %d', start, steps)
      return start
    made = []  # the per-worker datasets the strategy asked for

    def pipeline(ctx):
      made.append(inputs.train_dataset(task.source, config.data, task.views, self.per_replica_batch, ctx,
                                       start_step=start))
      return made[-1]

    dataset = strategy.distribute_datasets_from_function(pipeline)
    if task.first_batch and start == 0 and self.chief:
      # The pipeline the strategy made (its functions traced and compiled once), read by an iterator of its own.
      own = made[0] if made else inputs.train_dataset(task.source, config.data, task.views, self.per_replica_batch)
      for batch in own.take(1):
        task.first_batch(batch)
    iterator = iter(dataset)
    train_loop, state = make_train_loop(strategy, task, self.jit)
    trainable = task.trainable_variables()
    keeper = self.keeper

    @tf.function(autograph=False)
    def weights_finite():
      return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in trainable])

    def skipped_images(step):
      """Unreadable images skipped so far in this process: gaps in the consumed stream positions."""
      pipelines = distribute.num_workers(strategy)
      consumed = (step - start) * config.train_batch_size // pipelines
      first = start * config.train_batch_size // pipelines
      return max(0, int(state.last_index.numpy()) + 1 - first - consumed)

    def save(step):
      # The loss of step k comes before its update: check the weights too, so no checkpoint holds a NaN.
      _finite_or_raise(step, {}, int(state.first_bad_step.numpy()) if bool(weights_finite()) else step,
                       keeper.latest)
      return keeper.save(step)

    save_every = checkpoint_every(config, task.source.num_examples)
    progress = monitor.Monitor(self.out_dir, steps, config.train_batch_size, start, write=self.chief,
                               prefix=config.mode)
    log.info('%s: %d steps (%.4g per epoch) at global batch %d on %d replica(s), %s', config.mode, steps,
             task.source.num_examples / config.train_batch_size, config.train_batch_size,
             strategy.num_replicas_in_sync, task.source.name)
    handler = None
    if distribute.uses_preemption_handler(strategy):
      handler = preemption.cluster_handler(
          strategy, keeper.manager,
          lambda: (f'stopped by a preemption notice at step {self.step} of {steps}, with a checkpoint of that step '
                   f'in {config.model_dir}. Restart every worker with the same command to resume.'))
    step = start
    reported_skips = 0
    with preemption.StopRequests() if handler is None else contextlib.nullcontext() as stop:
      while step < steps:
        boundary = next_boundary(step, steps, config, save_every, [m.every for m in self.measurements])
        self._run_loop(train_loop, iterator, boundary - step, boundary, handler)
        step = boundary
        if int(state.first_bad_step.numpy()) >= 0:
          _finite_or_raise(step, {}, int(state.first_bad_step.numpy()), keeper.latest)
        due = [m for m in self.measurements if m.every.holds(step) or step == steps]
        if step % config.log_every_steps == 0 or step == steps or due:
          values = state.take_means()
          values['learning_rate'] = learning_rate_now(task.optimizer)
          for measurement in due:
            measurement.last = dict(measurement.measure(), step=step)
            values.update({k: v for k, v in measurement.last.items() if k != 'step'})
          _finite_or_raise(step, values, int(state.first_bad_step.numpy()), keeper.latest)
          skipped = skipped_images(step)
          if skipped:
            values['skipped_images'] = float(skipped)
            if skipped > reported_skips:
              log.warning('skipped %d unreadable image(s) so far (use --strict_data to stop at the first)', skipped)
              reported_skips = skipped
          progress.report(step, values)
        if (save_every and save_every.holds(step)) or step == steps:
          save(step)
          progress.histograms(step, trainable)
        runlock.heartbeat()
        if handler is None and stop.requested and step < steps:
          path = keeper.latest if keeper.latest and keeper.latest.endswith(f'-{step}') else save(step)
          raise Interrupted(f'stopped by {stop.name} at step {step} of {steps}; saved {path}. Rerun the same '
                            f'command to resume.', stop.requested)
    self._finish(step)
    return step

  def _run_loop(self, train_loop, iterator, num_steps: int, boundary: int, handler) -> None:
    """num_steps steps in one call; a cluster's failures and unreadable images become one-line errors."""
    try:
      if handler is None:
        train_loop(iterator, num_steps)
      else:  # saves (at this loop's start, on every worker) and stops if any worker was told to stop
        handler.run(train_loop, iterator, num_steps)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as e:
      if distribute.num_workers(self.strategy) == 1:
        raise
      raise UserError(f'another worker of the cluster stopped or stopped answering before step {boundary} '
                      f'({distribute.cluster_error_reason(e)}); restart every worker with the same command to '
                      f'resume from the last checkpoint ({self.keeper.latest or "none yet"}), or raise '
                      f'--worker_timeout if workers are slow.') from None
    except tf.errors.InvalidArgumentError as e:
      if self.config.strict_data:
        raise UserError(f'an image in {self.task.source.name} ({self.config.train_split}) cannot be read '
                        f'({tf_error_summary(e)}); remove it, or run without --strict_data to skip unreadable '
                        f'images.') from None
      raise

  def _finish(self, step: int) -> None:
    if self.chief:
      monitor.plot_curves(self.config.model_dir)
    if distribute.num_workers(self.strategy) > 1:
      resolver = self.strategy.cluster_resolver
      log.info('%s %d: finished at step %d with weights fingerprint %s', resolver.task_type, resolver.task_id, step,
               checkpoints.weights_fingerprint(self.task.model.weights))

  def close(self) -> None:
    """Removes the private checkpoint folder of a worker that is not the chief (its checkpoints only had to be
    written; the chief's are the run's), however the run ended: finished, preempted, stopped or failed."""
    if not self.chief:
      shutil.rmtree(self.out_dir, ignore_errors=True)


def fit(config: Config, strategy: tf.distribute.Strategy, task: Task, measurements=()) -> int:
  """Trains `task` to the configured number of steps, resuming from model_dir, with `measurements` (Measurement)
  logged along. Returns the final step."""
  run = TrainingRun(config, strategy, task, measurements)
  try:
    run.restore()
    return run.run()
  finally:
    run.close()
