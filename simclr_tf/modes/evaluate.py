"""--mode=eval: top-1/top-5/loss of a checkpoint's supervised head on --eval_split (default: test), written to
eval_<split>.json in --model_dir (default: the checkpoint's directory)."""

from typing import Dict

import tensorflow as tf

from simclr_tf import checkpoints, weights
from simclr_tf.config import Config
from simclr_tf.errors import UserError
from simclr_tf.modes import common


def validate(config: Config) -> None:
  common.require(config.checkpoint, f'--mode={config.mode} needs --checkpoint.')
  common.require_data(config)


def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, float]:
  config = config.replace(eval_split=config.eval_split or 'test', model_dir=common.results_dir(config))
  model, found = weights.load_model(config, config.checkpoint, strategy, adopt=False)  # adopted: modes.prepare
  if model.supervised_head is None:
    raise UserError(f'{config.checkpoint} has no supervised head to evaluate (pretrain with labels and '
                    f'--lineareval_while_pretraining, or fine-tune it first).')
  return common.evaluate_and_record(config, strategy, model, checkpoints.checkpoint_step(found.prefix),
                                    checkpoint=found.prefix)
