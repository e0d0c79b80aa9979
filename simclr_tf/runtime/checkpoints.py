"""Training checkpoints in model_dir: save every N steps keeping K, resume from the latest complete one.

TF writes a checkpoint's data and index files first and the `checkpoint` state file last, atomically, so a run
killed while saving resumes from the previous complete checkpoint.
"""

import hashlib
import logging
import os
from typing import List, Optional, Tuple

import tensorflow as tf

from simclr_tf import record as record_lib
from simclr_tf.errors import UserError
from simclr_tf.runtime import files
from simclr_tf.runtime.files import describe_error

CHECKPOINT_NAME = 'ckpt'
log = logging.getLogger('simclr_tf')


def read_checkpoint(prefix: str):
  """A reader of the checkpoint at `prefix`. (tf.train.load_checkpoint first asks whether the prefix is a
  directory, which some filesystems, ram:// among them, answer yes for any prefix of a file name.)"""
  return tf.compat.v1.train.NewCheckpointReader(prefix)


def directory_of(path: str) -> str:
  """The directory a --checkpoint/--teacher names: itself, or the folder of a checkpoint prefix."""
  return os.path.dirname(path) if tf.io.gfile.exists(path + '.index') else path


def numbered_checkpoints(directory: str, name: str = CHECKPOINT_NAME) -> List[Tuple[int, str]]:
  """[(N, prefix)] of the NAME-N checkpoints whose index file is in `directory`, by N."""
  found = []
  for entry in tf.io.gfile.listdir(directory):
    stem = entry[:-len('.index')] if entry.endswith('.index') else ''
    head, _, number = stem.rpartition('-')
    if head == name and number.isdigit():
      found.append((int(number), os.path.join(directory, stem)))
  return sorted(found)


def _state_file_latest(directory: str) -> Optional[str]:
  """The latest checkpoint the directory's `checkpoint` state file names, if the file is there, parses and names
  a checkpoint whose index file exists; else None."""
  try:
    named = tf.train.latest_checkpoint(directory)
  except (tf.errors.OpError, ValueError):
    return None
  return named if named and tf.io.gfile.exists(named + '.index') else None


def latest_checkpoint(path: str) -> Optional[str]:
  """The checkpoint prefix `path` names: a prefix itself, or a directory's latest checkpoint: the one its
  `checkpoint` state file names, or, when that file is missing, garbled or names a file that is not there, the
  highest-numbered ckpt-N (any NAME-N without ckpt-N) in it, with a warning; None if none."""
  if tf.io.gfile.exists(path + '.index'):
    return path
  if not tf.io.gfile.isdir(path):
    return None
  named = _state_file_latest(path)
  if named:
    return named
  found = numbered_checkpoints(path)
  if not found:  # checkpoints of another name (e.g. model.ckpt-N, or one without a number)
    prefixes = [name[:-len('.index')] for name in tf.io.gfile.listdir(path) if name.endswith('.index')]
    if not prefixes:
      return None
    number = lambda prefix: int(prefix.rsplit('-', 1)[1]) if prefix.rsplit('-', 1)[-1].isdigit() else -1
    return os.path.join(path, max(prefixes, key=lambda prefix: (number(prefix), prefix)))
  _warn_state_file(path, found[-1][1])
  return found[-1][1]


_WARNED = set()


