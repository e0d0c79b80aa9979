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


def test_the_pipeline_blurs_whole_batches_exactly_as_one_view_at_a_time():
  from simclr_tf.config import Config
  from simclr_tf.data import inputs
  config = Config(image_size=32, use_blur=True, color_jitter_strength=0.5)
  views = inputs.pretrain_view_fn(config)
  images = tf.random.uniform([6, 40, 48, 3], seed=5)
  seeds = [tf.constant([7, i], tf.int64) for i in range(6)]
  batch = {k: tf.stack([views(im, s)[k] for im, s in zip(images, seeds)]) for k in ('image', 'blur_sigma')}
  sigmas = batch['blur_sigma'].numpy()
  assert (sigmas == 0).any() and (sigmas > 0).any()  # both kinds of view in the batch
  batched = inputs.blur_views(batch, 32)['image'].numpy()
  for i, (im, s) in enumerate(zip(images, seeds)):
    s1, s2 = augment.split_seed(s, 2)
    one_by_one = np.concatenate([augment.pretrain_view(im, s1, 32, 0.5, True),
                                 augment.pretrain_view(im, s2, 32, 0.5, True)], axis=-1)
    np.testing.assert_allclose(batched[i], one_by_one, atol=1e-6)
