"""The encoder families a SimCLR model can have (--encoder), by name. Importing this imports no TensorFlow: a
family's module is imported when it is first looked up; its settings module (TF-free) is read here.

An encoder family is a module of simclr_tf.models with
  ATTRIBUTE                the SimCLR model's attribute that holds the encoder: the first name of the path of each
                           of its variables in every checkpoint and SavedModel (so it never changes)
  build(settings)          the encoder (a Keras layer) of a ModelSettings: call(images, training) -> dict of named
                           outputs, `final_avg_pool` [N, D] the representation; .output_dim (D);
                           .freeze_through(stage) (--fine_tune_after_block)
  output_keys(settings)    the names of its outputs, in order
  describe(settings)       a short name for logs, e.g. 'ResNet-18 0.25x'
beside it a settings module, <module>_settings.py (simclr_tf.settings: its Settings, their checks and its number
of stages), and one line in ENCODER_MODULES here.
"""

from types import ModuleType
from typing import Mapping

from simclr_tf.lazy_modules import LazyModules
from simclr_tf.settings import field_names

ENCODER_MODULES = {
    'resnet': 'simclr_tf.models.resnet',
    'vit': 'simclr_tf.models.vit',
}

ENCODERS: Mapping[str, ModuleType] = LazyModules(ENCODER_MODULES)
# The settings each family's encoder is built from (the fields of its settings module's Settings).
ENCODER_FIELDS = {name: field_names(ENCODERS.settings(name).Settings) for name in ENCODERS}
