"""Writing result files so that a reader (or a crash) never sees half of one."""

import json
import os


def write_atomically(path: str, text: str) -> str:
  """Writes `text` to path through a temporary file renamed into place."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def write_json(path: str, value) -> str:
  return write_atomically(path, json.dumps(value, indent=2, sort_keys=True))