def _warn_state_file(directory: str, chosen: str) -> None:
  """One warning per directory and process."""
  if (directory, chosen) in _WARNED:
    return
  _WARNED.add((directory, chosen))
  state = os.path.join(directory, 'checkpoint')
  what = 'is missing' if not tf.io.gfile.exists(state) else 'is unreadable or names no checkpoint that is there'
  log.warning('%s %s; using the highest-numbered checkpoint beside it, %s', state, what, os.path.basename(chosen))


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
  """The model, optimizer and step of a training run, saved to and restored from one directory. With `record`
  (the run's record as JSON, simclr_tf.record), every checkpoint also holds it, as the string variable `record`:
  saved, never restored (a resumed run writes its own)."""

  def __init__(self, directory: str, max_to_keep: int, record: Optional[str] = None, **objects):
    self.checkpoint = tf.train.Checkpoint(**objects)  # what a restore fills: every object must be in the file
    self.record = None
    self.saved = self.checkpoint  # what a save writes
    if record is not None:
      with tf.device('/cpu:0'):
        self.record = tf.Variable(record, dtype=tf.string, trainable=False, name=record_lib.VARIABLE)
      self.saved = tf.train.Checkpoint(**objects, **{record_lib.VARIABLE: self.record})
    self.directory, self.max_to_keep = directory, max_to_keep
    optimizer = objects.get('optimizer')
    self._step = (lambda: int(optimizer.iterations.numpy())) if optimizer is not None else None
    self.manager = self._make_manager()

  def _make_manager(self) -> 'StepNumberedManager':
    make = lambda: StepNumberedManager(self.saved, self.directory, max_to_keep=self.max_to_keep,
                                       checkpoint_name=CHECKPOINT_NAME, step=self._step)
    try:
      return make()
    except (tf.errors.OpError, ValueError):  # a state file TF cannot parse (it raises for some garbles)
      self._rewrite_state_file()
      return make()

  def recover_state_file(self) -> None:
    """When the directory holds ckpt-N files but its `checkpoint` state file lists none that is there (the file
    lost in a copy or a cleanup, garbled, or written without timestamps by hand or by another tool), rewrites the
    state file to list every one of them (newest last), with one warning, so that the run resumes from the newest
    readable one instead of starting over them."""
    if not tf.io.gfile.isdir(self.directory):
      return
    found = numbered_checkpoints(self.directory)
    listed = self.manager.checkpoints
    if not found or (listed and tf.io.gfile.exists(listed[-1] + '.index')):
      return  # a state file that lists what is there is the record of what is complete (TF writes it last)
    self._rewrite_state_file()
    self.manager = self._make_manager()

  def _rewrite_state_file(self) -> None:
    """A state file listing every ckpt-N on disk (newest last), with one warning."""
    found = numbered_checkpoints(self.directory)
    if not found:
      tf.io.gfile.remove(os.path.join(self.directory, 'checkpoint'))
      return
    _warn_state_file(self.directory, found[-1][1])
    prefixes = [prefix for _, prefix in found]
    times = [tf.io.gfile.stat(prefix + '.index').mtime_nsec / 1e9 for prefix in prefixes]
    names = [os.path.basename(prefix) for prefix in prefixes]  # relative, as the manager writes them
    tf.compat.v1.train.update_checkpoint_state(self.directory, names[-1], names,
                                               all_model_checkpoint_timestamps=times,
                                               last_preserved_timestamp=min(times) - 1)

  @property
  def latest(self) -> Optional[str]:
    return self.manager.latest_checkpoint

  def restore_latest(self, directory: Optional[str] = None) -> Optional[str]:
    """Restores the newest readable checkpoint of the directory (or of another `directory`: the other workers of
    a cluster start from the chief's), if any; every variable must be found in it.

    A checkpoint that cannot be read (truncated or corrupt files: a disk filled up, a copy cut short) is reported
    in one line and the one before it is tried; a checkpoint of another model is an error."""
    if directory is None:
      self.recover_state_file()
    manager = self.manager if directory is None else tf.train.CheckpointManager(
        self.checkpoint, directory, max_to_keep=None, checkpoint_name=CHECKPOINT_NAME)
    candidates = list(reversed(manager.checkpoints))
    for i, path in enumerate(candidates):
      try:
        # expect_partial: a checkpoint's own record is saved, never restored (no warning about it at exit).
        self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
        if self.saved is not self.checkpoint:  # the saving checkpoint's count goes on from the file's
          self.saved.save_counter.assign(self.checkpoint.save_counter)
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
    """Writes ckpt-<step>. When it cannot be written (a full disk, a lost permission), its partial files are
    removed and the run stops with one UserError naming the last complete checkpoint."""
    try:
      return self.manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
      self._remove_partial(step)
      raise UserError(f'cannot write checkpoint {CHECKPOINT_NAME}-{step} in --model_dir={self.directory} '
                      f'({describe_error(e)}); its partial files were removed. The last complete checkpoint is '
                      f'{self.manager.latest_checkpoint or "none"}: make room (or fix the folder) and rerun the same '
                      f'command to resume from it.') from None

  def _remove_partial(self, step: int) -> None:
    """The files of a checkpoint whose writing failed: TF's temporary folder and whatever of ckpt-<step> exists
    (the state file does not list it)."""
    prefix = os.path.join(self.directory, f'{CHECKPOINT_NAME}-{step}')
    for path in tf.io.gfile.glob(prefix + '_temp*') + tf.io.gfile.glob(prefix + '.*'):
      try:
        files.remove(path)
      except tf.errors.OpError as e:
        log.warning('could not remove %s (%s)', path, describe_error(e))


def resolve_checkpoint(path: str, flag: str = 'checkpoint') -> str:
  """The checkpoint prefix that --checkpoint names (a directory's latest checkpoint, or a prefix)."""
  prefix = latest_checkpoint(path)
  if prefix is None:
    if not tf.io.gfile.exists(path):
      raise UserError(f'--{flag}={path} does not exist.')
    raise UserError(f'--{flag}={path} holds no checkpoint or SavedModel (expected a model_dir with ckpt-N files, a '
                    f'checkpoint prefix such as {path.rstrip("/")}/ckpt-100, a SavedModel, or a reference run\'s '
                    f'model_dir with saved_model/<step>/).')
  return prefix


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
