"""The architecture of a model a mode reads (--checkpoint, --teacher), so that no user has to repeat it in flags:
from the config.json its run wrote (beside the checkpoints of a model_dir, or inside a SavedModel this project
exported), or, for the paper's reference files, which carry none, from their variables' paths and shapes.

Which fields come from the file: the encoder family and that family's fields, the projection head's depth and
width, and the image size (which picks the ResNet's CIFAR or ImageNet stem and a ViT's position embeddings).
Flags the user gave win when they agree; an encoder or head flag that contradicts the file is one line naming both
values (with --partial_checkpoint the flags win: a different network starts from the parts that fit). The image
size is a choice of the data too (fine-tuning at another resolution), so a given --image_size is always kept.
"""

import logging
import os
from typing import Tuple

import tensorflow as tf

from simclr_tf import checkpoints, files
from simclr_tf.config import Config
from simclr_tf.models.registry import ENCODER_FIELDS
from simclr_tf.errors import UserError
from simclr_tf.weights.file import WeightFile, is_saved_model, saved_model_in
from simclr_tf.weights.reference import reference_architecture

log = logging.getLogger('simclr_tf')

HEAD_FIELDS = ('num_proj_layers', 'proj_out_dim')
DATA_CHOSEN = ('image_size',)  # taken from the file unless given, never a contradiction


def recorded_architecture(path: str, flag: str = 'checkpoint', ft_proj_selector: int = 0) -> Tuple[dict, str]:
  """({Config field: value} of the network in `path`, where that was read). A file of ours without a config.json
  beside it is one UserError (nothing tells its architecture)."""
  directory = checkpoints.directory_of(path)
  candidates = [path] if is_saved_model(path) else []
  candidates.append(directory)
  if not is_saved_model(path) and checkpoints.latest_checkpoint(directory) is None and saved_model_in(directory):
    candidates.append(saved_model_in(directory))
  for folder in candidates:
    config_path = os.path.join(folder, 'config.json')
    if tf.io.gfile.exists(config_path):
      return files.read_json(config_path), config_path
  found = WeightFile(path, flag)
  if found.ours:
    raise UserError(f'--{flag}={path}: no config.json in {directory or "."} to tell the architecture (give the '
                    f'model_dir of a run, or a SavedModel this project exported).')
  return reference_architecture(found, ft_proj_selector), f'the variables of the {found.layout} {found.path}'


def fields_of(recorded: dict) -> Tuple[str, ...]:
  """The fields a file decides, for the encoder family it records (a file from before --encoder is a ResNet)."""
  family = recorded.get('encoder', 'resnet')
  if family not in ENCODER_FIELDS:
    raise UserError(f'the recorded encoder {family!r} is not one of this version\'s ({", ".join(ENCODER_FIELDS)}).')
  return ('encoder',) + ENCODER_FIELDS[family] + HEAD_FIELDS + DATA_CHOSEN


def adopt(config: Config, given=frozenset()) -> Config:
  """`config` with the architecture of its --checkpoint where the flags in `given` (the names the user set) do not
  say it. The same Config when there is no --checkpoint."""
  if not config.checkpoint:
    return config
  try:
    recorded, source = recorded_architecture(config.checkpoint, 'checkpoint', config.ft_proj_selector)
  except UserError as e:
    if config.mode != 'eval' or config.checkpoint != config.model_dir:
      raise
    # --mode=eval without --checkpoint evaluates --model_dir, as the reference code does (reference_cli).
    raise UserError(f'--mode={config.mode} needs --checkpoint, or a --model_dir holding a run to evaluate: '
                    f'{e}') from None
  recorded.setdefault('encoder', 'resnet')
  changes = {}
  for name in fields_of(recorded):
    if name not in recorded:
      continue
    value, flagged = recorded[name], getattr(config, name)
    if name in given:
      if value != flagged and name not in DATA_CHOSEN and not config.partial_checkpoint:
        raise UserError(f'--{name}={flagged} contradicts the --checkpoint\'s architecture ({name}={value}, from '
                        f'{source}); drop the flag to use the checkpoint\'s, or add --partial_checkpoint to start '
                        f'a different network from the parts that fit.')
      continue
    if value != flagged:
      changes[name] = value
  if changes:
    log.info('architecture of --checkpoint from %s: %s', source,
             ', '.join(f'{name}={value}' for name, value in changes.items()))
  return config.replace(**changes)
