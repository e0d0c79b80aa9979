"""--mode=export: a checkpoint or SavedModel of any supported layout (ours, or the paper's reference code's) ->
this project's SavedModel at --export_dir (default: model_dir/saved_model). With --export_momentum_network, the
momentum network of a pretraining checkpoint with a memory of negatives or of BYOL (its target)."""

import logging
from typing import Dict

import tensorflow as tf

from simclr_tf import export, record, weights
from simclr_tf.config import Config
from simclr_tf.modes import common
from simclr_tf.runtime import checkpoints

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.require(config.checkpoint, f'--mode={config.mode} needs --checkpoint.')
  common.require(config.export_dir or config.model_dir,
                 '--mode=export needs --export_dir (or --model_dir, to write model_dir/saved_model).')


def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, str]:
  network = 'momentum_network' if config.export_momentum_network else 'model'
  model, found = weights.load_model(config, config.checkpoint, strategy, network=network, adopt=False)
  versioned = config.keep_export_versions and not found.saved_model  # the checkpoint's step names the version
  step = checkpoints.checkpoint_step(found.prefix) if versioned else -1
  path = export.export_saved_model(model, common.export_path(config), record.to_json(config, model.class_names),
                                   common.protected_paths(config), config.keep_export_versions, step)
  log.info('exported %s (%s) to %s', config.checkpoint, found.layout, path)
  return {'export_dir': path, 'source_layout': found.layout}
