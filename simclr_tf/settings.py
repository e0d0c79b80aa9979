"""How a setting is declared: one field of a frozen dataclass, with its default, its help text (the flag's), its
choices and whether a resumed run may change it. Imports no TensorFlow (run.py declares flags from these before
anything heavy is loaded).

config.py declares the settings common to every run; each encoder family and each self-supervised method declares
its own in a module beside its code, named after it with `_settings` (simclr_tf/models/vit_settings.py for
simclr_tf/models/vit.py, simclr_tf/methods/byol_settings.py for simclr_tf/methods/byol.py), holding
  Settings          a frozen dataclass of its fields, each made with setting()
  checks(config)    [(ok, message)]: the rules of its fields' values (message: one line naming the flag), checked
                    by Config.check_fields when the family or method is the one selected
and, for an encoder family, stages(config) -> (number of stages, what they are) for --fine_tune_after_block;
for a method, validate(config): the rules of pretraining with it (raises simclr_tf.errors.UserError).
simclr_tf.config.Config is the common fields and every registered owner's, in one flat dataclass: the flags stay
flat, and a new family or method edits its registry line, not config.py.
"""

import dataclasses
import importlib
from types import ModuleType
from typing import Tuple


def setting(default, help_text: str, choices=None, resumable: bool = False):
  """A field of a settings dataclass. `resumable`: a run resumed in its model_dir may change it (it does not change
  what is trained: paths, logging, evaluation, hardware; or it only extends the run)."""
  return dataclasses.field(default=default, metadata={'help': help_text, 'choices': choices,
                                                      'resumable': resumable})


def settings_module(module_name: str) -> ModuleType:
  """The TF-free settings module of the owner implemented in `module_name` (`<module_name>_settings`)."""
  return importlib.import_module(module_name + '_settings')


def field_names(settings_class) -> Tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(settings_class))
