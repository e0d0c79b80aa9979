"""The SimCLR augmentations, in two stages that meet at uint8 crops.

1. Per example, in the input pipeline (`pretrain_example`, `finetune_example`): each crop window is drawn on the
   image's shape; a pretraining pair is sliced from one decode, a single small window of a JPEG decodes only itself
   (`decodes_window`); the crops are resized bicubically and rounded to uint8. All the other random choices of
   a pretraining view (flip, colour jitter and its order, greyscale, blur) come from one stateless draw of
   NUM_UNIFORMS uniforms per view, shipped beside the crops.
2. Per batch (`pretrain_finisher`, one XLA-compiled function over the batch): `finish_view` flips, colour-jitters
   in the view's random order, greyscales and blurs each view, computing only what was drawn. The input pipeline
   runs it on each batch (--augment_on=host) or the training step does (device): the same function of the same
   crops and uniforms either way.

Every random choice comes from a stateless op keyed by a [2] int seed, so an example's views depend only on (run
seed, example index): the pipeline is reproducible and a resumed run sees exactly the data an uninterrupted one
would. Float images are in [0, 1], HWC (the colour transforms work on channel planes, see `to_planes`).
"""

import math

import tensorflow as tf

CROP_PROPORTION = 0.875

# The uniforms of one pretraining view, in the order of the draw; they travel with the crops ('augment').
FLIP, JITTER, ORDER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAY, BLUR, SIGMA = 0, 1, 2, 6, 7, 8, 9, 10, 11, 12
NUM_UNIFORMS = 13
NO_OP = 4  # the colour transform "position" of an image whose jitter is not applied
WINDOW_DECODE_MIN_PIXELS = 64 * 64  # a single crop of a JPEG with more pixels, and
WINDOW_DECODE_MAX_AREA = 0.25  # a window under this fraction of it, decodes only the window (decodes_window)


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


def decodes_window(image_pixels, window_pixels):
  """Whether a single crop is decoded as its window only (tf.image.decode_and_crop_jpeg) rather than from a whole
  decode: for JPEGs above 64x64 whose window is under a quarter of the image. Measured with libjpeg-turbo on this
  project's CPU at 500x375: a window still entropy-decodes every row down to its bottom edge, so it costs about half
  a whole decode at 8% of the area and as much as a whole decode from 25% up."""
  return tf.logical_and(image_pixels > WINDOW_DECODE_MIN_PIXELS,
                        tf.cast(window_pixels, tf.float32) < WINDOW_DECODE_MAX_AREA * tf.cast(image_pixels, tf.float32))


def decoded_crops(encoded: tf.Tensor, seeds, area_range):
  """The crops of one image for each seed, as uint8 HWC, each window drawn on the image's shape. Two or more crops
  (a pretraining pair) decode the image once and slice it: two window decodes cost more than one whole decode (see
  decodes_window). A single crop of a JPEG decodes only its window when decodes_window says so: the pixels of a
  whole decode, except on the window's outermost rows and columns, where the decoder's chroma upsampling lacks
  neighbours and moves a few pixels by a few levels."""
  def whole():
    image = decode_image(encoded)
    return [tf.slice(image, *crop_window(tf.shape(image), seed, area_range)) for seed in seeds]

  if len(seeds) > 1:
    crops = whole()
  else:
    def jpeg():
      header = tf.image.extract_jpeg_shape(encoded)
      begin, size = crop_window(tf.stack([header[0], header[1], 3]), seeds[0], area_range)
      window = lambda: tf.image.decode_and_crop_jpeg(encoded, tf.stack([begin[0], begin[1], size[0], size[1]]),
                                                     channels=3)
      return tf.cond(decodes_window(header[0] * header[1], size[0] * size[1]), window,
                     lambda: tf.slice(tf.io.decode_jpeg(encoded, channels=3), begin, size))

    crops = [tf.cond(tf.io.is_jpeg(encoded), jpeg, lambda: whole()[0])]
  for crop in crops:
    crop.set_shape([None, None, 3])
  return crops


def resize_crop(crop, size):
  """Bicubic resize of a crop [H, W, C] to float [size, size, C] (the reference's method)."""
  return tf.image.resize(crop[None], [size, size], method='bicubic')[0]


