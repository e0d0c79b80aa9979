"""--mode=knn: weighted kNN classification of --eval_split (default: test) by the features (--embed_output,
default final_avg_pool; cosine similarity) of --train_split, with --knn_k neighbours and votes
exp(similarity / --knn_temperature) as in InstDisc and lightly, and a linear probe fitted to the same features;
top-1/top-5 to model_dir/knn_<split>.json. With --label_fraction, the memory (and the probe) hold the labelled
subset a fine-tuning with the same --label_fraction and --seed trains on."""

import logging
from typing import Dict

import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.evaluation import knn_evaluate, write_result
from simclr_tf.modes import common
from simclr_tf.runtime import checkpoints, distribute

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_encoder_use(config)


def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, object]:
  config = config.replace(eval_split=config.eval_split or 'test')
  model, found, model_dir = common.load_encoder(config, strategy)
  memory = common.knn_source(config, config.train_split, 'memory (--train_split)')
  queries = common.knn_source(config, config.eval_split, '--eval_split', memory.class_names)
  if config.label_fraction < 1:
    memory, _ = inputs.label_fraction_source(memory, config.label_fraction, config.seed)
  result = knn_evaluate(common.Pooled(model, config.embed_output), config, memory, queries, config.embed_output)
  result.update(split=config.eval_split, memory_split=config.train_split, label_fraction=config.label_fraction,
                temperature=config.knn_temperature, output=config.embed_output, checkpoint=found.prefix,
                step=checkpoints.checkpoint_step(found.prefix))
  log.info('kNN (k=%d, T=%g, %s) on %s: top1 %.4f  top5 %.4f  (%d examples, memory %d); linear probe top1 %.4f',
           result['k'], config.knn_temperature, config.embed_output, config.eval_split, result['top1'],
           result['top5'], result['num_examples'], result['memory_examples'], result['linear_probe_top1'])
  if distribute.is_chief(strategy):
    result['path'] = write_result(model_dir, config.eval_name or config.eval_split, result, kind='knn')
  return result
