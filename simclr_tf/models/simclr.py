"""The SimCLR model: ResNet encoder, projection head and optional supervised head, returning named outputs."""

from typing import Optional

import keras
import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.precision import policy_scope
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.resnet import ResNet


class SimCLRModel(keras.Model):
  """call(images, training) -> dict with the encoder outputs (initial_conv ... final_avg_pool), proj_head_input,
  proj_head_output and, with a supervised head, logits_sup.

  With `sup_stop_gradient` (linear evaluation while pretraining) the supervised head trains on a stop-gradient of
  the selected projection-head layer, so it never changes the representation.
  """

  def __init__(self, resnet_depth=50, width_multiplier=1.0, sk_ratio=0.0, se_ratio=0.0, cifar_stem=False,
               num_proj_layers=3, proj_out_dim=128, ft_proj_selector=0, num_classes=0, sup_stop_gradient=False,
               zero_init_logits_layer=False, bn_momentum=0.9, sync_bn=True, proj_keep_layers=None,
               fine_tune_after_block=-1, **kwargs):
    super().__init__(**kwargs)
    self.ft_proj_selector = ft_proj_selector
    self.sup_stop_gradient = sup_stop_gradient
    self.resnet = ResNet(resnet_depth, width_multiplier, sk_ratio, se_ratio, cifar_stem, bn_momentum, sync_bn,
                         name='resnet')
    self.resnet.freeze_through(fine_tune_after_block)
    self.projection_head = ProjectionHead(self.resnet.output_dim, num_proj_layers, proj_out_dim, bn_momentum,
                                          sync_bn, keep_layers=proj_keep_layers, name='projection_head')
    # float32 whatever the precision: its logits go to a softmax.
    self.supervised_head = (SupervisedHead(num_classes, zero_init_logits_layer, name='supervised_head',
                                           dtype='float32') if num_classes else None)

  def build(self, input_shape):
    del input_shape  # built on the first call, as a resnet.Composite is

  def call(self, images, training=False):
    outputs = self.resnet(images, training=training)
    hiddens = self.projection_head(outputs['final_avg_pool'], training=training)
    outputs['proj_head_input'] = hiddens[0]
    outputs['proj_head_output'] = hiddens[-1]
    if self.supervised_head is not None:
      features = hiddens[self.ft_proj_selector]
      if self.sup_stop_gradient:
        features = tf.stop_gradient(features)
      outputs['logits_sup'] = self.supervised_head(tf.cast(features, tf.float32))
    # Under mixed precision the layers compute in 16 bits; what leaves the model is float32.
    return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}


def build_model(config: Config, *, pretraining: bool, num_classes: int = 0, image_size: int = 0,
                proj_keep_layers: Optional[int] = None) -> SimCLRModel:
  """The model the config describes, with its variables created from --seed (call it inside strategy.scope()).

  pretraining=True builds the whole projection head and a supervised head on a stop-gradient (linear evaluation
  while pretraining). pretraining=False (fine-tuning, distillation, loading) builds the head up to
  --ft_proj_selector (or `proj_keep_layers` of it), a fresh supervised head (zeroed with --zero_init_logits_layer)
  and freezes the encoder through --fine_tune_after_block. num_classes=0: no supervised head.
  """
  keras.utils.set_random_seed(config.seed)
  if proj_keep_layers is None and not pretraining:
    proj_keep_layers = config.ft_proj_selector
  with policy_scope(config.precision):
    model = _simclr_model(config, num_classes, pretraining, proj_keep_layers)
  size = image_size or min(config.image_size, 64)
  model(tf.zeros([1, size, size, 3]), training=False)
  return model


def _simclr_model(config: Config, num_classes: int, pretraining: bool, proj_keep_layers) -> SimCLRModel:
  return SimCLRModel(
      resnet_depth=config.resnet_depth, width_multiplier=config.width_multiplier, sk_ratio=config.sk_ratio,
      se_ratio=config.se_ratio, cifar_stem=config.cifar_stem, num_proj_layers=config.num_proj_layers,
      proj_out_dim=config.proj_out_dim, ft_proj_selector=config.ft_proj_selector, num_classes=num_classes,
      sup_stop_gradient=pretraining, bn_momentum=config.batch_norm_decay, sync_bn=config.global_bn,
      proj_keep_layers=proj_keep_layers, zero_init_logits_layer=config.zero_init_logits_layer and not pretraining,
      fine_tune_after_block=-1 if pretraining else config.fine_tune_after_block, name='simclr')


def encoder_parameter_count(model: SimCLRModel) -> int:
  """Parameters of the encoder alone (heads excluded) as the SimCLRv2 paper counts them: every variable,
  batch-norm moving statistics included. (Counting only trainable ones gives 353.4M instead of the published 354M
  for R152 2x+SK; all nine published figures come out when the moving statistics are counted.)"""
  return sum(int(tf.size(v)) for v in model.resnet.weights)