def to_uint8(image):
  """Resized pixels rounded back to uint8 (what travels to finish_view)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def resize_to_uint8(crop, size):
  return to_uint8(resize_crop(crop, size))


def flip_if(image, flip):
  return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def pretrain_example(encoded, seed, size, crop_min_area=0.08):
  """Two pretraining views of an encoded image up to their crops: {'view1', 'view2': uint8 [size, size, 3] (the two
  crops, resized), 'augment': float32 [2, NUM_UNIFORMS] (each view's uniforms for finish_view)}.

  Each view is rounded to uint8 as it comes out of its resize and travels on its own: the model's layout, the views
  along channels, is made by the finisher. Joining the views here (tf.stack, or a concat of the float views) writes
  a fresh buffer per image, which the batch copies once more: at 224 px on a 2-core AMD EPYC, the stacked pair
  cost 1-4% of the pipeline's host work, the float concat about 20%."""
  crop1, crop2, draw_seed = split_seed(seed, 3)
  crops = decoded_crops(encoded, (crop1, crop2), (crop_min_area, 1.0))
  view1, view2 = [resize_to_uint8(crop, size) for crop in crops]
  return {'view1': view1, 'view2': view2, 'augment': tf.random.stateless_uniform([2, NUM_UNIFORMS], draw_seed)}


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


# The colour transforms, greyscale and blur work on channel planes, [..., 3, H, W] (`to_planes`): each channel is
# contiguous, so a per-pixel formula over r, g and b vectorises (with channels last it reads three strided streams:
# over a batch, XLA's CPU code for hue and saturation was 4-6x slower per pixel that way; the whole finisher is 28%
# faster at 224 px, the same at 32 px). The values are the same in either layout.

def to_planes(images):
  """[..., H, W, 3] -> [..., 3, H, W]."""
  rank = len(images.shape)
  return tf.transpose(images, list(range(rank - 3)) + [rank - 1, rank - 3, rank - 2])


def from_planes(planes):
  """[..., 3, H, W] -> [..., H, W, 3]."""
  rank = len(planes.shape)
  return tf.transpose(planes, list(range(rank - 3)) + [rank - 2, rank - 1, rank - 3])


def _channels(planes):
  return tf.unstack(planes, num=3, axis=-3)


def adjust_brightness(planes, factors):
  """Multiplicative brightness (SimCLRv2): x * f."""
  return planes * _per_image(factors, planes)


def adjust_contrast(planes, factors):
  """tf.image.adjust_contrast per image: (x - mean) * f + mean, with each channel's mean over the image."""
  mean = tf.reduce_mean(planes, axis=[-2, -1], keepdims=True)
  return (planes - mean) * _per_image(factors, planes) + mean


def adjust_saturation(planes, factors):
  """tf.image.adjust_saturation per image (HSV saturation scaled by f, clipped to 1, hue and value kept), without
  the HSV round trip: each channel keeps its place between the pixel's maximum and minimum, c' = max - (max - c) r
  with r = min(f, max / (max - min))."""
  r, g, b = _channels(planes)
  high = tf.expand_dims(tf.maximum(tf.maximum(r, g), b), -3)
  spread = high - tf.expand_dims(tf.minimum(tf.minimum(r, g), b), -3)
  ratio = tf.minimum(_per_image(factors, planes), high / tf.where(spread > 0, spread, 1.0))
  return tf.where(spread > 0, high - (high - planes) * ratio, planes)


def adjust_hue(planes, deltas):
  """tf.image.adjust_hue per image (HSV hue rotated by delta, a fraction of the circle), computed on RGB: hue from
  the largest channel, then the channels rebuilt around the same maximum and minimum."""
  r, g, b = _channels(planes)
  high = tf.maximum(tf.maximum(r, g), b)
  spread = high - tf.minimum(tf.minimum(r, g), b)
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
  return tf.stack(channels, axis=-3)


def to_grayscale(planes):
  """Luma with tf.image.rgb_to_grayscale's weights, in all three planes."""
  r, g, b = _channels(planes)
  gray = 0.2989 * r + 0.5870 * g + 0.1140 * b
  return tf.stack([gray, gray, gray], axis=-3)


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


def gaussian_blur(planes, sigma, image_size):
  """A view's planes [3, H, W] (static shape) blurred by a separable Gaussian, along the width then the height, with
  zero padding; written as a weighted sum of shifted copies, which XLA fuses into one pass per direction. The
  kernel is symmetric, so the two copies at the same distance are added before their one multiply: a blurred 224 px
  view costs 0.50 instead of 0.57 ms on a 2-core AMD EPYC."""
  kernel = gaussian_kernel(sigma, image_size)
  radius = blur_taps(image_size) // 2

  def along(x, axis):
    paddings = [[0, 0], [0, 0], [0, 0]]
    paddings[axis] = [radius, radius]
    padded = tf.pad(x, paddings)

    def shifted(offset):
      begin = [0, 0, 0]
      begin[axis] = radius + offset
      return tf.slice(padded, begin, x.shape)

    total = kernel[radius] * x
    for i in range(1, radius + 1):
      total += kernel[radius + i] * (shifted(i) + shifted(-i))
    return total

  return along(along(planes, 2), 1)


def finish_view(view, uniforms, strength, image_size, use_blur):
  """A view [H, W, 3] (uint8, or float in [0, 1]) after its crop -> float32 [H, W, 3] in [0, 1]: flip, colour
  jitter (p 0.8; brightness, contrast, saturation, hue in a random order, clipped after each), greyscale (p 0.2),
  blur (p 0.5, when use_blur), from its uniforms [NUM_UNIFORMS]; only what is drawn is computed.

  On a CPU this is bound by passes over memory (a 224 px view is 600 kB in float32), and a branch that leaves its
  input as it is still copies it. So no branch is an identity: the flip rides on the conversion to float planes
  (done in both branches of the jitter), greyscale is a select fused into the last pass, and the blur's branches both
  end with the conversion back to [H, W, 3]."""
  def start():
    return to_planes(to_float(tf.where(uniforms[FLIP] < 0.5, tf.reverse(view, [1]), view)))

  order, params = jitter_parameters(uniforms, strength)
  clipped = lambda transform, i: lambda x: tf.clip_by_value(transform(x[None], params[i:i + 1])[0], 0.0, 1.0)
  transforms = [clipped(adjust_brightness, 0), clipped(adjust_contrast, 1), clipped(adjust_saturation, 2),
                clipped(adjust_hue, 3)]

  def jittered():
    planes = start()
    for position in range(4):
      planes = tf.switch_case(order[position], [lambda t=t, x=planes: t(x) for t in transforms])
    return planes

  planes = tf.cond(order[0] != NO_OP, jittered, start)
  # Greyscale keeps values in [0, 1] (its weights sum to 0.9999); the blur's normalised kernel may round above 1.
  gray = lambda: tf.where(uniforms[GRAY] < 0.2, to_grayscale(planes), planes)
  if not use_blur:
    return from_planes(gray())
  sigma = blur_sigma(uniforms)
  return tf.cond(sigma > 0, lambda: from_planes(tf.clip_by_value(gaussian_blur(gray(), sigma, image_size), 0.0, 1.0)),
                 lambda: from_planes(gray()))


_FINISHERS = {}


def pretrain_finisher(strength: float, image_size: int, use_blur: bool):
  """finish_view of both views of every example of a batch, as one XLA-compiled function: (uint8 views1, views2
  [B, H, W, 3], uniforms [B, 2, NUM_UNIFORMS]) -> float32 [B, H, W, 6], the views along channels. A loop over the
  examples, so that each computes only what its draws ask for. The input pipeline calls it once per batch
  (--augment_on=host), or the training step does (device): the same computation either way."""
  key = (strength, image_size, use_blur)
  if key not in _FINISHERS:
    def finish(view1, view2, uniforms):
      return tf.concat([finish_view(view, uniforms[i], strength, image_size, use_blur)
                        for i, view in enumerate((view1, view2))], axis=-1)

    def finish_batch(views1, views2, uniforms):
      return tf.map_fn(lambda e: finish(*e), (views1, views2, uniforms), fn_output_signature=tf.float32)

    _FINISHERS[key] = tf.function(finish_batch, jit_compile=True, autograph=False)
  return _FINISHERS[key]


def finish_pretrain_batch(batch: dict, finisher) -> dict:
  """A batch of pretrain_example outputs finished by `finisher` (pretrain_finisher): 'image' float [B, H, W, 6];
  'view1', 'view2' and 'augment' consumed."""
  batch = dict(batch)
  views1, views2, uniforms = batch.pop('view1'), batch.pop('view2'), batch.pop('augment')
  # The static shape, also for Grappler: the output of an XLA-compiled call has none in the GraphDef, and without
  # it Grappler's arithmetic optimizer rewrites the model's graph differently, so a step would round differently
  # (by an ulp) from the same step fed by the input pipeline.
  batch_size, height, width, _ = views1.shape
  batch['image'] = tf.ensure_shape(finisher(views1, views2, uniforms), [batch_size, height, width, 6])
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
