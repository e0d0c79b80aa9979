"""The training loop's extension points, through the pretraining task of simclr_tf.modes.pretrain: a hook after
the update that receives what the step hands on, extra state checkpointed and resumed with the model, metrics
named once (by the step's dict); and the registry of modes."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from simclr_tf import modes, training
from simclr_tf.data import inputs
from simclr_tf.modes import pretrain
from simclr_tf.runtime import distribute


def counting_task(config, strategy):
  """The pretraining task, plus a counter of the images seen, updated by an after_update hook from the step's
  carry (each replica's batch size) and checkpointed as extra state."""
  source = inputs.make_source(config, config.train_split)
  task = pretrain.make_task(config, strategy, source, num_classes=0)
  with strategy.scope():
    seen = tf.Variable(0.0, trainable=False, aggregation=tf.VariableAggregation.SUM)
  contrastive = task.replica_step

  def replica_step(batch):
    loss, metrics = contrastive(batch)
    return loss, dict(metrics, images=tf.cast(tf.shape(batch['image'])[0], tf.float32)), tf.shape(batch['image'])[0]

  task.replica_step = replica_step
  task.after_update = lambda carry: seen.assign_add(tf.cast(carry, tf.float32))
  task.extra_checkpoint = {'seen': seen}
  return task, seen


# Two steps per call on one device, one on two replicas (each step traced there costs seconds; tests/test_memory.py
# runs the hook with two steps per call on two replicas).
@pytest.mark.parametrize('replicas,steps_per_loop', [(1, 2), (2, 1)])
def test_after_update_hook_and_extra_state_resume_exactly(tmp_path, shapes_dir, replicas, steps_per_loop):
  config = tiny_config(dataset='image_folder', data_dir=shapes_dir, model_dir=str(tmp_path), train_steps=3,
                       checkpoint_steps=3, lineareval_while_pretraining=False, steps_per_loop=steps_per_loop,
                       log_every_steps=3, strategy='mirrored' if replicas == 2 else 'default', cpu_replicas=replicas)
  strategy = distribute.make_strategy(config)
  task, seen = counting_task(config, strategy)
  assert training.fit(config, strategy, task) == 3
  assert float(seen.numpy()) == 3 * 8  # 8 images per step in all, whatever the number of replicas

  # A new process' worth of objects resumes the counter with the model.
  config = config.replace(train_steps=5, checkpoint_steps=5)
  task, seen = counting_task(config, strategy)
  run = training.TrainingRun(config, strategy, task)
  assert run.restore() == 3 and float(seen.numpy()) == 3 * 8
  assert run.run() == 5 and float(seen.numpy()) == 5 * 8

  # The step's own names are the metrics: 'images' was logged without being declared anywhere else.
  from simclr_tf.runtime import monitor
  records = monitor.read_metrics(str(tmp_path))
  assert records[-1]['step'] == 5 and records[-1]['images'] == pytest.approx(8 / replicas)
  assert {'loss', 'contrast_loss', 'contrast_acc', 'contrast_entropy', 'learning_rate'} <= set(records[-1])


def test_every_mode_is_a_module_with_validate_and_run():
  assert list(modes.MODES) == ['pretrain', 'finetune', 'distill', 'eval', 'export', 'embed', 'knn']
  for name, module in modes.MODES.items():
    assert callable(module.validate) and callable(module.run), name
  with pytest.raises(modes.UserError, match='--mode=nope is not one of pretrain'):
    modes.get('nope')


def test_build_model_says_whether_it_pretrains():
  from simclr_tf import build_model
  config = tiny_config(ft_proj_selector=1, num_proj_layers=3)
  pretraining = build_model(config, pretraining=True, num_classes=3)
  finetuning = build_model(config, pretraining=False, num_classes=3)
  assert pretraining.projection_head.keep_layers == 3 and pretraining.sup_stop_gradient
  assert finetuning.projection_head.keep_layers == 1 and not finetuning.sup_stop_gradient
  images = tf.random.uniform([2, 32, 32, 3], seed=4)
  assert np.all(np.isfinite(finetuning(images)['logits_sup'].numpy()))
