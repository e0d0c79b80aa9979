"""The encoder families a SimCLR model can have (--encoder), by name. Importing this imports no TensorFlow: a
family's module is imported when it is first looked up.

An encoder family is a module of simclr_tf.models with
  ATTRIBUTE                the SimCLR model's attribute that holds the encoder: the first name of the path of each
                           of its variables in every checkpoint and SavedModel (so it never changes)
  build(settings)          the encoder (a Keras layer) of a ModelSettings: call(images, training) -> dict of named
                           outputs, `final_avg_pool` [N, D] the representation; .output_dim (D);
                           .freeze_through(stage) (--fine_tune_after_block)
  output_keys(settings)    the names of its outputs, in order
  describe(settings)       a short name for logs, e.g. 'ResNet-18 0.25x'
and, here, its name in ENCODER_MODULES and the Config fields it reads in ENCODER_FIELDS (config.py declares them as
flags and checks their values).
"""

from types import ModuleType
from typing import Mapping

from simclr_tf.lazy_modules import LazyModules

ENCODER_MODULES = {
    'resnet': 'simclr_tf.models.resnet',
    'vit': 'simclr_tf.models.vit',
}
ENCODER_FIELDS = {
    'resnet': ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio'),
    'vit': ('vit_depth', 'vit_width', 'vit_heads', 'vit_patch_size', 'vit_mlp_ratio', 'vit_pooling',
            'vit_frozen_patch_embedding'),
}


ENCODERS: Mapping[str, ModuleType] = LazyModules(ENCODER_MODULES)
