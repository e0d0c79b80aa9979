"""The SimCLR augmentations as pure tf functions of (image, seed).

Images are float32 in [0, 1], HWC. Every random choice comes from a stateless op keyed by a [2] int seed, so an
example's views depend only on (run seed, example index): the pipeline is reproducible and a resumed run sees
exactly the data an uninterrupted one would.
"""

import math

import tensorflow as tf

CROP_PROPORTION = 0.875


def split_seed(seed, n):
  """n independent [2] seeds from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def random_crop_resize(image, seed, size, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3)):
  """Inception-style crop (up to 100 tries, else the whole image), resized bicubically to size x size."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=aspect_range, area_range=area_range, max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop_size)
  return resize(image, size)


def resize(image, size):
  """Bicubic resize to size x size, float32 in [0, 1]. A uint8 image is converted after resizing (resizing is
  linear), so the conversion touches size^2 pixels instead of the whole decoded image."""
  resized = tf.image.resize(image[None], [size, size], method='bicubic')[0]
  if image.dtype == tf.uint8:
    resized = resized * (1.0 / 255.0)
  return tf.clip_by_value(resized, 0.0, 1.0)


def random_flip(image, seed):
  """Left-right flip with p 0.5 (a branch: TF's own version reverses every image and then selects)."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def adjust_saturation(image, factor):
  """HSV saturation times `factor`, clipped to 1, hue and value kept: TF's adjust_saturation in closed form
  (each channel moves away from the maximum by the ratio of new to old saturation), without the HSV round trip."""
  top = tf.reduce_max(image, axis=-1, keepdims=True)
  spread = top - tf.reduce_min(image, axis=-1, keepdims=True)
  ratio = tf.math.divide_no_nan(tf.minimum(spread * factor, top), spread)
  return top - (top - image) * ratio


def color_jitter(image, seed, strength):
  """Brightness (multiplicative), contrast, saturation and hue at strength s, in random order, clipped each time."""
  b = c = s = 0.8 * strength
  h = 0.2 * strength
  order_seed, b_seed, c_seed, s_seed, h_seed = split_seed(seed, 5)

  def brightness(x):
    factor = tf.random.stateless_uniform([], b_seed, max(0.0, 1.0 - b), 1.0 + b)
    return x * factor

  def contrast(x):
    return tf.image.stateless_random_contrast(x, max(0.0, 1.0 - c), 1.0 + c, c_seed) if c else x

  def saturation(x):
    return adjust_saturation(x, tf.random.stateless_uniform([], s_seed, max(0.0, 1.0 - s), 1.0 + s)) if s else x

  def hue(x):
    return tf.image.stateless_random_hue(x, min(h, 0.5), h_seed) if h else x

  transforms = [brightness, contrast, saturation, hue]
  order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
  for i in range(4):
    image = tf.switch_case(order[i], [lambda t=t: t(image) for t in transforms])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def to_grayscale(image):
  """Luma with TF's rgb_to_grayscale weights, kept as 3 channels (a weighted sum: cheaper than its tensordot)."""
  gray = image[..., 0:1] * 0.2989 + image[..., 1:2] * 0.5870 + image[..., 2:3] * 0.1140
  return tf.concat([gray, gray, gray], axis=-1)


def gaussian_blur(image, sigma, image_size):
  """Separable Gaussian blur with 2*floor((image_size/10)/2)+1 taps and zero padding."""
  radius = blur_taps(image_size) // 2
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  kernel /= tf.reduce_sum(kernel)
  channels = 3
  kernel_h = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
  kernel_v = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  x = image[None]
  x = tf.nn.depthwise_conv2d(x, kernel_h, [1, 1, 1, 1], 'SAME')
  x = tf.nn.depthwise_conv2d(x, kernel_v, [1, 1, 1, 1], 'SAME')
  return x[0]


def _maybe(seed, p, fn, image):
  apply = tf.random.stateless_uniform([], seed) < p
  return tf.cond(apply, lambda: fn(image), lambda: image)


def pretrain_view(image, seed, size, color_strength=1.0, use_blur=True):
  """One SimCLR view: crop+resize, flip, colour jitter (p .8), greyscale (p .2), blur (p .5)."""
  crop_seed, flip_seed, jitter_p, jitter_seed, gray_p, blur_p, sigma_seed = split_seed(seed, 7)
  image = random_crop_resize(image, crop_seed, size)
  image = random_flip(image, flip_seed)
  image = _maybe(jitter_p, 0.8, lambda x: color_jitter(x, jitter_seed, color_strength), image)
  image = _maybe(gray_p, 0.2, to_grayscale, image)
  if use_blur:
    sigma = tf.random.stateless_uniform([], sigma_seed, 0.1, 2.0)
    image = _maybe(blur_p, 0.5, lambda x: gaussian_blur(x, sigma, size), image)
  return tf.clip_by_value(image, 0.0, 1.0)


def finetune_view(image, seed, size):
  """Fine-tuning / distillation augmentation: crop+resize and flip only."""
  crop_seed, flip_seed = split_seed(seed, 2)
  return random_flip(random_crop_resize(image, crop_seed, size), flip_seed)


def eval_view(image, size):
  """Centre crop of 0.875 then resize; images of 32 px or less are only resized to `size`."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]

  def center_crop():
    crop = tf.cast(CROP_PROPORTION * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    top = (height - crop + 1) // 2
    left = (width - crop + 1) // 2
    return tf.image.crop_to_bounding_box(image, top, left, crop, crop)

  small = tf.logical_and(height <= 32, width <= 32)
  image = tf.cond(small, lambda: image, center_crop)
  return resize(image, size)


def to_float(image):
  """uint8 (or float) HWC image -> float32 in [0, 1]. (The views take uint8 images directly: see resize.)"""
  return tf.image.convert_image_dtype(image, tf.float32)


def blur_taps(image_size: int) -> int:
  return 2 * math.floor((image_size / 10) / 2) + 1
