import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import augment


def image(size=40, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(size=(size, size, 3)), tf.float32)


@pytest.mark.parametrize('blur', [True, False])
def test_pretrain_views_are_in_range_reproducible_and_seed_dependent(blur):
  x = image()
  views = [augment.pretrain_view(x, tf.constant([0, i], tf.int64), 32, 1.0, blur) for i in range(12)]
  for v in views:
    assert v.shape == (32, 32, 3)
    assert float(tf.reduce_min(v)) >= 0.0 and float(tf.reduce_max(v)) <= 1.0
  again = augment.pretrain_view(x, tf.constant([0, 3], tf.int64), 32, 1.0, blur)
  np.testing.assert_array_equal(again.numpy(), views[3].numpy())
  assert not np.allclose(views[0].numpy(), views[1].numpy())


def test_color_jitter_stays_in_range_and_greyscale_is_grey():
  x = image()
  for i in range(8):
    y = augment.color_jitter(x, tf.constant([1, i], tf.int64), 1.0)
    assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 1.0
  g = augment.to_grayscale(x).numpy()
  assert g.shape == (40, 40, 3)
  np.testing.assert_allclose(g[..., 0], g[..., 2])


def test_random_crop_area_and_resize():
  x = image(64)
  for i in range(10):
    y = augment.random_crop_resize(x, tf.constant([2, i], tf.int64), 24)
    assert y.shape == (24, 24, 3)


def test_blur_kernel_size_and_normalisation():
  assert augment.blur_taps(224) == 23 and augment.blur_taps(32) == 3 and augment.blur_taps(10) == 1
  flat = tf.ones([32, 32, 3]) * 0.5
  blurred = augment.gaussian_blur(flat, tf.constant(1.0), 32).numpy()
  np.testing.assert_allclose(blurred[1:-1, 1:-1], 0.5, rtol=1e-5)  # weights sum to 1 away from the zero border


def test_eval_view_center_crops_big_images_only():
  small = image(32)
  np.testing.assert_allclose(augment.eval_view(small, 32).numpy(), small.numpy(), atol=1e-5)
  big = tf.reshape(tf.range(64 * 64 * 3, dtype=tf.float32) / (64 * 64 * 3), [64, 64, 3])
  out = augment.eval_view(big, 56)  # crop 56 of 64 (0.875), resize to 56 = identity
  np.testing.assert_allclose(out.numpy(), big[4:60, 4:60].numpy(), atol=1e-5)


@pytest.mark.parametrize('factor', [0.0, 0.3, 1.0, 1.7, 5.0])
def test_closed_form_saturation_equals_tf_adjust_saturation(factor):
  x = tf.random.uniform([16, 16, 3], seed=3)
  np.testing.assert_allclose(augment.adjust_saturation(x, factor), tf.image.adjust_saturation(x, factor), atol=2e-6)


def test_fast_grayscale_flip_and_uint8_resize_equal_the_plain_tf_ops():
  x = tf.random.uniform([16, 16, 3], seed=4)
  np.testing.assert_allclose(augment.to_grayscale(x), tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), atol=1e-7)
  flips = [augment.random_flip(x, tf.constant([s, 0], tf.int64)).numpy() for s in range(20)]
  assert all(np.array_equal(f, x) or np.array_equal(f, x[:, ::-1]) for f in flips)
  assert 5 <= sum(np.array_equal(f, x[:, ::-1]) for f in flips) <= 15
  u = tf.cast(x * 255, tf.uint8)
  np.testing.assert_allclose(augment.resize(u, 8), augment.resize(tf.image.convert_image_dtype(u, tf.float32), 8),
                             atol=1e-6)
