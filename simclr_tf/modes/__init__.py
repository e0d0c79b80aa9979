"""The modes of run.py, one module each. A mode is a module with

  validate(config)        raises simclr_tf.errors.UserError naming the flag when the config cannot run
  run(config, strategy)   does the work; returns a dict of results (what it measured, where it wrote)

and one entry in MODES; optionally

  wait(config)            called before the model --checkpoint names is read: waits for it to appear (eval)

Training modes describe a simclr_tf.training.Task and hand it to simclr_tf.training.fit;
simclr_tf.modes.common holds what several modes share. A mode's module is imported when it is first looked up
(it imports TensorFlow), so the names are known without it.
"""

from types import ModuleType
from typing import Mapping

from simclr_tf.errors import UserError
from simclr_tf.lazy_modules import LazyModules


MODES: Mapping[str, ModuleType] = LazyModules({
    'pretrain': 'simclr_tf.modes.pretrain',
    'finetune': 'simclr_tf.modes.finetune',
    'distill': 'simclr_tf.modes.distill',
    'eval': 'simclr_tf.modes.evaluate',
    'export': 'simclr_tf.modes.export',
    'embed': 'simclr_tf.modes.embed',
    'knn': 'simclr_tf.modes.knn',
})


def get(name: str) -> ModuleType:
  """The module of mode `name`."""
  if name not in MODES:
    raise UserError(f'--mode={name} is not one of {", ".join(MODES)}.')
  return MODES[name]


def validate(config):
  """Config.check_fields, then the rules of its mode; returns the config."""
  config.check_fields()
  get(config.mode).validate(config)
  return config


def prepare(config, given=None):
  """The config a mode runs: check_fields, the mode's wait (if it has one), then the architecture of the model its
  --checkpoint names adopted from that model's record (simclr_tf.weights.architecture.adopt; `given`: the fields
  the user set, None for a Config built in Python: those that differ from the defaults), then the mode's rules."""
  from simclr_tf.weights import architecture
  config.check_fields()
  waiting = getattr(get(config.mode), 'wait', None)
  if waiting is not None:
    waiting(config)
  return validate(architecture.adopt(config, given))


def check_places(config) -> None:
  """Before any work: the places the mode writes can be used (simclr_tf.modes.common.check_places)."""
  from simclr_tf.modes import common
  common.check_places(config, getattr(get(config.mode).run, 'training', False))


def run(config, strategy=None, places_checked: bool = False, given=None, prepared: bool = False) -> dict:
  """Prepares `config` (unless `prepared`; `given` as in prepare), checks the places it writes (unless
  `places_checked`) and runs its mode on `strategy` (default: the one --strategy names, made here)."""
  from simclr_tf.runtime import distribute
  if not prepared:
    config = prepare(config, given)
  if not places_checked:
    check_places(config)
  if strategy is None:
    strategy = distribute.make_strategy(config)
  return get(config.mode).run(config, strategy)
