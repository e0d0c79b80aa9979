"""The architecture (and classes) of a model a mode reads (--checkpoint, --teacher, simclr_tf.load_model), so that
no user has to repeat it in flags: from the record its run wrote (simclr_tf.record) — the checkpoint's own record,
else the config.json beside the checkpoints of a model_dir or inside a SavedModel this project exported — or, for
the paper's reference files, which carry none, from their variables' paths and shapes.

Which fields a reader adopts (reader_fields) depends on what it does with the model:
- it *uses* the model as it is (eval, export, embed, knn, a distillation teacher, load_model): every field of
  ARCHITECTURE_FIELDS, the layer the supervised head sits on (ft_proj_selector) included;
- it *starts* a new model from it (finetune, distill's student): the encoder's and the projection head's shape;
  where the new supervised head sits and batch norm's settings are the new run's own flags.
Flags the user gave win when they agree; an encoder or head flag that contradicts the record is one line naming both
values (with --partial_checkpoint the flags win: a different network starts from the parts that fit). The image
size is a choice of the data too (fine-tuning at another resolution), so a given --image_size is always kept; so
are given batch-norm settings.
"""

import logging
import os
from typing import Optional, Tuple

from simclr_tf import record
from simclr_tf.config import HEAD_FIELDS, INPUT_FIELDS, NORMALIZATION_FIELDS, PROJECTION_FIELDS, Config
from simclr_tf.errors import UserError
from simclr_tf.models.registry import ENCODER_FIELDS
from simclr_tf.runtime import checkpoints
from simclr_tf.weights.file import WeightFile, is_saved_model, saved_model_in
from simclr_tf.weights.reference import reference_architecture

log = logging.getLogger('simclr_tf')

CHOSEN_BY_FLAGS = INPUT_FIELDS + NORMALIZATION_FIELDS  # taken from the record unless given, never a contradiction
STARTING_MODES = ('finetune', 'distill')  # --checkpoint starts a new model (a new supervised head) from the file
CONFIG_ADVICE = ('restore it from a copy, or delete it: the checkpoint beside it then tells the architecture if it '
                 'was written by simclr-tf 2026-12 or later (else give the architecture flags)')


def recorded_architecture(path: str, flag: str = 'checkpoint', ft_proj_selector: int = 0) -> Tuple[dict, str]:
  """(the record of the model in `path`, where that was read): the checkpoint's own record, else the config.json
  beside it or inside the SavedModel, else (the reference code's files) Config fields read from the variables.
  A file of ours with no record at all is one UserError (nothing tells its architecture); so is a record that
  cannot be read (simclr_tf.record.parse)."""
  if is_saved_model(path):
    found = _config_json(path)
    if found:
      return found
  else:
    prefix = checkpoints.latest_checkpoint(path)
    own = record.of_checkpoint(prefix) if prefix else None
    if own is not None:
      return own, f'{prefix} (its own record)'
    directory = checkpoints.directory_of(path)
    candidates = [directory]
    if prefix is None and saved_model_in(directory):
      candidates.append(saved_model_in(directory))
    for folder in candidates:
      found = _config_json(folder)
      if found:
        return found
  weights = WeightFile(path, flag)
  if weights.ours:
    directory = checkpoints.directory_of(path)
    raise UserError(f'--{flag}={path}: no config.json in {directory or "."} to tell the architecture (give the '
                    f'model_dir of a run, or a SavedModel this project exported).')
  return reference_architecture(weights, ft_proj_selector), f'the variables of the {weights.layout} {weights.path}'


def _config_json(folder: str) -> Optional[Tuple[dict, str]]:
  path = os.path.join(folder, 'config.json')
  found = record.read(path, CONFIG_ADVICE)
  return (found, path) if found is not None else None


def reader_fields(recorded: dict, uses: bool) -> Tuple[str, ...]:
  """The fields a reader adopts from `recorded`, for its encoder family (a record from before --encoder is a
  ResNet's): `uses` = the reader uses the model as it is, head included (see the module's docstring)."""
  family = recorded.get('encoder', 'resnet')
  if family not in ENCODER_FIELDS:
    raise UserError(f'the recorded encoder {family!r} is not one of this version\'s ({", ".join(ENCODER_FIELDS)}).')
  return (('encoder',) + ENCODER_FIELDS[family] + (HEAD_FIELDS if uses else PROJECTION_FIELDS) + INPUT_FIELDS +
          (NORMALIZATION_FIELDS if uses else ()))


def given_in_python(config: Config) -> frozenset:
  """What a Config built in Python says on purpose: the fields whose values differ from the defaults (the flags a
  command line would have given)."""
  default = Config()
  return frozenset(name for name in vars(default) if getattr(config, name) != getattr(default, name))


def adopt(config: Config, given=None, path: str = '', flag: str = 'checkpoint', uses: Optional[bool] = None
          ) -> Config:
  """`config` with the architecture recorded for `path` (default: its --checkpoint) where the fields in `given`
  (the names the user set; None: given_in_python) do not say it. `uses`: whether the reader uses the model as it
  is (default: every mode but those that start a new model from --checkpoint). The same Config without a path."""
  path = path or config.checkpoint
  if not path:
    return config
  given = given_in_python(config) if given is None else given
  uses = config.mode not in STARTING_MODES if uses is None else uses
  try:
    recorded, source = recorded_architecture(path, flag, config.ft_proj_selector)
  except UserError as e:
    if config.mode != 'eval' or path != config.model_dir:
      raise
    # --mode=eval without --checkpoint evaluates --model_dir, as the reference code does (reference_cli).
    raise UserError(f'--mode={config.mode} needs --checkpoint, or a --model_dir holding a run to evaluate: '
                    f'{e}') from None
  changes, defaults = {}, []
  for name in reader_fields(recorded, uses):
    if name not in recorded:
      if name != 'encoder' and name not in given:  # a record of an earlier version
        defaults.append(f'{name}={getattr(Config(), name)}')
      continue
    value, flagged = recorded[name], getattr(config, name)
    if name in given:
      if value != flagged and name not in CHOSEN_BY_FLAGS and not config.partial_checkpoint:
        raise UserError(f'--{name}={flagged} contradicts the --{flag}\'s architecture ({name}={value}, from '
                        f'{source}); drop the flag to use the recorded one, or add --partial_checkpoint to start '
                        f'a different network from the parts that fit.')
      continue
    if value != flagged:
      changes[name] = value
  if defaults:
    log.info('%s records no %s (written by an earlier version): took the default%s', source,
             ', '.join(d.split('=')[0] for d in defaults), ' ' + ', '.join(defaults))
  if changes:
    log.info('architecture of --%s from %s: %s', flag, source,
             ', '.join(f'{name}={value}' for name, value in changes.items()))
  return config.replace(**changes)


def recorded_class_names(path: str, flag: str = 'checkpoint') -> Optional[Tuple[str, ...]]:
  """The class names recorded for the model in `path`, in label order (None: not recorded)."""
  recorded, _ = recorded_architecture(path, flag)
  return record.class_names(recorded)
