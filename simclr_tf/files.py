"""Files on any filesystem TF knows (local paths, file://, gs://, ram://, plug-ins), written so that a reader (or a
crash) never takes half of one for a finished one.

Every read, write, listing, delete and rename of a user path goes through tf.io.gfile. What is atomic where:
- a small file (config.json, results, metrics) is written to a temporary name beside it and renamed into place:
  atomic on local disks (rename(2)); on GCS an object appears whole when its write or copy completes, so the file
  is either the old one or the new one there too;
- a SavedModel is complete once its saved_model.pb exists, which TF writes after the variables: on local disks it
  is written to a temporary directory that is renamed into place; elsewhere (object stores have no directory
  rename) the old one is removed first and the new one written in place;
- checkpoints: TF writes the data and index files, then the `checkpoint` state file that names them.
"""

import json
import os
import uuid

import tensorflow as tf


def is_local(path: str) -> bool:
  """A path on the local filesystem (a plain path or a file:// URI), where rename is atomic."""
  return '://' not in path or path.startswith('file://')


def parent(path: str) -> str:
  return os.path.dirname(path.rstrip('/'))


def write_atomically(path: str, text) -> str:
  """Writes `text` (str or bytes) to `path` through a temporary file beside it, renamed into place."""
  directory = parent(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  with tf.io.gfile.GFile(tmp, 'wb' if isinstance(text, bytes) else 'w') as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


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
