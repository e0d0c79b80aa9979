"""The run's record: everything needed to rebuild and use a model, written once it is proven and carried with the
model, so that no reader has to re-derive it.

A record is a JSON object: every Config field of the run that wrote the model (ARCHITECTURE_FIELDS decide the
network; the rest let a resume tell what changed) and `class_names`, the supervised head's classes in label order
([] when there is no head; absent in records written before class names were kept), and, in a training run's
record, `total_steps`, the step it trains to (what an evaluator beside it waits for). It travels three ways:

  model_dir/config.json     written by a training run once its start or restore succeeded, atomically
  SAVEDMODEL/config.json    the copy in every SavedModel we export
  inside each checkpoint    the string variable `record` (VARIABLE) holding the same JSON, so that a bare
                            ckpt-N copied anywhere still knows its model; checkpoints of earlier versions lack it

Reading is defensive: a record cut short, emptied, or edited into the wrong types is one UserError naming the file,
what is wrong and what to do (parse), never a traceback.
"""

import dataclasses
import json
import logging
from typing import Optional, Tuple

import tensorflow as tf

from simclr_tf.config import ARCHITECTURE_FIELDS, Config
from simclr_tf.errors import UserError
from simclr_tf.runtime import files

log = logging.getLogger('simclr_tf')

CLASS_NAMES = 'class_names'
TOTAL_STEPS = 'total_steps'
VARIABLE = 'record'  # the variable's name in a checkpoint's object graph
CHECKPOINT_KEY = f'{VARIABLE}/.ATTRIBUTES/VARIABLE_VALUE'

_TYPES = {'int': int, 'float': float, 'str': str, 'bool': bool}


def make(config: Config, class_names=(), total_steps: Optional[int] = None) -> dict:
  """The record of a model of `config` whose supervised head has `class_names` (in label order); a training run
  gives the step it trains to."""
  made = dict(dataclasses.asdict(config), **{CLASS_NAMES: list(class_names or ())})
  if total_steps is not None:
    made[TOTAL_STEPS] = int(total_steps)
  return made


def dumps(record: dict) -> str:
  return json.dumps(record, indent=2, sort_keys=True)


def to_json(config: Config, class_names=(), total_steps: Optional[int] = None) -> str:
  return dumps(make(config, class_names, total_steps))


DEFAULT_ADVICE = 'restore it from a copy, or delete it (a run of ours then falls back on its checkpoint\'s own record)'


def parse(text: str, where: str, advice: str = DEFAULT_ADVICE) -> dict:
  """The record in `text` (read from `where`, named in errors). Empty, cut short, not an object, or a field of the
  wrong type: one UserError naming the file, what is wrong and `advice`."""
  if not text.strip():
    raise UserError(f'{where} is empty (a write was cut short?); {advice}.')
  try:
    values = json.loads(text)
  except ValueError as e:
    raise UserError(f'{where} is not valid JSON ({getattr(e, "msg", e)} at line {getattr(e, "lineno", "?")}: cut '
                    f'short or edited?); {advice}.') from None
  if not isinstance(values, dict):
    raise UserError(f'{where} holds {type(values).__name__ if values is not None else "null"}, not a record of '
                    f'settings; {advice}.')
  for f in dataclasses.fields(Config):
    if f.name not in values:
      continue
    value = values[f.name]
    kind = f.type if isinstance(f.type, type) else _TYPES[str(f.type)]
    fits = (isinstance(value, bool) if kind is bool else
            isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
            isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
    if not fits:
      raise UserError(f'{where}: "{f.name}" is {json.dumps(value)} ({type(value).__name__}), not a '
                      f'{kind.__name__}; fix the value, or {advice}.')
  names = values.get(CLASS_NAMES, [])
  if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
    raise UserError(f'{where}: "{CLASS_NAMES}" is not a list of names; fix it, or {advice}.')
  steps = values.get(TOTAL_STEPS, 0)
  if not (isinstance(steps, int) and not isinstance(steps, bool)):
    raise UserError(f'{where}: "{TOTAL_STEPS}" is {json.dumps(steps)}, not a number of steps; fix it, or {advice}.')
  return values


def read(path: str, advice: str = DEFAULT_ADVICE) -> Optional[dict]:
  """The record in file `path` (parse), or None when there is no such file."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    text = files.read_text(path)
  except (tf.errors.OpError, UnicodeDecodeError) as e:
    raise UserError(f'{path} cannot be read ({files.describe_error(e)}); {advice}.') from None
  return parse(text, path, advice)


def of_checkpoint(prefix: str) -> Optional[dict]:
  """The record inside the checkpoint at `prefix`, or None for a checkpoint written before records were kept
  there (or not by us)."""
  from simclr_tf.runtime import checkpoints
  try:
    reader = checkpoints.read_checkpoint(prefix)
    if not reader.has_tensor(CHECKPOINT_KEY):
      return None
    text = reader.get_tensor(CHECKPOINT_KEY)
  except (tf.errors.OpError, ValueError, IndexError, EOFError):  # TF raises IndexError for a truncated data file
    return None  # an unreadable checkpoint is reported by whoever reads its weights
  return parse(text.decode() if isinstance(text, bytes) else str(text), f'the record inside {prefix}',
               'that checkpoint was not written whole; use the one before it')


def class_names(record: Optional[dict]) -> Optional[Tuple[str, ...]]:
  """The recorded class names in label order; None when the record does not say (written before they were kept,
  or no record at all)."""
  if not record or CLASS_NAMES not in record:
    return None
  return tuple(record[CLASS_NAMES])


def total_steps(record: Optional[dict]) -> Optional[int]:
  """The step the recorded training run trains to; None when the record does not say (an export's record, one
  written before it was kept, or no record)."""
  return record.get(TOTAL_STEPS) if record else None


def architecture(record: dict) -> dict:
  """The record's ARCHITECTURE_FIELDS (those it has)."""
  return {k: record[k] for k in ARCHITECTURE_FIELDS if k in record}
