"""What a training mode feeds its model, and where the work is done (--augment_on).

A `Views` makes each example in the input pipeline (`example`: the uint8 crops, and for pretraining the random
draws of the rest), then finishes a batch of them (`finish`: to float, and for pretraining flip, colour jitter,
greyscale and blur). With --augment_on=host the input pipeline finishes each batch (`in_pipeline`); with device the
training step does (`in_step`), compiled into it under XLA, and the pipeline ships uint8. The same function of the
same examples either way, so the views are the same bit for bit.
"""

import dataclasses
from typing import Callable

import tensorflow as tf

from simclr_tf.config import AugmentationSettings, section_of
from simclr_tf.data import augment


@dataclasses.dataclass(frozen=True)
class Views:
  example: Callable[[tf.Tensor, tf.Tensor], dict]  # (encoded image, seed [2]) -> the uint8 crop(s) and draws
  finish: Callable[[dict], dict]  # a batch of examples -> the batch with 'image' float32 in [0, 1]
  on_device: bool = False

  def in_pipeline(self, batch: dict) -> dict:
    """The input pipeline's last step on each batch: finish it, unless the device does."""
    return batch if self.on_device else self.finish(batch)

  def in_step(self, batch: dict) -> dict:
    """The training step's first step: finish the batch if the device does (else the pipeline finished it)."""
    return self.finish(batch) if self.on_device else batch


def _to_float(batch):
  return dict(batch, image=augment.to_float(batch['image']))


def pretrain_views(settings) -> Views:
  """Two SimCLR views of each image: uint8 crops 'view1', 'view2' [B, H, W, 3] in, 'image' float [B, H, W, 6] (the
  views along channels) out. Everything after the crops (augment.pretrain_finisher, one XLA-compiled function per
  batch) runs in the input pipeline or in the step. `settings`: AugmentationSettings (or a Config)."""
  config = section_of(settings, AugmentationSettings)
  finisher = augment.pretrain_finisher(config.color_jitter_strength, config.image_size, config.use_blur)

  def example(encoded, seed):
    return augment.pretrain_example(encoded, seed, config.image_size, config.crop_min_area)

  def finish(batch):
    return augment.finish_pretrain_batch(batch, finisher)

  return Views(example, finish, config.augment_on == 'device')


def finetune_views(settings) -> Views:
  """The fine-tuning and distillation view (crop and flip): 'image' [B, H, W, 3], shipped as uint8 to the device.
  `settings`: AugmentationSettings (or a Config)."""
  config = section_of(settings, AugmentationSettings)

  def example(encoded, seed):
    return augment.finetune_example(encoded, seed, config.image_size, config.finetune_crop_min_area)

  return Views(example, _to_float, config.augment_on == 'device')
