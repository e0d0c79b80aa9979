"""What a training mode feeds its model, and where the work is done (--augment_on).

A `Views` makes each example in the input pipeline (`example`). With --augment_on=host that is the finished view
(float32); with device it is the uint8 crops and their random draws, and the training step finishes the batch
(`in_step`: to float, and for pretraining flip, colour jitter, greyscale and blur; compiled into the step under
XLA). The views are the same either way, bit for bit.
"""

import dataclasses
from typing import Callable

import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.data import augment


@dataclasses.dataclass(frozen=True)
class Views:
  example: Callable[[tf.Tensor, tf.Tensor], dict]  # (encoded image, seed [2]) -> {'image': float32 or uint8, ...}
  finish: Callable[[dict], dict]  # a batch of examples -> the batch with 'image' float32 in [0, 1]
  on_device: bool = False

  def in_step(self, batch: dict) -> dict:
    """The training step's first step: finish the batch if the device does (else example() finished it)."""
    return self.finish(batch) if self.on_device else batch


def _to_float(batch):
  return dict(batch, image=augment.to_float(batch['image']))


def pretrain_views(config: Config) -> Views:
  """Two SimCLR views of each image, stacked along channels: 'image' [B, H, W, 6]. Everything after the crops
  (augment.pretrain_finisher, one XLA-compiled function) runs per example in the input pipeline, or over the batch
  in the step."""
  on_device = config.augment_on == 'device'
  finisher = augment.pretrain_finisher(config.color_jitter_strength, config.image_size, config.use_blur)

  def example(encoded, seed):
    example = augment.pretrain_example(encoded, seed, config.image_size, config.crop_min_area)
    if on_device:
      return example
    return {'image': finisher(example['image'], example['augment'])}

  def finish(batch):
    return augment.finish_pretrain_batch(batch, finisher)

  return Views(example, finish, on_device)


def finetune_views(config: Config) -> Views:
  """The fine-tuning and distillation view (crop and flip): 'image' [B, H, W, 3], shipped as uint8 to the device."""
  on_device = config.augment_on == 'device'

  def example(encoded, seed):
    example = augment.finetune_example(encoded, seed, config.image_size, config.finetune_crop_min_area)
    return example if on_device else _to_float(example)

  return Views(example, _to_float, on_device)
