"""The tf.distribute strategy of a run, the process-wide TF settings that must precede it, and the roles of the
processes of a cluster (which one writes model_dir, how many input pipelines there are)."""

import json
import logging
import os
import tempfile
import threading

import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.errors import UserError, tf_error_summary

log = logging.getLogger(__name__)


def configure_devices(config: Config) -> None:
  """Threading and logical CPU devices. Must run before any op, device or strategy is created."""
  try:
    if config.num_threads:
      tf.config.threading.set_intra_op_parallelism_threads(config.num_threads)
      tf.config.threading.set_inter_op_parallelism_threads(config.num_threads)
    if config.cpu_replicas > 1:
      cpu = tf.config.list_physical_devices('CPU')[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(config.cpu_replicas)])
  except RuntimeError as e:
    # TF refuses once the runtime is up; a second run in the same process keeps the first layout.
    current = len(tf.config.list_logical_devices('CPU'))
    if config.cpu_replicas > 1 and current != config.cpu_replicas:
      raise UserError(f'--cpu_replicas={config.cpu_replicas} cannot be set: TF already started with {current} '
                      f'CPU device(s) in this process ({e}).') from None


def make_strategy(config: Config) -> tf.distribute.Strategy:
  """The strategy named by --strategy ('auto' picks one from the hardware)."""
  configure_devices(config)
  name = config.strategy
  # Physical, not logical, devices: listing logical ones starts the runtime, after which MultiWorkerMirrored-
  # Strategy can no longer configure its collectives.
  gpus = tf.config.list_physical_devices('GPU')
  if name == 'auto':
    if config.tpu:
      name = 'tpu'
    elif len(gpus) > 1 or config.cpu_replicas > 1:
      name = 'mirrored'
    else:
      name = 'default'
  if name == 'multi_worker':
    linear_backward_walk()  # its all-reduces also go through merge_call, across the worker's own devices
    return multi_worker_strategy(config)
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    linear_backward_walk()
    devices = [d.name for d in tf.config.list_logical_devices('GPU' if gpus else 'CPU')]
    cross_device_ops = None if gpus else tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross_device_ops)
  if name == 'tpu':
    return tf.distribute.TPUStrategy(connect_tpu(config))
  raise UserError(f'--strategy={name} is not known.')


def linear_backward_walk() -> bool:
  """Makes TF's backward walk over a graph (op_selector.get_backward_walk_ops) linear instead of quadratic in the
  ops it visits; same result, same order. Returns whether it is in place.

  Why: under MirroredStrategy (and MultiWorkerMirroredStrategy, among a worker's own devices) every all-reduce of
  a replica (each synchronized batch norm, forward and backward, the optimizer's, the gathering of negatives) is a
  tf.custom_gradient, which walks back from the reduced values to find the variables they depend on. The reduced
  values depend on the other replicas' graphs, so each walk visits most of the step's graph, and TF checks each op
  against a list of those already seen: py-spy found 38% of a two-replica test's time in this walk.
  tests/test_distribute.py compares this walk with TF's.
  """
  try:  # TF's private modules: another TF may lack them, and then keeps its own walk
    from tensorflow.python.framework import tensor as tensor_lib  # pylint: disable=g-direct-tensorflow-import
    from tensorflow.python.ops import op_selector  # pylint: disable=g-direct-tensorflow-import
    from tensorflow.python.util import object_identity  # pylint: disable=g-direct-tensorflow-import
  except ImportError:
    return False
  if getattr(op_selector.get_backward_walk_ops, 'linear', False):
    return True
  needed = ('make_list_of_op', 'make_list_of_t', 'get_generating_ops', 'is_iterable', '_get_inputs')
  if not all(hasattr(op_selector, name) for name in needed):
    return False

  def get_backward_walk_ops(seed_ops, inclusive=True, within_ops=None, within_ops_fn=None, stop_at_ts=(),
                            control_inputs=False, only_differentiable=False):
    # TF 2.21's function line by line, with a set beside the list of ops found.
    control_inputs = control_inputs and (not only_differentiable)
    if not op_selector.is_iterable(seed_ops):
      seed_ops = [seed_ops]
    try:
      first_seed_op = next(iter(seed_ops))
    except StopIteration:
      return []
    if isinstance(first_seed_op, tensor_lib.Tensor):
      seed_ops = op_selector.get_generating_ops(op_selector.make_list_of_t(seed_ops, allow_graph=False))
    else:
      seed_ops = op_selector.make_list_of_op(seed_ops, allow_graph=False)
    stop_at_ts = object_identity.ObjectIdentitySet(op_selector.make_list_of_t(stop_at_ts))
    seed_ops = object_identity.ObjectIdentitySet(op_selector.make_list_of_op(seed_ops))
    if within_ops:
      within_ops = object_identity.ObjectIdentitySet(op_selector.make_list_of_op(within_ops, allow_graph=False))
      seed_ops &= within_ops

    def is_within(op):
      return (within_ops is None or op in within_ops) and (within_ops_fn is None or within_ops_fn(op))

    result = list(seed_ops)
    found = set(result)
    wave = set(seed_ops)
    inputs_of = op_selector._get_inputs  # pylint: disable=protected-access
    while wave:
      new_wave = set()
      for op in wave:
        for new_t in inputs_of(op, only_differentiable=only_differentiable):
          if new_t in stop_at_ts:
            continue
          if new_t.op not in found and is_within(new_t.op):
            new_wave.add(new_t.op)
        if control_inputs:
          for new_op in op.control_inputs:
            if new_op not in found and is_within(new_op):
              new_wave.add(new_op)
      for op in new_wave:  # concatenate_unique(result, new_wave)
        if op not in found:
          result.append(op)
          found.add(op)
      wave = new_wave
    if not inclusive:
      result = [op for op in result if op not in seed_ops]
    return result

  get_backward_walk_ops.linear = True
  get_backward_walk_ops.original = op_selector.get_backward_walk_ops
  op_selector.get_backward_walk_ops = get_backward_walk_ops
  return True


