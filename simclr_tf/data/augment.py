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
  image = tf.image.resize(image[None], [size, size], method='bicubic')[0]
  return tf.clip_by_value(image, 0.0, 1.0)


def random_flip(image, seed):
  return tf.image.stateless_random_flip_left_right(image, seed)


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
    return tf.image.stateless_random_saturation(x, max(0.0, 1.0 - s), 1.0 + s, s_seed) if s else x

  def hue(x):
    return tf.image.stateless_random_hue(x, min(h, 0.5), h_seed) if h else x

  transforms = [brightness, contrast, saturation, hue]
  order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
  for i in range(4):
    image = tf.switch_case(order[i], [lambda t=t: t(image) for t in transforms])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def to_grayscale(image):
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


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


def gaussian_kernels(sigmas, image_size):
  """[N, taps] normalised Gaussian kernels of the blur for each sigma; sigma 0 gives the identity kernel."""
  radius = blur_taps(image_size) // 2
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)[None]
  sigmas = tf.reshape(tf.cast(sigmas, tf.float32), [-1, 1])
  safe = tf.where(sigmas > 0, sigmas, 1.0)
  kernels = tf.exp(-tf.square(x) / (2.0 * tf.square(safe)))
  kernels /= tf.reduce_sum(kernels, axis=1, keepdims=True)
  identity = tf.cast(tf.equal(x, 0.0), tf.float32)
  return tf.where(sigmas > 0, kernels, identity)


def batch_gaussian_blur(images, sigmas, image_size):
  """Each image of [B, H, W, C] blurred as gaussian_blur(image, sigma) would (sigma 0: left as it is), in one
  depthwise convolution over all of them: the batch's B*C channels fill the vector units that an image's 3 do
  not."""
  shape = tf.shape(images)
  b, h, w, c = shape[0], shape[1], shape[2], shape[3]
  taps = blur_taps(image_size)
  kernels = tf.repeat(gaussian_kernels(sigmas, image_size), c, axis=0)  # [B*C, taps], channel-major per image
  x = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, h, w, b * c])
  kernel_h = tf.reshape(tf.transpose(kernels), [1, taps, b * c, 1])
  kernel_v = tf.reshape(tf.transpose(kernels), [taps, 1, b * c, 1])
  x = tf.nn.depthwise_conv2d(x, kernel_h, [1, 1, 1, 1], 'SAME')
  x = tf.nn.depthwise_conv2d(x, kernel_v, [1, 1, 1, 1], 'SAME')
  return tf.transpose(tf.reshape(x, [h, w, b, c]), [2, 0, 1, 3])


def _maybe(seed, p, fn, image):
  apply = tf.random.stateless_uniform([], seed) < p
  return tf.cond(apply, lambda: fn(image), lambda: image)


def pretrain_view_and_blur_sigma(image, seed, size, color_strength=1.0, crop_min_area=0.08):
  """A SimCLR view without its blur, and the blur's sigma (0 when this view is not blurred): the input pipeline
  blurs whole batches at once (batch_gaussian_blur). pretrain_view(...) == blur of this view by that sigma."""
  crop_seed, flip_seed, jitter_p, jitter_seed, gray_p, blur_p, sigma_seed = split_seed(seed, 7)
  image = random_crop_resize(image, crop_seed, size, area_range=(crop_min_area, 1.0))
  image = random_flip(image, flip_seed)
  image = _maybe(jitter_p, 0.8, lambda x: color_jitter(x, jitter_seed, color_strength), image)
  image = _maybe(gray_p, 0.2, to_grayscale, image)
  blurred = tf.random.stateless_uniform([], blur_p) < 0.5
  sigma = tf.where(blurred, tf.random.stateless_uniform([], sigma_seed, 0.1, 2.0), 0.0)
  return tf.clip_by_value(image, 0.0, 1.0), sigma


def pretrain_view(image, seed, size, color_strength=1.0, use_blur=True, crop_min_area=0.08):
  """One SimCLR view: crop+resize, flip, colour jitter (p .8), greyscale (p .2), blur (p .5)."""
  image, sigma = pretrain_view_and_blur_sigma(image, seed, size, color_strength, crop_min_area)
  if use_blur:
    image = tf.cond(sigma > 0, lambda: gaussian_blur(image, sigma, size), lambda: image)
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
  """uint8 (or float) HWC image -> float32 in [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


def blur_taps(image_size: int) -> int:
  return 2 * math.floor((image_size / 10) / 2) + 1
