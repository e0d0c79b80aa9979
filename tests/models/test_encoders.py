"""The encoder registry: the SimCLR model holds an encoder of a registered family, and the output keys that export,
embed, kNN and fine-tuning use come from it."""

import tensorflow as tf

from conftest import tiny_config
from simclr_tf import models
from simclr_tf.models.simclr import build_model


def test_the_registry_names_each_family_and_the_model_holds_an_encoder():
  assert sorted(models.ENCODERS) == ['resnet']
  for name, extra in (('resnet', {}),):
    model = build_model(tiny_config(**extra), pretraining=True, num_classes=3)
    family = models.ENCODERS[name]
    assert model.encoder is getattr(model, family.ATTRIBUTE)
    outputs = model(tf.zeros([2, 32, 32, 3]))
    assert tuple(outputs) == model.output_keys
    assert model.output_keys[:len(family.output_keys(model.settings))] == family.output_keys(model.settings)
  # A ResNet keeps the published models' keys.
  assert models.ENCODERS['resnet'].output_keys(None) == (
      'initial_conv', 'initial_max_pool', 'block_group1', 'block_group2', 'block_group3', 'block_group4',
      'final_avg_pool')