def connect_tpu(config: Config):
  """The TPU cluster resolver of --tpu, connected and initialised within --worker_timeout seconds."""
  advice = 'give the TPU\'s name (on a Cloud TPU VM: --tpu=local) or its grpc://host:8470 address'

  def connect():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=config.tpu, zone=config.tpu_zone or None, project=config.gcp_project or None)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return resolver

  outcome = {}

  def attempt():
    try:
      outcome['resolver'] = connect()
    except Exception as e:  # noqa: BLE001  (the resolver raises ValueError, URLError, OpError, RuntimeError, ...)
      outcome['error'] = e

  # An unreachable address makes TF wait forever; the attempt runs in a daemon thread that is abandoned at the
  # deadline.
  thread = threading.Thread(target=attempt, daemon=True)
  thread.start()
  thread.join(config.worker_timeout or None)
  if thread.is_alive():
    raise UserError(f'--tpu={config.tpu}: no answer from the TPU within --worker_timeout={config.worker_timeout} '
                    f'seconds; {advice}.')
  if 'error' in outcome:
    e = outcome['error']
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f'--tpu={config.tpu}: cannot connect to the TPU ({reason}); {advice}.')
  return outcome['resolver']


def multi_worker_strategy(config: Config) -> tf.distribute.MultiWorkerMirroredStrategy:
  """MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (one worker on its own without it). Collectives
  give up after --worker_timeout seconds, so that a dead worker stops the others instead of hanging them."""
  raw = os.environ.get('TF_CONFIG', '')
  if raw:
    try:
      cluster = json.loads(raw)
      workers = len(cluster['cluster'].get('worker', [])) + len(cluster['cluster'].get('chief', []))
      task = cluster['task']['type'], int(cluster['task']['index'])
      members = cluster['cluster'].get(task[0])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise UserError(f'TF_CONFIG is not a cluster description ({e!r}); it needs {{"cluster": {{"worker": '
                      f'["host:port", ...]}}, "task": {{"type": "worker", "index": i}}}}.') from None
    if not isinstance(members, list) or not 0 <= task[1] < len(members):
      where = (f'its cluster lists {len(members)} {task[0]}(s), indexed from 0' if isinstance(members, list) else
               f'its cluster has no {task[0]!r} list (it has {", ".join(map(repr, cluster["cluster"])) or "none"})')
      raise UserError(f'TF_CONFIG names this process {task[0]} {task[1]}, but {where}; give each process the '
                      'cluster and its own task type and index.')
    log.info('multi-worker: %s %d of a cluster of %d worker(s)', task[0], task[1], workers)
  else:
    log.info('multi-worker: no TF_CONFIG, so this process is a cluster of one')
  options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=config.worker_timeout or None)
  return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def check_batch_divides(batch_size: int, strategy: tf.distribute.Strategy, flag: str) -> int:
  """The per-replica batch; refuses a global batch the replicas cannot share evenly."""
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise UserError(f'--{flag}={batch_size} is not divisible by the {replicas} replicas; '
                    f'use a multiple of {replicas}.')
  return batch_size // replicas


# ---- roles in a cluster ----------------------------------------------------------------------------------------

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


def uses_preemption_handler(strategy: tf.distribute.Strategy) -> bool:
  """Clusters (multi-worker, TPU) stop through TF's PreemptionCheckpointHandler, which agrees on one step for all
  workers; a single host catches the signals itself (preemption.StopRequests)."""
  return num_workers(strategy) > 1 or isinstance(strategy, tf.distribute.TPUStrategy)


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
  return tf_error_summary(error)
