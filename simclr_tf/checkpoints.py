"""Training checkpoints in model_dir: save every N steps keeping K, resume from the latest complete one.

TF writes a checkpoint's data and index files first and the `checkpoint` state file last, atomically, so a run
killed while saving resumes from the previous complete checkpoint.
"""

import hashlib
import logging
import os
from typing import Optional

import tensorflow as tf

from simclr_tf.config import UserError

CHECKPOINT_NAME = 'ckpt'
log = logging.getLogger('simclr_tf')


def read_checkpoint(prefix: str):
  """A reader of the checkpoint at `prefix`. (tf.train.load_checkpoint first asks whether the prefix is a
  directory, which some filesystems, ram:// among them, answer yes for any prefix of a file name.)"""
  return tf.compat.v1.train.NewCheckpointReader(prefix)


def directory_of(path: str) -> str:
  """The directory a --checkpoint/--teacher names: itself, or the folder of a checkpoint prefix."""
  return os.path.dirname(path) if tf.io.gfile.exists(path + '.index') else path


def latest_checkpoint(path: str) -> Optional[str]:
  """The checkpoint prefix `path` names: a directory's latest checkpoint (by its `checkpoint` state file, or
  without one the highest-numbered NAME-N.index in it), or a prefix itself; None if none."""
  if tf.io.gfile.exists(path + '.index'):
    return path
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest:
      return latest
    prefixes = [name[:-len('.index')] for name in tf.io.gfile.listdir(path) if name.endswith('.index')]
    if not prefixes:
      return None
    number = lambda prefix: int(prefix.rsplit('-', 1)[1]) if prefix.rsplit('-', 1)[-1].isdigit() else -1
    return os.path.join(path, max(prefixes, key=lambda prefix: (number(prefix), prefix)))
  return None


class StepNumberedManager(tf.train.CheckpointManager):
  """A CheckpointManager whose checkpoints are named by the training step (`step()`) when the caller gives no
  number, as TF's PreemptionCheckpointHandler does."""

  def __init__(self, *args, step=None, **kwargs):
    super().__init__(*args, **kwargs)
    self._step = step

  def save(self, checkpoint_number=None, check_interval=True, options=None):
    if checkpoint_number is None and self._step is not None:
      checkpoint_number = self._step()
    return super().save(checkpoint_number, check_interval, options)


class CheckpointKeeper:
  """The model, optimizer and step of a training run, saved to and restored from one directory."""

  def __init__(self, directory: str, max_to_keep: int, **objects):
    self.checkpoint = tf.train.Checkpoint(**objects)
    optimizer = objects.get('optimizer')
    self.manager = StepNumberedManager(
        self.checkpoint, directory, max_to_keep=max_to_keep, checkpoint_name=CHECKPOINT_NAME,
        step=(lambda: int(optimizer.iterations.numpy())) if optimizer is not None else None)

  @property
  def latest(self) -> Optional[str]:
    return self.manager.latest_checkpoint

  def restore_latest(self) -> Optional[str]:
    """Restores the newest readable checkpoint of the directory, if any; every variable must be found in it.

    A checkpoint that cannot be read (truncated or corrupt files: a disk filled up, a copy cut short) is reported
    in one line and the one before it is tried; a checkpoint of another model is an error."""
    candidates = list(reversed(self.manager.checkpoints))
    for i, path in enumerate(candidates):
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return path
      except (AssertionError, ValueError) as e:
        raise UserError(f'{path} does not fit this model (a different architecture in the same --model_dir?): '
                        f'{str(e).splitlines()[0][:300]}') from None
      except (tf.errors.OpError, IndexError, EOFError) as e:  # TF raises IndexError for truncated data files
        older = candidates[i + 1] if i + 1 < len(candidates) else None
        reason = str(getattr(e, 'message', e)).splitlines()[0][:160]
        if older is None:
          raise UserError(f'{path} cannot be read ({type(e).__name__}: {reason}) and --model_dir holds no older '
                          f'checkpoint; restore the file, or delete the model_dir\'s checkpoints to start over.'
                          ) from None
        log.warning('%s cannot be read (%s: %s); resuming from the checkpoint before it, %s', path,
                    type(e).__name__, reason, older)
    return None

  def save(self, step: int) -> str:
    return self.manager.save(checkpoint_number=step)


# ---- restoring parts of a model --------------------------------------------------------------------------------

ARCHITECTURE_FLAGS = '--resnet_depth, --width_multiplier, --sk_ratio, --se_ratio, --num_proj_layers, --proj_out_dim'


