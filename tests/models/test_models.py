import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from simclr_tf.config import Config
from simclr_tf.models.resnet import OUTPUT_KEYS
from simclr_tf.models.simclr import build_model, encoder_parameter_count

# Encoder parameters (millions) of the published SimCLRv2 models (the paper's Table 1 and model listing).
PUBLISHED = [
    (50, 1, 0.0, 24), (50, 1, 0.0625, 35), (50, 2, 0.0, 94), (50, 2, 0.0625, 140), (101, 1, 0.0, 43),
    (101, 2, 0.0625, 257), (152, 1, 0.0, 58), (152, 2, 0.0625, 354), (152, 3, 0.0625, 795),
]


@pytest.fixture
def zero_initializers(monkeypatch):
  """Variables start at zero: the shapes are what is tested, and drawing 795M random numbers takes a while."""
  from simclr_tf.models import heads, resnet
  monkeypatch.setattr(resnet, 'conv_initializer', lambda: 'zeros')
  monkeypatch.setattr(heads, 'dense_initializer', lambda: 'zeros')


@pytest.mark.parametrize('depth,width,sk,millions', PUBLISHED)
def test_encoder_parameter_count_matches_published_table(depth, width, sk, millions, zero_initializers):
  model = build_model(Config(resnet_depth=depth, width_multiplier=width, sk_ratio=sk, image_size=224), pretraining=True,
                      image_size=32)
  assert round(encoder_parameter_count(model) / 1e6) == millions


def test_r50_trainable_layout_matches_reference_checkpoint(zero_initializers):
  # Exact trainable count of the reference code's R50 (official_tf2_ckpt_keys_r50.txt sums to this).
  model = build_model(Config(resnet_depth=50, image_size=224), pretraining=True, image_size=32)
  assert sum(int(tf.size(v)) for v in model.resnet.trainable_variables) == 23_508_032


VARIANTS = ([(depth, 'plain') for depth in (18, 34, 50, 101, 152, 200)] +
            [(depth, variant) for depth in (18, 50) for variant in ('sk', 'se', 'imagenet_stem')] + [(101, 'sk')])


@pytest.mark.parametrize('depth,variant', VARIANTS)
def test_every_resnet_variant_builds_and_runs_on_32px(depth, variant):
  overrides = dict(resnet_depth=depth, width_multiplier=0.0625 if depth >= 101 else 0.125)
  if variant == 'sk':
    overrides['sk_ratio'] = 0.0625
  if variant == 'se':
    overrides['se_ratio'] = 0.25
  image_size = 64 if variant == 'imagenet_stem' else 32
  config = tiny_config(image_size=image_size, **overrides)
  model = build_model(config, pretraining=True, num_classes=3, image_size=image_size)
  outputs = model(tf.random.uniform([2, 32, 32, 3]), training=True)
  assert set(OUTPUT_KEYS) <= set(outputs)
  channels = int(512 * overrides['width_multiplier']) * (4 if depth >= 50 else 1)
  assert outputs['final_avg_pool'].shape == (2, channels)
  assert outputs['proj_head_output'].shape == (2, config.proj_out_dim)
  assert outputs['logits_sup'].shape == (2, 3)
  stride = 1 if image_size <= 32 else 4
  assert outputs['block_group1'].shape[1] == 32 // stride
  assert outputs['block_group4'].shape[1] == max(1, 32 // stride // 8)
  assert all(np.isfinite(v.numpy()).all() for v in outputs.values())


def test_last_bn_of_every_block_starts_at_zero_and_bn_epsilon():
  model = build_model(tiny_config(resnet_depth=50), pretraining=True, image_size=32)
  for group in model.resnet.block_groups():
    for block in group.blocks():
      last = block.conv3.bn.bn
      assert np.all(last.gamma.numpy() == 0)
      assert block.conv1.bn.bn.epsilon == 1e-5 and block.conv1.bn.bn.momentum == 0.9
      assert np.all(block.conv1.bn.bn.gamma.numpy() == 1)


def test_strided_conv_pads_explicitly():
  from simclr_tf.models.resnet import Conv2dFixedPadding
  layer = Conv2dFixedPadding(1, 3, strides=2)
  x = tf.random.uniform([1, 6, 6, 1])
  y = layer(x)
  kernel = layer.conv.kernel
  expected = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), kernel, 2, 'VALID')
  assert y.shape == (1, 3, 3, 1)
  np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=1e-6)
  # Keras 'same' padding would pad (0, 1) for this shape and give other values.
  same = tf.nn.conv2d(x, kernel, 2, 'SAME')
  assert not np.allclose(same.numpy(), y.numpy())


@pytest.mark.parametrize('selector,width', [(0, 64), (1, 64), (2, 64), (3, 16)])
def test_supervised_head_input_follows_ft_proj_selector(selector, width):
  model = build_model(tiny_config(ft_proj_selector=selector, resnet_depth=18), pretraining=True, num_classes=4)
  assert model.supervised_head.dense.kernel.shape == (width, 4)


def test_checkpoint_holds_every_model_weight(tmp_path):
  model = build_model(tiny_config(sk_ratio=0.0625, se_ratio=0.25), pretraining=True, num_classes=5)
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / 'ckpt'))
  stored = {name: shape for name, shape in tf.train.list_variables(path)}
  weights = [k for k in stored if k.startswith('model/')]
  assert len(weights) == len(model.weights)
  assert sorted(tuple(s) for k, s in stored.items() if k.startswith('model/')) == sorted(
      tuple(w.shape) for w in model.weights)
