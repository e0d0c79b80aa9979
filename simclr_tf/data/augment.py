"""The SimCLR augmentations, in two stages that meet at uint8 crops.

1. Per example, in the input pipeline (`pretrain_example`, `finetune_example`): the crop window is drawn on the
   encoded image's shape, JPEGs decode only that window (tf.image.decode_and_crop_jpeg; small JPEGs and other
   formats decode whole), and the crop is resized bicubically and rounded to uint8. All the other random choices of
   a pretraining view (flip, colour jitter and its order, greyscale, blur) come from one stateless draw of
   NUM_UNIFORMS uniforms per view, shipped beside the crops.
2. `finish_view`: flip, colour jitter in the view's random order, greyscale and blur, computing only what was drawn,
   compiled with XLA (`pretrain_finisher`). It runs per example in the input pipeline (--augment_on=host) or over
   the batch inside the training step (device): the same function of the same crops and uniforms either way.

Every random choice comes from a stateless op keyed by a [2] int seed, so an example's views depend only on (run
seed, example index): the pipeline is reproducible and a resumed run sees exactly the data an uninterrupted one
would. Float images are in [0, 1], HWC.
"""

import math

import tensorflow as tf

CROP_PROPORTION = 0.875

# The uniforms of one pretraining view, in the order of the draw; they travel with the crops ('augment').
FLIP, JITTER, ORDER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAY, BLUR, SIGMA = 0, 1, 2, 6, 7, 8, 9, 10, 11, 12
NUM_UNIFORMS = 13
NO_OP = 4  # the colour transform "position" of an image whose jitter is not applied
WINDOW_DECODE_MIN_PIXELS = 64 * 64  # JPEGs with more pixels decode only their crop windows


