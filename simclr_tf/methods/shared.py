"""What every method's pretraining step shares: the two views of a batch, the linear head trained on a stop-gradient
of the features (linear evaluation while pretraining), the decay term of the loss."""

import tensorflow as tf

from simclr_tf import losses, metrics


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
