"""One run per model_dir: model_dir/run.lock names the run that holds it (host, pid, start time).

A second run on the same model_dir stops at once with one line naming the holder. A lock left by a run that died
(kill -9, a crash, a preempted machine) is taken over with a warning: on the same host when its process is gone, on
another host when its heartbeat (rewritten at every loop boundary, at most once a minute) is older than
STALE_SECONDS. The lock is written like every small file (files.write_atomically) and read back: of two runs that
start at the same moment, the one whose lock was overwritten sees it and stops.
"""

import contextlib
import datetime
import logging
import os
import socket
import time
import uuid
from typing import Optional

import tensorflow as tf

from simclr_tf.errors import UserError
from simclr_tf.runtime import files

log = logging.getLogger('simclr_tf')
LOCK_NAME = 'run.lock'
STALE_SECONDS = 600
HEARTBEAT_SECONDS = 60


def _started(holder: dict) -> str:
  return datetime.datetime.fromtimestamp(holder.get('started', 0)).strftime('%Y-%m-%d %H:%M:%S')


class RunLock:
  """Held from acquire() to release(); heartbeat() keeps it fresh."""

  def __init__(self, model_dir: str, path: Optional[str] = None, flag: str = 'model_dir', holder: str = 'run'):
    """The lock of `model_dir` (model_dir/run.lock), or of another target (an export's: `path` beside it)."""
    self.path = path or os.path.join(model_dir, LOCK_NAME)
    self.model_dir = model_dir
    self.flag, self.holder = flag, holder
    self.token = uuid.uuid4().hex
    self.started = time.time()
    self._last_beat = 0.0

  def _record(self) -> dict:
    return dict(host=socket.gethostname(), pid=os.getpid(), started=self.started, heartbeat=time.time(),
                token=self.token)

  def _read(self) -> Optional[dict]:
    try:
      return files.read_json(self.path)
    except (tf.errors.NotFoundError, ValueError):
      return None  # gone, or being replaced

  def _holder_is_running(self, holder: dict) -> bool:
    if holder.get('host') == socket.gethostname():
      return holder.get('pid') != os.getpid() and files.process_alive(int(holder.get('pid', -1)))
    return time.time() - float(holder.get('heartbeat', 0)) < STALE_SECONDS

  def _refuse(self, holder: dict) -> UserError:
    return UserError(f'--{self.flag}={self.model_dir} is in use by another {self.holder} (host {holder.get("host")}, '
                     f'pid {holder.get("pid")}, started {_started(holder)}); wait for it to end or use another '
                     f'--{self.flag}. A lock whose {self.holder} died is taken over (same host: at once; another host: '
                     f'after {STALE_SECONDS // 60} minutes without heartbeat).')

  def acquire(self) -> 'RunLock':
    holder = self._read()
    if holder is not None:
      if self._holder_is_running(holder):
        raise self._refuse(holder)
      if holder.get('pid') != os.getpid() or holder.get('host') != socket.gethostname():
        log.warning('taking over %s from a%s %s that is no longer running (host %s, pid %s, started %s)',
                    self.path, 'n' if self.holder[0] in 'aeiou' else '', self.holder, holder.get('host'),
                    holder.get('pid'), _started(holder))
    self.heartbeat(force=True)
    time.sleep(0.05)  # a run that started at the same moment has written its lock by now
    holder = self._read()
    if holder is None or holder.get('token') != self.token:
      raise self._refuse(holder or {})
    return self

  def check_free(self) -> None:
    """Refuses (one UserError naming the holder) when another live process holds the lock; takes nothing."""
    holder = self._read()
    if holder is not None and self._holder_is_running(holder):
      raise self._refuse(holder)

  def heartbeat(self, force: bool = False) -> None:
    now = time.time()
    if force or now - self._last_beat >= HEARTBEAT_SECONDS:
      files.write_json(self.path, self._record())
      self._last_beat = now

  def release(self) -> None:
    holder = self._read()
    if holder is not None and holder.get('token') == self.token:
      tf.io.gfile.remove(self.path)


_held: Optional[RunLock] = None


@contextlib.contextmanager
def held(model_dir: str, enabled: bool = True):
  """Holds model_dir's lock for the block (a training mode, from its first write to its last): `enabled` is False on
  the workers of a cluster other than the chief."""
  global _held
  if not enabled:
    yield None
    return
  lock = RunLock(model_dir).acquire()
  previous, _held = _held, lock
  try:
    yield lock
  finally:
    _held = previous
    lock.release()


def heartbeat() -> None:
  """Refreshes the lock held by this process, if any (at most once a minute)."""
  if _held is not None:
    _held.heartbeat()
