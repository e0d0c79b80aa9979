"""The self-supervised methods --mode=pretrain can train (--method), by name. Importing this imports no TensorFlow:
a method's module is imported when it is first looked up.

A method is a module of simclr_tf.methods with
  make_task(config, strategy, source, num_classes=0, num_examples=0)
                                     the simclr_tf.training.Task it trains, built in the strategy's scope: the
                                     online SimCLR model (encoder, projection head, and the linear head trained on a
                                     stop-gradient when num_classes > 0), the optimizer, the views and the step;
                                     what else changes during training (a momentum network, a predictor, a queue)
                                     in the task's extra_checkpoint. Without a source (benchmarks), num_examples
                                     sets the schedule.
  exported_model(config, task)       the model a SavedModel of the run holds (its encoder is what users reuse)
beside it a settings module, <module>_settings.py, without TensorFlow (simclr_tf.settings: its Settings, their
checks, and validate(config), the rules of pretraining with it), and one entry here. The pieces methods share:
simclr_tf.methods.momentum (a momentum network), simclr_tf.methods.memory (a queue of negatives),
simclr_tf.methods.losses, simclr_tf.models.heads (projection, predictor and supervised heads).
"""

from types import ModuleType
from typing import Mapping

from simclr_tf.lazy_modules import LazyModules

METHODS: Mapping[str, ModuleType] = LazyModules({
    'simclr': 'simclr_tf.methods.simclr',
    'byol': 'simclr_tf.methods.byol',
})
