"""Runs run.py, dying (SIGKILL) inside one of its small-file writes (files.write_atomically: the record,
metrics.jsonl, result files, locks, the SavedModel's config.json), or only counting them.

  KILL_AT_WRITE=N KILL_HOW=torn|written   die in the N-th write: with half its bytes in the temporary file (torn),
                                          or with the whole temporary file written, just before its rename (written);
                                          a lock's heartbeats (rewrites, as often as the clock says) are not counted
  WRITES_LOG=PATH                         append each write's file name to PATH (the writes of a whole run)
"""

import os
import runpy
import signal
import sys

from simclr_tf.runtime import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == '__main__':
  kill_at = int(os.environ.get('KILL_AT_WRITE', '0'))
  how = os.environ.get('KILL_HOW', 'written')
  log_path = os.environ.get('WRITES_LOG')
  original = files.write_atomically
  writes = []

  def write_then_maybe_die(path, text):
    if path in writes and path.endswith(('run.lock', '.simclr-tf-lock')):
      # A lock's heartbeat: as many as the clock makes (a run slowed down by a busy machine makes more), so not
      # counted, or the N-th write would name another file, or none, from one run to the next. Its first write is.
      return original(path, text)
    writes.append(path)
    if log_path:
      with open(log_path, 'a') as f:
        f.write(os.path.basename(path) + '\n')
    if len(writes) == kill_at:
      data = text.encode() if isinstance(text, str) else text
      tmp = f'{path}.tmp-{os.getpid()}-{"0" * 8}'
      os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
      with open(tmp, 'wb') as f:
        f.write(data[:len(data) // 2] if how == 'torn' else data)
      os.kill(os.getpid(), signal.SIGKILL)
    return original(path, text)

  files.write_atomically = write_then_maybe_die
  sys.argv = [os.path.join(ROOT, 'run.py')] + sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name='__main__')