def split_seed(seed, n):
  """n independent [2] seeds from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


# ---- stage 1: geometry, per example -----------------------------------------------------------------------------

def crop_window(shape, seed, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3)):
  """(begin [3], size [3]) of an Inception-style crop of an image of `shape` [H, W, C] (up to 100 tries, else the
  whole image): the reference's sampler, made stateless."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.1,
      aspect_ratio_range=aspect_range, area_range=area_range, max_attempts=100, use_image_if_no_bounding_boxes=True)
  return begin, size


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Any supported encoding (JPEG, PNG, BMP, GIF's first frame) -> uint8 HWC with 3 channels."""
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def decoded_crops(encoded: tf.Tensor, seeds, area_range):
  """The crops of one image for each seed, as uint8 HWC. A JPEG larger than 64x64 decodes only each crop's window
  (drawn on the shape read from its header): the pixels of a whole decode, except on the window's outermost rows
  and columns, where the decoder's chroma upsampling lacks neighbours and moves a few pixels by a few levels. Other
  images decode once and are sliced."""
  def windows(header):
    shape = tf.stack([header[0], header[1], 3])
    crops = []
    for seed in seeds:
      begin, size = crop_window(shape, seed, area_range)
      crops.append(tf.image.decode_and_crop_jpeg(encoded, tf.stack([begin[0], begin[1], size[0], size[1]]),
                                                 channels=3))
    return crops

  def whole():
    image = decode_image(encoded)
    return [tf.slice(image, *crop_window(tf.shape(image), seed, area_range)) for seed in seeds]

  def jpeg():
    header = tf.image.extract_jpeg_shape(encoded)  # read once, for the size test and the windows
    # Small JPEGs (CIFAR's 32x32) decode whole: one decode serves both views.
    return tf.cond(header[0] * header[1] > WINDOW_DECODE_MIN_PIXELS, lambda: windows(header), whole)

  crops = tf.cond(tf.io.is_jpeg(encoded), jpeg, whole)
  crops = crops if isinstance(crops, (list, tuple)) else [crops]
  for crop in crops:
    crop.set_shape([None, None, 3])
  return crops


def resize_to_uint8(image, size):
  """Bicubic resize of a uint8 crop to size x size, rounded back to uint8 (what travels to finish_view)."""
  image = tf.image.resize(image[None], [size, size], method='bicubic')[0]
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def flip_if(image, flip):
  return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def pretrain_example(encoded, seed, size, crop_min_area=0.08):
  """Two pretraining views of an encoded image up to their crops: {'image': uint8 [size, size, 6] (the two crops
  along channels, resized), 'augment': float32 [2, NUM_UNIFORMS] (each view's uniforms for finish_view)}."""
  crop1, crop2, draw_seed = split_seed(seed, 3)
  crops = decoded_crops(encoded, (crop1, crop2), (crop_min_area, 1.0))
  return {'image': tf.concat([resize_to_uint8(crop, size) for crop in crops], axis=-1),
          'augment': tf.random.stateless_uniform([2, NUM_UNIFORMS], draw_seed)}


def finetune_example(encoded, seed, size, crop_min_area=0.08):
  """The fine-tuning / distillation view (crop of at least `crop_min_area` of the image, then flip):
  {'image': uint8 [size, size, 3]}."""
  crop_seed, draw_seed = split_seed(seed, 2)
  flip = tf.random.stateless_uniform([], draw_seed) < 0.5
  crop, = decoded_crops(encoded, (crop_seed,), (crop_min_area, 1.0))
  return {'image': flip_if(resize_to_uint8(crop, size), flip)}


# ---- stage 2: after the crops, per view ----------------------------------------------------------------------------

def to_float(image):
  """uint8 (or float) image(s) -> float32 in [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


def _per_image(values, images):
  return tf.reshape(values, [-1] + [1] * (len(images.shape) - 1))


def adjust_brightness(images, factors):
  """Multiplicative brightness (SimCLRv2): x * f."""
  return images * _per_image(factors, images)


def adjust_contrast(images, factors):
  """tf.image.adjust_contrast per image: (x - mean) * f + mean, with each channel's mean over the image."""
  mean = tf.reduce_mean(images, axis=[-3, -2], keepdims=True)
  return (images - mean) * _per_image(factors, images) + mean


def adjust_saturation(images, factors):
  """tf.image.adjust_saturation per image (HSV saturation scaled by f, clipped to 1, hue and value kept), without
  the HSV round trip: each channel keeps its place between the pixel's maximum and minimum, c' = max - (max - c) r
  with r = min(f, max / (max - min))."""
  high = tf.reduce_max(images, axis=-1, keepdims=True)
  spread = high - tf.reduce_min(images, axis=-1, keepdims=True)
  ratio = tf.minimum(_per_image(factors, images), high / tf.where(spread > 0, spread, 1.0))
  return tf.where(spread > 0, high - (high - images) * ratio, images)


def adjust_hue(images, deltas):
  """tf.image.adjust_hue per image (HSV hue rotated by delta, a fraction of the circle), computed on RGB: hue from
  the largest channel, then the channels rebuilt around the same maximum and minimum."""
  r, g, b = tf.unstack(images, num=3, axis=-1)
  high = tf.reduce_max(images, axis=-1)
  spread = high - tf.reduce_min(images, axis=-1)
  safe = tf.where(spread > 0, spread, 1.0)
  # Hue in sextants, in [-1, 5), turned by 6 delta (|delta| <= 0.5) and brought back into [0, 6).
  hue = tf.where(high == r, (g - b) / safe, tf.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = hue + 6.0 * _per_image(deltas, hue)
  hue = tf.where(hue < 0.0, hue + 6.0, tf.where(hue >= 6.0, hue - 6.0, hue))
  hue = tf.where(hue < 0.0, hue + 6.0, hue)
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = hue + n
    k = tf.where(k >= 6.0, k - 6.0, k)
    channels.append(high - spread * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0))
  return tf.stack(channels, axis=-1)


def to_grayscale(images):
  return tf.tile(tf.image.rgb_to_grayscale(images), [1] * (len(images.shape) - 1) + [3])


def jitter_parameters(uniforms, strength):
  """From a view's uniforms [NUM_UNIFORMS]: (the transform at each of the 4 positions [4] (0 brightness,
  1 contrast, 2 saturation, 3 hue; NO_OP everywhere when the jitter is not applied), the parameter of each transform
  [4]). Ranges of the reference (strength s): brightness, contrast and saturation factors in
  [max(0, 1 - 0.8s), 1 + 0.8s], hue delta in [-0.2s, 0.2s]."""
  b = 0.8 * strength
  h = min(0.2 * strength, 0.5)
  lerp = lambda t, lo, hi: lo + (hi - lo) * t
  order = tf.argsort(uniforms[ORDER:ORDER + 4])
  order = tf.where(uniforms[JITTER] < 0.8, order, NO_OP)
  params = tf.stack([lerp(uniforms[BRIGHTNESS], max(0.0, 1 - b), 1 + b),
                     lerp(uniforms[CONTRAST], max(0.0, 1 - b), 1 + b),
                     lerp(uniforms[SATURATION], max(0.0, 1 - b), 1 + b), lerp(uniforms[HUE], -h, h)])
  return order, params


def blur_sigma(uniforms):
  """The blur's sigma from a view's uniforms [..., NUM_UNIFORMS]: uniform in [0.1, 2) with probability 1/2, else 0
  (not blurred)."""
  return tf.where(uniforms[..., BLUR] < 0.5, 0.1 + 1.9 * uniforms[..., SIGMA], 0.0)


def gaussian_kernel(sigma, image_size):
  """[taps] normalised Gaussian kernel of the blur (2*floor(image_size/20)+1 taps)."""
  radius = blur_taps(image_size) // 2
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  return kernel / tf.reduce_sum(kernel)


def gaussian_blur(image, sigma, image_size):
  """A view [H, W, 3] (static shape) blurred by a separable Gaussian, along the width then the height, with zero
  padding; written as a weighted sum of shifted copies, which XLA fuses into one pass per direction."""
  kernel = gaussian_kernel(sigma, image_size)
  radius = blur_taps(image_size) // 2

  def along(x, axis):
    paddings = [[0, 0], [0, 0], [0, 0]]
    paddings[axis] = [radius, radius]
    padded = tf.pad(x, paddings)
    total = 0.0
    for i in range(2 * radius + 1):
      begin = [0, 0, 0]
      begin[axis] = i
      total += kernel[i] * tf.slice(padded, begin, x.shape)
    return total

  return along(along(image, 1), 0)


def finish_view(image, uniforms, strength, image_size, use_blur):
  """A view [H, W, 3] in [0, 1] after its crop: flip, colour jitter (p 0.8; brightness, contrast, saturation, hue
  in a random order, clipped after each), greyscale (p 0.2), blur (p 0.5, when use_blur), from its uniforms
  [NUM_UNIFORMS]; only what is drawn is computed."""
  image = flip_if(image, uniforms[FLIP] < 0.5)
  order, params = jitter_parameters(uniforms, strength)
  one = lambda transform, i: lambda x: transform(x[None], params[i:i + 1])[0]
  branches = [one(adjust_brightness, 0), one(adjust_contrast, 1), one(adjust_saturation, 2), one(adjust_hue, 3),
              lambda x: x]
  for position in range(4):
    image = tf.switch_case(order[position], [lambda b=b, x=image: b(x) for b in branches])
    image = tf.clip_by_value(image, 0.0, 1.0)
  image = tf.cond(uniforms[GRAY] < 0.2, lambda: to_grayscale(image), lambda: image)
  if use_blur:
    sigma = blur_sigma(uniforms)
    image = tf.cond(sigma > 0, lambda: gaussian_blur(image, sigma, image_size), lambda: image)
  return tf.clip_by_value(image, 0.0, 1.0)


_FINISHERS = {}


def pretrain_finisher(strength: float, image_size: int, use_blur: bool):
  """finish_view of both views of an example as one XLA-compiled function: (uint8 [H, W, 6], uniforms
  [2, NUM_UNIFORMS]) -> float32 [H, W, 6]. In the input pipeline it runs per example on an image that stays in
  cache (on a CPU core about 3x cheaper than TF's image kernels op by op); in the training step, over the batch."""
  key = (strength, image_size, use_blur)
  if key not in _FINISHERS:
    def finish(image, uniforms):
      views = tf.split(to_float(image), 2, axis=-1)
      return tf.concat([finish_view(v, uniforms[i], strength, image_size, use_blur) for i, v in enumerate(views)],
                       axis=-1)
    _FINISHERS[key] = tf.function(finish, jit_compile=True, autograph=False)
  return _FINISHERS[key]


def finish_pretrain_batch(batch: dict, finisher) -> dict:
  """A batch of pretrain_example outputs finished inside the training step: 'image' float [B, H, W, 6]."""
  batch = dict(batch)
  uniforms = batch.pop('augment')
  batch['image'] = tf.map_fn(lambda e: finisher(e[0], e[1]), (batch['image'], uniforms),
                             fn_output_signature=tf.float32)
  return batch


# ---- evaluation -------------------------------------------------------------------------------------------------

def resize(image, size):
  image = tf.image.resize(image[None], [size, size], method='bicubic')[0]
  return tf.clip_by_value(image, 0.0, 1.0)


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


def blur_taps(image_size: int) -> int:
  return 2 * math.floor((image_size / 10) / 2) + 1