def variable_paths(model) -> dict:
  """{id(variable): its object path below `model`} as tf.train.Checkpoint names it (attribute names, e.g.
  'resnet/stem/conv0/conv/conv/_kernel'), found by TF's own traversal of the model's trackable children."""
  import keras
  view = tf.train.TrackableView(model)
  paths = {}
  stack = [(model, '', (id(model),))]
  while stack:
    obj, path, on_path = stack.pop()
    for name, child in view.children(obj).items():
      child_path = f'{path}/{name}' if path else name
      if isinstance(child, (keras.Variable, tf.Variable)):
        paths.setdefault(id(child), child_path)
      elif id(child) not in on_path:
        stack.append((child, child_path, on_path + (id(child),)))
  return paths


# Object-graph edges that only alias objects reachable through attributes.
ALIAS_EDGES = frozenset({'keras_api', 'variables', 'trainable_variables', 'non_trainable_variables', 'weights',
                         'trainable_weights', 'non_trainable_weights', 'trainable_variables_list', 'all_variables'})


def object_paths(prefix: str, root: Optional[str] = 'model') -> dict:
  """{attribute path below `root` (None: below the graph's root): checkpoint key} of every variable in a
  checkpoint's object graph (a training checkpoint, or the variables of a SavedModel).

  TF stores a variable once, under the shortest path to it (a trainable variable is often stored under the
  optimizer's list of variables), so keys are found by walking the object graph along attribute names. Edges that
  only alias objects reachable by attribute names (a Keras 2 SavedModel's `keras_api/...` and
  `variables/<i>`, the export's variable lists) are not followed.
  """
  from tensorflow.core.protobuf import trackable_object_graph_pb2
  reader = read_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  starts = [0] if root is None else [c.node_id for c in graph.nodes[0].children if c.local_name == root]
  paths = {}
  stack = [(node, '', (node,)) for node in starts]
  while stack:
    node_id, path, on_path = stack.pop()
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name == 'VARIABLE_VALUE':
        paths[path] = attribute.checkpoint_key
    for child in node.children:
      if child.node_id not in on_path and child.local_name not in ALIAS_EDGES:
        stack.append((child.node_id, f'{path}/{child.local_name}' if path else child.local_name,
                      on_path + (child.node_id,)))
  return paths


def resolve_checkpoint(path: str, flag: str = 'checkpoint') -> str:
  """The checkpoint prefix that --checkpoint names (a directory's latest checkpoint, or a prefix)."""
  prefix = latest_checkpoint(path)
  if prefix is None:
    if not tf.io.gfile.exists(path):
      raise UserError(f'--{flag}={path} does not exist.')
    raise UserError(f'--{flag}={path} holds no checkpoint (expected a model_dir with ckpt-N files, or a '
                    f'checkpoint prefix such as {path.rstrip("/")}/ckpt-100).')
  return prefix


def checkpoint_shapes(prefix: str) -> dict:
  try:
    return read_checkpoint(prefix).get_variable_to_shape_map()
  except (tf.errors.OpError, ValueError) as e:
    raise UserError(f'{prefix} cannot be read as a checkpoint ({str(e).splitlines()[0][:200]}).') from None


def restore_variables(model, variables, prefix: str) -> int:
  """Assigns each of `variables` (of `model`) the value stored at its object path in the checkpoint's model.
  Every variable must be present with its shape; the first that is not is reported as one line (expected vs
  found). Returns the number restored."""
  shapes = checkpoint_shapes(prefix)
  keys = object_paths(prefix)
  paths = variable_paths(model)
  for v in variables:
    name = paths[id(v)]
    if name not in keys:
      raise UserError(f'checkpoint {prefix} does not fit the model: it has no {name} (expected shape '
                      f'{list(v.shape)}); check {ARCHITECTURE_FLAGS}.')
    found = list(shapes[keys[name]])
    if found != list(v.shape):
      raise UserError(f'checkpoint {prefix} does not fit the model: {name} has shape {found} in the '
                      f'checkpoint, the model expects {list(v.shape)}; check {ARCHITECTURE_FLAGS}.')
  reader = read_checkpoint(prefix)
  for v in variables:
    v.assign(reader.get_tensor(keys[paths[id(v)]]))
  return len(variables)


def checkpoint_step(prefix: str) -> int:
  """The training step a checkpoint was written at (its optimizer's iteration counter), or -1."""
  reader = read_checkpoint(prefix)
  for key in reader.get_variable_to_shape_map():
    if key.startswith('optimizer/') and 'iteration' in key:
      return int(reader.get_tensor(key))
  return -1


def weights_fingerprint(variables) -> str:
  """A short hash of the values of `variables` (in order): equal on every worker of a run that is in sync."""
  digest = hashlib.sha256()
  for v in variables:
    digest.update(v.numpy().tobytes())
  return digest.hexdigest()[:16]
