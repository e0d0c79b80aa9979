"""Files on any filesystem TF knows (local paths, file://, gs://, ram://, plug-ins), written so that a reader (or a
crash) never takes half of one for a finished one.

Every read, write, listing, delete and rename of a user path goes through tf.io.gfile. What is atomic where:
- a small file (config.json, results, metrics) is written to a temporary name beside it and renamed into place:
  atomic on local disks (rename(2)); on GCS an object appears whole when its write or copy completes, so the file
  is either the old one or the new one there too;
- a SavedModel is complete once its saved_model.pb exists, which TF writes after the variables: on local disks it
  is written to a temporary directory beside the target, which then takes the target's place in one step
  (replace_directory: an atomic exchange on Linux, else two renames microseconds apart), so a reader of the path
  finds the old SavedModel or the new one, whole; elsewhere (object stores have no directory rename) the old one
  is removed first and the new one written in place, so a reader finds the old one, nothing, or the new one;
- checkpoints: TF writes the data and index files, then the `checkpoint` state file that names them.
"""

import ctypes
import errno
import json
import logging
import os
import re
import time
import uuid

import tensorflow as tf

from simclr_tf.errors import UserError, first_line

log = logging.getLogger('simclr_tf')
TEMPORARY_SUFFIX = re.compile(r'\.tmp-(?:(\d+)-)?[0-9a-f]{8}$')  # write_atomically's: .tmp-<pid>-<random>
RESULT_FOLDER = re.compile(r'(eval|knn)_.+')  # folders of an evaluation's results (simclr_tf.evaluation.result_paths)
IN_FLIGHT_SECONDS = 60  # a temporary file on another host's file system younger than this may still be written


def is_local(path: str) -> bool:
  """A path on the local filesystem (a plain path or a file:// URI), where rename is atomic."""
  return '://' not in path or path.startswith('file://')


def parent(path: str) -> str:
  return os.path.dirname(path.rstrip('/'))


def same_or_inside(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies inside it (local paths compared resolved: symlinks, '..', '~')."""
  def norm(p):
    p = p.rstrip('/')
    return os.path.realpath(os.path.expanduser(p.replace('file://', '', 1))) if is_local(p) else p
  path, folder = norm(path), norm(folder)
  return path == folder or path.startswith(folder.rstrip('/') + '/')


def write_atomically(path: str, text) -> str:
  """Writes `text` (str or bytes) to `path` through a temporary file beside it, renamed into place."""
  directory = parent(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  # TEMPORARY_SUFFIX: a kill before the rename leaves it, for remove_leftovers (the pid tells whether its writer lives)
  tmp = f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  with tf.io.gfile.GFile(tmp, 'wb' if isinstance(text, bytes) else 'w') as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def process_alive(pid: int) -> bool:
  """Whether process `pid` runs on this machine (this process included)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def abandoned(path: str) -> bool:
  """Whether `path` is a temporary file of write_atomically whose writer is gone: its process (named in the file's
  name) no longer runs here, or, off this machine's disks, the file is older than IN_FLIGHT_SECONDS. (Another
  process may write a small file into a run's folder while the run holds its lock: an export's lock, an
  evaluation's result.) False for any other file."""
  found = TEMPORARY_SUFFIX.search(os.path.basename(path.rstrip('/')))
  if not found:
    return False
  pid = found.group(1)
  if is_local(path) and pid:
    return not process_alive(int(pid))
  try:
    return time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9 > IN_FLIGHT_SECONDS
  except tf.errors.NotFoundError:
    return False


def remove_leftovers(directory: str) -> list:
  """Removes what a process killed while writing in `directory` left there: write_atomically's temporary files
  and the temporary folders of a checkpoint cut short (ckpt-N_temp*: TF writes a checkpoint's shards there, then
  renames them into place). Only the directory's own entries and the temporary files in its folders of results
  (eval_*/ and knn_*/: their result_<step>.json); a folder inside may be another run's. Call it only while holding
  the directory's lock (runlock), or on a folder no other process writes but with write_atomically (whose temporary
  files name their writer's pid). Returns the names removed (said in one line)."""
  if not tf.io.gfile.isdir(directory):
    return []
  removed = []
  for entry in sorted(tf.io.gfile.listdir(directory)):
    name = entry.rstrip('/')
    path = os.path.join(directory, name)
    checkpoint_temp = re.fullmatch(r'ckpt-\d+_temp.*', name)
    if checkpoint_temp or (abandoned(path) and not tf.io.gfile.isdir(path)):
      remove(path)
      removed.append(name)
    elif RESULT_FOLDER.fullmatch(name) and tf.io.gfile.isdir(path):
      for inner in sorted(tf.io.gfile.listdir(path)):
        inner_path = os.path.join(path, inner)
        if abandoned(inner_path):
          remove(inner_path)
          removed.append(f'{name}/{inner}')
  if removed:
    log.warning('removed what an interrupted run left unfinished in %s: %s', directory,
                ', '.join(removed[:5]) + (', ...' if len(removed) > 5 else ''))
  return removed


def write_json(path: str, value) -> str:
  return write_atomically(path, json.dumps(value, indent=2, sort_keys=True))


def read_text(path: str) -> str:
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def read_json(path: str):
  return json.loads(read_text(path))


def remove_tree(path: str) -> None:
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)


