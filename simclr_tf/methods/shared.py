"""What every method shares: the online network and its optimizer, the two views of a batch, the linear head trained
on a stop-gradient of the features (linear evaluation while pretraining), and which network a SavedModel holds."""

import tensorflow as tf

from simclr_tf import metrics
from simclr_tf.config import Config
from simclr_tf.methods import losses
from simclr_tf.models.simclr import build_model
from simclr_tf.optim.build import learning_rate_schedule, make_optimizer


def online_network(config: Config, source, num_classes: int, num_examples: int):
  """(model, optimizer, number of training examples) of a method (call it in the strategy's scope): the SimCLR model
  being trained (its linear head, when num_classes > 0, named by the source's classes) and the optimizer, whose
  schedule runs over the source's examples (`num_examples` without a source: benchmarks feed their own batches)."""
  num_examples = source.num_examples if source is not None else num_examples
  class_names = source.class_names if source is not None and num_classes else ()
  model = build_model(config.architecture, num_classes=num_classes, pretraining=True, class_names=class_names)
  return model, make_optimizer(config.optim, learning_rate_schedule(config.optim, num_examples)), num_examples


def exported_model(config: Config, task):
  """What a method's SavedModel holds: the trained (online) network, or with --export_momentum_network the task's
  momentum network (the memory's, BYOL's target)."""
  return task.extra_checkpoint['momentum_network'] if config.export_momentum_network else task.model


def stacked_views(batch) -> tf.Tensor:
  """The two views (stacked along channels in batch['image'], [B, H, W, 6]) as one batch of 2B images: view 1's
  images, then view 2's."""
  return tf.concat(tf.split(batch['image'], 2, axis=-1), axis=0)


def linear_head_loss(outputs: dict, batch, lr_scale: float):
  """(loss, metrics) of the supervised head on both views (its logits `outputs['logits_sup']` come from a
  stop-gradient of the features, so it never changes the representation); its gradient is scaled by `lr_scale`
  (--lineareval_lr_scale), its logits are not."""
  labels = tf.concat([batch['label'], batch['label']], axis=0)
  logits = outputs['logits_sup']
  if lr_scale != 1:
    logits = lr_scale * logits + (1 - lr_scale) * tf.stop_gradient(logits)
  loss = losses.supervised_loss(labels, logits)
  return loss, {'sup_loss': loss, 'sup_acc': metrics.accuracy(labels, outputs['logits_sup'])}
