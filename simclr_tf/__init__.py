"""simclr-tf: SimCLRv2 in TensorFlow 2 / Keras 3.

The public entry points, importable from here (loaded on first use, so that `import simclr_tf` stays cheap):

  Config                  every setting of a run (simclr_tf.config); Config(...).validate()
  run(config, strategy)   runs config.mode (simclr_tf.modes; MODES maps each mode name to its module)
  build_model             the SimCLR network of a config (simclr_tf.models.simclr)
  load_model, restore     a model from, or weights into a model from, any checkpoint or SavedModel of this project
                          or of the paper's reference code (simclr_tf.weights)
  export_saved_model      a model -> a SavedModel with TF-Hub style outputs (simclr_tf.export)
  Task, fit               a training task and the distributed loop that trains it (simclr_tf.training)
  make_strategy           the tf.distribute strategy a config names (simclr_tf.runtime.distribute)
  UserError               what every mistake a user can fix raises (simclr_tf.errors)
"""

import importlib

_PUBLIC = {
    'Config': 'simclr_tf.config',
    'run': 'simclr_tf.modes',
    'MODES': 'simclr_tf.modes',
    'build_model': 'simclr_tf.models.simclr',
    'load_model': 'simclr_tf.weights',
    'restore': 'simclr_tf.weights',
    'export_saved_model': 'simclr_tf.export',
    'Task': 'simclr_tf.training',
    'fit': 'simclr_tf.training',
    'make_strategy': 'simclr_tf.runtime.distribute',
    'UserError': 'simclr_tf.errors',
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