def remove(path: str) -> None:
  """Removes a file, or a folder with everything in it."""
  if tf.io.gfile.isdir(path):
    tf.io.gfile.rmtree(path)
  else:
    tf.io.gfile.remove(path)


def describe_error(error: Exception) -> str:
  """Why a file operation failed, in a few words (TF's errors and OSError alike)."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror.lower()
  text = str(getattr(error, 'message', error))
  for words in ('No space left on device', 'Read-only file system', 'Permission denied', 'Not a directory',
                'Is a directory', 'File exists', 'No such file or directory', 'Disk quota exceeded'):
    if words.lower() in text.lower():
      return words.lower()
  return first_line(error)


def check_writable_dir(path: str, flag: str) -> None:
  """Creates directory `path` (if missing) and writes and removes a small file in it; a path that cannot be used
  (a regular file, a folder under a file, a read-only or full file system, /proc) is one UserError naming the
  flag, the path and why. Run before any work, so that nothing is computed for a result that cannot be kept."""
  try:
    if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
      raise UserError(f'--{flag}={path} is a file, not a directory; give a directory (a new one is created).')
    tf.io.gfile.makedirs(path)
    probe = os.path.join(path, f'.simclr-tf-write-test-{uuid.uuid4().hex[:8]}')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('simclr-tf checks that it can write here\n')
    tf.io.gfile.remove(probe)
  except UserError:
    raise
  except (tf.errors.OpError, OSError) as e:
    raise UserError(f'--{flag}={path} cannot be written ({describe_error(e)}); give a directory this user can create '
                    f'and write.') from None


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: str, b: str) -> bool:
  """Swaps two local paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where that is not available
  (another OS, an old kernel or C library, a file system without it)."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd = -100
  result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
  if result == 0:
    return True
  code = ctypes.get_errno()
  if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
    return False
  raise OSError(code, os.strerror(code), a)


def replace_directory(new: str, target: str) -> None:
  """Puts the complete local directory `new` at `target`, whose old content (if any) is removed afterwards. A
  reader of `target` finds the old directory or the new one, never neither, where the exchange is atomic (Linux);
  elsewhere the old one is renamed aside and the new one renamed in right after."""
  new, target = new.replace('file://', '', 1), target.replace('file://', '', 1)
  if not os.path.lexists(target):
    os.rename(new, target)
    return
  if _exchange(new, target):
    remove_tree(new)  # now the old one
    return
  aside = f'{target}.old-{uuid.uuid4().hex[:8]}'
  os.rename(target, aside)
  os.rename(new, target)
  remove_tree(aside)
