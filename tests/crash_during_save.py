"""Runs run.py but kills the process (SIGKILL) in the middle of writing checkpoint number CRASH_AT_SAVE: after the
checkpoint files are written, before the checkpoint state file names them, the worst moment to lose a process."""

import os
import runpy
import signal
import sys

from simclr_tf.runtime import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == '__main__':
  crash_at = int(os.environ['CRASH_AT_SAVE'])
  saves = []

  def save_then_die(self, step):
    saves.append(step)
    if len(saves) == crash_at:
      self.checkpoint.write(os.path.join(self.manager.directory, f'{checkpoints.CHECKPOINT_NAME}-{step}'))
      os.kill(os.getpid(), signal.SIGKILL)
    return self.manager.save(checkpoint_number=step)

  checkpoints.CheckpointKeeper.save = save_then_die
  sys.argv = [os.path.join(ROOT, 'run.py')] + sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name='__main__')
