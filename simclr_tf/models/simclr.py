"""The SimCLR model: an encoder of any family (simclr_tf.models.ENCODERS), the projection head and an optional
supervised head, returning named outputs."""

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from simclr_tf.config import ModelSettings, section_of
from simclr_tf.models.heads import ProjectionHead, SupervisedHead
from simclr_tf.models.registry import ENCODERS
from simclr_tf.precision import policy_scope

HEAD_OUTPUTS = ('proj_head_input', 'proj_head_output')


@keras.saving.register_keras_serializable(package='simclr_tf')
class SimCLRModel(keras.Model):
  """call(images, training) -> dict with the encoder's outputs (for a ResNet: initial_conv ... block_group4,
  final_avg_pool), proj_head_input, proj_head_output and, with a supervised head, logits_sup.

  `architecture`: the network's fields of a ModelSettings (a dict; the encoder family, its settings, the heads,
  batch norm, the input size, the precision). The encoder is held under its family's attribute (`resnet` for a
  ResNet: the first name of every variable path in our checkpoints) and is `encoder` whatever its family.
  With `sup_stop_gradient` (linear evaluation while pretraining) the supervised head trains on a stop-gradient of
  the selected projection-head layer, so it never changes the representation. `class_names`: what each of the
  supervised head's outputs is, in label order (() when unknown), recorded with every checkpoint and SavedModel
  of it (simclr_tf.record). get_config() describes the network as built (a model holding it saves to and loads
  from a .keras file).
  """

  def __init__(self, architecture: dict, num_classes: int = 0, sup_stop_gradient: bool = False,
               proj_keep_layers: Optional[int] = None, fine_tune_after_block: int = -1,
               zero_init_logits_layer: bool = False, class_names=(), **kwargs):
    settings = ModelSettings(**architecture)
    kwargs.setdefault('dtype', settings.precision)
    super().__init__(**kwargs)
    self._arguments = dict(architecture=dataclasses.asdict(settings), num_classes=num_classes,
                           sup_stop_gradient=sup_stop_gradient, proj_keep_layers=proj_keep_layers,
                           fine_tune_after_block=fine_tune_after_block, zero_init_logits_layer=zero_init_logits_layer,
                           class_names=list(class_names or ()))
    self.settings = settings
    self.class_names = tuple(class_names or ())
    self.image_size = settings.image_size  # what it was built for: the evaluation preprocessing of its SavedModels
    self.ft_proj_selector = settings.ft_proj_selector
    self.sup_stop_gradient = sup_stop_gradient
    family = ENCODERS[settings.encoder]
    self._encoder_attribute = family.ATTRIBUTE
    self.encoder_output_keys = tuple(family.output_keys(settings))
    with policy_scope(self.dtype_policy.name):  # the model's precision, also when a .keras file rebuilds it
      setattr(self, family.ATTRIBUTE, family.build(settings))
      self.encoder.freeze_through(fine_tune_after_block)
      self.projection_head = ProjectionHead(self.encoder.output_dim, settings.num_proj_layers, settings.proj_out_dim,
                                            settings.batch_norm_decay, settings.global_bn,
                                            keep_layers=proj_keep_layers, name='projection_head')
    # float32 whatever the precision: its logits go to a softmax.
    self.supervised_head = (SupervisedHead(num_classes, zero_init_logits_layer, name='supervised_head',
                                           dtype='float32') if num_classes else None)

  @property
  def encoder(self):
    return getattr(self, self._encoder_attribute)

  @property
  def output_keys(self) -> tuple:
    """The names of the outputs, in order."""
    return self.encoder_output_keys + HEAD_OUTPUTS + (('logits_sup',) if self.supervised_head is not None else ())

  def get_config(self):
    return {**super().get_config(), **self._arguments}

  def build(self, input_shape=None):
    """Creates the variables with one call on zeros of `input_shape`'s size (the image size where it is None)."""
    shape = list(input_shape or [None, None, None, 3])
    size = [d if d is not None else self.image_size for d in shape[1:3]]
    self.call(tf.zeros([1, *size, shape[3] or 3]), training=False)
    # Again now that every variable exists: sublayers made in a build (a MultiHeadAttention's projections) are
    # trainable whatever their parent was set to before.
    self.encoder.freeze_through(self._arguments['fine_tune_after_block'])
    self.built = True

  def call(self, images, training=False):
    outputs = self.encoder(images, training=training)
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


def build_model(settings, *, pretraining: bool, num_classes: int = 0, image_size: int = 0,
                proj_keep_layers: Optional[int] = None, class_names=(), name: Optional[str] = None) -> SimCLRModel:
  """The model of `settings` (a ModelSettings, or a Config: its `architecture`), with its variables created from
  its seed (call it inside strategy.scope()).

  pretraining=True builds the whole projection head and a supervised head on a stop-gradient (linear evaluation
  while pretraining). pretraining=False (fine-tuning, distillation, loading) builds the head up to
  --ft_proj_selector (or `proj_keep_layers` of it), a fresh supervised head (zeroed with --zero_init_logits_layer)
  and freezes the encoder through --fine_tune_after_block. num_classes=0: no supervised head. The variables are
  created by a call on `image_size` pixels (default: the settings', at most 64 where the encoder takes any size).
  `class_names`: the supervised head's classes in label order. `name`: the Keras model's name (default: unique in
  this process, 'simclr', 'simclr_1', ..., so that models built side by side compose in one Keras model).
  """
  settings = section_of(settings, ModelSettings)
  keras.utils.set_random_seed(settings.seed)
  if proj_keep_layers is None and not pretraining:
    proj_keep_layers = settings.ft_proj_selector
  architecture = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ModelSettings)}
  model = SimCLRModel(architecture, num_classes=num_classes, sup_stop_gradient=pretraining,
                      proj_keep_layers=proj_keep_layers,
                      fine_tune_after_block=-1 if pretraining else settings.fine_tune_after_block,
                      zero_init_logits_layer=settings.zero_init_logits_layer and not pretraining,
                      class_names=class_names if num_classes else (), name=name or unique_name('simclr'))
  size = image_size or getattr(model.encoder, 'input_size', None) or min(settings.image_size, 64)
  model.build((None, size, size, 3))
  return model


def unique_name(base: str) -> str:
  """`base`, then `base_1`, `base_2`, ...: a new name at each call in this process."""
  count = _NAMES.get(base, 0)
  _NAMES[base] = count + 1
  return f'{base}_{count}' if count else base


_NAMES = {}


def encoder_parameter_count(model: SimCLRModel) -> int:
  """Parameters of the encoder alone (heads excluded) as the SimCLRv2 paper counts them: every variable,
  batch-norm moving statistics included. (Counting only trainable ones gives 353.4M instead of the published 354M
  for R152 2x+SK; all nine published figures come out when the moving statistics are counted.)"""
  return sum(int(tf.size(v)) for v in model.encoder.weights)
