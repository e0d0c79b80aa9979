"""Reading weights, apart from writing them (simclr_tf.export writes SavedModels, simclr_tf.runtime.checkpoints keeps a
run's training checkpoints): any checkpoint or SavedModel users bring, of this project or of the paper's reference
code, restored into our model.

  file.py       WeightFile: a file's layout, its variables by object path (any filesystem TF knows)
  ours.py       our layout: a variable's object path below the model is its address
  reference.py  the reference code's layouts, mapped by structure; their architecture read from the variables
"""

import logging
from typing import Optional, Tuple

import tensorflow as tf

from simclr_tf.config import architecture_flags
from simclr_tf.errors import UserError
from simclr_tf.weights import ours, reference
from simclr_tf.weights.file import (OURS, OURS_SAVEDMODEL, REFERENCE_CHECKPOINT, REFERENCE_SAVEDMODEL, WeightFile,
                                    is_saved_model)
from simclr_tf.weights.reference import reference_architecture

log = logging.getLogger('simclr_tf')

__all__ = ['OURS', 'OURS_SAVEDMODEL', 'REFERENCE_CHECKPOINT', 'REFERENCE_SAVEDMODEL', 'WeightFile', 'is_saved_model',
           'reference_architecture', 'describe_head', 'restore', 'load_model', 'UserError']


def describe_head(weights: WeightFile) -> Tuple[int, int]:
  """(number of classes of the supervised head (0 = none), number of projection-head layers) in the file."""
  return ours.describe_head(weights) if weights.ours else reference.describe_head(weights)


def restore(model, variables, path, flag: str = 'checkpoint', allow_partial: bool = False) -> Tuple[int, str]:
  """Assigns `variables` of `model` from `path` (a path of any supported layout, or an open WeightFile).
  Returns (count, layout). A file that does not fit the model is one UserError naming the first misfit; so is a
  file with encoder or projection-head variables (of the layers restored) that the model has no place for, unless
  `allow_partial`, which leaves them out and logs them."""
  weights = path if isinstance(path, WeightFile) else WeightFile(path, flag)
  if weights.ours:
    count, unused = ours.restore_variables(model, variables, weights)
  else:
    pairs, unused = reference.assignments(model, variables, weights)
    for v, object_path in pairs:
      v.assign(weights.value(object_path))
    count = len(pairs)
  if unused:
    if not allow_partial:
      raise UserError(f'--{flag}={weights.path} holds {len(unused)} variables the model has no place for, the '
                      f'first {unused[0]} (a deeper or wider network?); check {architecture_flags()}, or pass '
                      f'--partial_checkpoint to start from the rest.')
    log.warning('--partial_checkpoint: left out %d variables of %s that the model has no place for: %s%s',
                len(unused), weights.path, ', '.join(unused[:5]), ', ...' if len(unused) > 5 else '')
  return count, weights.layout


def load_model(config=None, path: str = '', strategy: tf.distribute.Strategy = None, flag: str = 'checkpoint',
               network: str = 'model', name: Optional[str] = None, adopt: bool = True, given=None):
  """A model with every variable of `path` (a model_dir, checkpoint or SavedModel of this project, or of the paper's
  reference code), built as its record says (simclr_tf.weights.architecture): `load_model(path)`, or
  `load_model(config, path)` to set what the record does not decide (precision, --partial_checkpoint) or what a
  config's non-default fields say (`given`: the fields set on purpose; a contradiction with the record is one
  UserError). adopt=False builds `config` as it is (its architecture already adopted). The model knows its class
  names (model.class_names, in label order: () when not recorded). network='momentum_network' loads the momentum
  copy instead (the memory's, or BYOL's target; see WeightFile). `name`: the Keras model's name (default: a unique
  one). Returns (model, the file's WeightFile)."""
  from simclr_tf.config import Config
  from simclr_tf.models.simclr import build_model
  from simclr_tf.weights import architecture
  if isinstance(config, str) and not path:
    config, path, given = Config(), config, frozenset()
  config = config if config is not None else Config()
  if adopt:
    config = architecture.adopt(config, given, path, flag, uses=True)
  weights = WeightFile(path, flag, network)
  num_classes, proj_layers = describe_head(weights)
  class_names = (architecture.recorded_class_names(path, flag) or ()) if num_classes and weights.ours else ()
  with (strategy or tf.distribute.get_strategy()).scope():
    model = build_model(config.architecture, pretraining=False, num_classes=num_classes, proj_keep_layers=proj_layers,
                        class_names=class_names, name=name)
  restore(model, model.weights, weights, flag, allow_partial=config.partial_checkpoint)
  return model, weights
