"""Training checkpoints in model_dir: save every N steps keeping K, resume from the latest complete one.

TF writes a checkpoint's data and index files first and the `checkpoint` state file last, atomically, so a run
killed while saving resumes from the previous complete checkpoint.
"""

import os
from typing import Optional

import tensorflow as tf

from simclr_tf.config import UserError

CHECKPOINT_NAME = 'ckpt'


def latest_checkpoint(path: str) -> Optional[str]:
  """The checkpoint prefix `path` names: a directory's latest checkpoint, or a prefix itself; None if none."""
  if os.path.isdir(path):
    return tf.train.latest_checkpoint(path)
  if tf.io.gfile.exists(path + '.index'):
    return path
  return None


class CheckpointKeeper:
  """The model, optimizer and step of a training run, saved to and restored from one directory."""

  def __init__(self, directory: str, max_to_keep: int, **objects):
    self.checkpoint = tf.train.Checkpoint(**objects)
    self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep,
                                              checkpoint_name=CHECKPOINT_NAME)

  @property
  def latest(self) -> Optional[str]:
    return self.manager.latest_checkpoint

  def restore_latest(self) -> Optional[str]:
    """Restores the latest checkpoint of the directory, if any; every variable must be found in it."""
    path = self.latest
    if path:
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise UserError(f'{path} does not fit this model (a different architecture in the same --model_dir?): '
                        f'{str(e).splitlines()[0][:300]}') from None
    return path

  def save(self, step: int) -> str:
    return self.manager.save(checkpoint_number=step)
