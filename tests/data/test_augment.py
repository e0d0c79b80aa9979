import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import SHARED
from simclr_tf.config import Config
from simclr_tf.data import augment, inputs, views

CIFAR = os.path.join(SHARED, 'data', 'cifar10', 'train')
pytestmark = pytest.mark.reads_shared  # real photos when ../shared has them, random images otherwise


def image(size=40, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(size=(size, size, 3)), tf.float32)


def encoded_images(count=6, size=(90, 120)):
  """Real photos (CIFAR-10 JPEGs, read in place) upscaled and re-encoded as JPEG, as a list of bytes tensors; random
  images when the data is not there."""
  paths = sorted(glob.glob(os.path.join(CIFAR, '*', '*.jp*g')))[:count]
  out = []
  for i in range(count):
    if i < len(paths):
      pixels = tf.io.decode_jpeg(tf.io.read_file(paths[i]), channels=3)
    else:
      pixels = tf.cast(image(32, i) * 255, tf.uint8)
    pixels = tf.cast(tf.clip_by_value(tf.image.resize(pixels[None], size, 'bicubic')[0], 0, 255), tf.uint8)
    out.append(tf.io.encode_jpeg(pixels, quality=90))
  return out


def seed(i, run=0):
  return tf.constant([run, i], tf.int64)


def test_colour_transforms_equal_tensorflows_own_kernels_image_by_image():
  """Ours work on channel planes [..., 3, H, W]; TensorFlow's on [H, W, 3]: the same values."""
  x = tf.concat([tf.random.uniform([5, 24, 24, 3], seed=1), tf.fill([1, 24, 24, 3], 0.4)], 0)  # and a grey image
  factors = tf.constant([0.2, 0.7, 1.0, 1.3, 1.8, 1.5])
  deltas = tf.constant([-0.2, -0.05, 0.0, 0.1, 0.2, 0.15])
  pairs = [(augment.adjust_contrast, tf.image.adjust_contrast, factors),
           (augment.adjust_saturation, tf.image.adjust_saturation, factors),
           (augment.adjust_hue, tf.image.adjust_hue, deltas),
           (augment.adjust_brightness, lambda im, f: im * f, factors),
           (lambda planes, _: augment.to_grayscale(planes), lambda im, _: tf.tile(tf.image.rgb_to_grayscale(im),
                                                                                    [1, 1, 3]), factors)]
  planes = augment.to_planes(x)
  assert planes.shape == (6, 3, 24, 24)
  np.testing.assert_array_equal(augment.from_planes(planes).numpy(), x.numpy())
  for ours, theirs, params in pairs:
    got = augment.from_planes(ours(planes, params)).numpy()
    want = np.stack([theirs(x[i], params[i]).numpy() for i in range(6)])
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=ours.__name__)


def test_crops_are_drawn_as_the_reference_draws_them():
  """Crop areas and aspect ratios of our stateless draws against tf.image.sample_distorted_bounding_box, the op the
  reference code calls (two-sample Kolmogorov-Smirnov distance over 2,000 draws each)."""
  shape = tf.constant([375, 500, 3])
  ours, reference = [], []
  for i in range(2000):
    _, size = augment.crop_window(shape, seed(i, 3))
    ours.append(size.numpy()[:2])
    _, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=100, use_image_if_no_bounding_boxes=True, seed=i + 1)
    reference.append(size.numpy()[:2])
  ours, reference = np.array(ours, float), np.array(reference, float)

  def ks(a, b):
    grid = np.sort(np.concatenate([a, b]))
    return np.max(np.abs(np.searchsorted(np.sort(a), grid, 'right') / len(a) -
                         np.searchsorted(np.sort(b), grid, 'right') / len(b)))

  area = lambda s: s[:, 0] * s[:, 1] / (375 * 500)
  aspect = lambda s: s[:, 1] / s[:, 0]
  assert ks(area(ours), area(reference)) < 0.05  # 1% critical value at n = m = 2000: 0.0515
  assert ks(aspect(ours), aspect(reference)) < 0.05
  assert 0.08 <= area(ours).min() and area(ours).max() <= 1.0


def luma(pixels):
  return pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114


@pytest.mark.parametrize('chroma_subsampled', [True, False], ids=['4:2:0', '4:4:4'])
def test_a_small_crop_of_a_jpeg_decodes_only_its_window_with_the_pixels_of_a_whole_decode(chroma_subsampled):
  """On any image (random pixels here: no content assumed). Without chroma subsampling a window decode is the whole
  decode's slice, bit for bit. With it (4:2:0, what cameras and most JPEGs use) the decoder's chroma upsampling
  lacks the neighbours beyond the window on its outermost rows and columns: only the colour of those pixels moves,
  so inside the window the pixels are equal and on its edge their luma is equal up to the two decodes' rounding (at
  most 1 level; pixels clipped at 0 or 255 in a channel lose that identity and are left out)."""
  windowed = moved = 0
  for j in range(3):
    pixels = tf.cast(tf.random.stateless_uniform([300, 400, 3], [j, 9]) * 255, tf.uint8)
    data = tf.io.encode_jpeg(pixels, quality=90, chroma_downsampling=chroma_subsampled)
    whole = tf.io.decode_jpeg(data, channels=3)
    for i in range(12):
      crop, = augment.decoded_crops(data, (seed(i, j),), (0.08, 0.4))
      begin, size = augment.crop_window(tf.shape(whole), seed(i, j), (0.08, 0.4))
      expected = tf.slice(whole, begin, size).numpy().astype(float)
      got = crop.numpy().astype(float)
      assert got.shape == expected.shape
      small = int(size[0] * size[1]) < augment.WINDOW_DECODE_MAX_AREA * 300 * 400
      windowed += int(small)
      moved += int(small and np.any(got != expected))
      if not small or not chroma_subsampled:
        np.testing.assert_array_equal(got, expected)
        continue
      np.testing.assert_array_equal(got[1:-1, 1:-1], expected[1:-1, 1:-1])
      unclipped = (np.minimum(got.min(-1), expected.min(-1)) > 0) & (np.maximum(got.max(-1), expected.max(-1)) < 255)
      assert unclipped.mean() > 0.5
      assert np.abs(luma(got) - luma(expected))[unclipped].max() <= 1
  assert 6 <= windowed <= 30  # both kinds were seen
  # The small windows were decoded alone (a whole decode never moves an edge pixel).
  assert (moved > 0) == chroma_subsampled
  png = tf.io.encode_png(pixels)  # other formats: decoded whole, then sliced
  crop, = augment.decoded_crops(png, (seed(0),), (0.08, 1.0))
  begin, size = augment.crop_window(tf.constant([300, 400, 3]), seed(0))
  np.testing.assert_array_equal(crop.numpy(), tf.slice(pixels, begin, size).numpy())


def test_only_small_windows_of_big_jpegs_decode_alone():
  big = 375 * 500
  assert augment.decodes_window(big, int(0.08 * big)) and augment.decodes_window(big, int(0.24 * big))
  assert not augment.decodes_window(big, int(0.26 * big)) and not augment.decodes_window(big, big)
  assert not augment.decodes_window(32 * 32, 4 * 4)  # small images decode whole


def test_a_pretraining_pair_is_sliced_from_one_decode():
  data = encoded_images(1, (300, 400))[0]
  whole = tf.io.decode_jpeg(data, channels=3)
  crops = augment.decoded_crops(data, (seed(1), seed(2)), (0.08, 1.0))
  for crop, s in zip(crops, (seed(1), seed(2))):
    np.testing.assert_array_equal(crop.numpy(), tf.slice(whole, *augment.crop_window(tf.shape(whole), s)).numpy())


@pytest.mark.parametrize('blur', [True, False])
def test_host_and_device_augmentation_make_the_same_views(blur):
  """The same seeds give the same views image by image, bit for bit, whether the input pipeline finishes each batch
  (--augment_on=host) or the training step does (device, also inside a step compiled with XLA); the device's input
  pipeline ships uint8."""
  encoded = encoded_images(6)
  config = Config(image_size=32, use_blur=blur, color_jitter_strength=1.0, shuffle_buffer=6, seed=7)
  records = tf.data.Dataset.from_tensor_slices({'image': tf.stack(encoded), 'label': tf.zeros([6], tf.int64)})
  source = inputs.Source('test', 'train', 6, 1, lambda pipeline, pipelines: records, tf.identity)
  finished = {}
  for placement in ('host', 'device'):
    v = views.pretrain_views(config.replace(augment_on=placement))
    batch = next(iter(inputs.train_dataset(source, config, v, 6)))
    batch.pop('index')
    if placement == 'device':  # the two crops travel as uint8, each on its own
      assert 'image' not in batch and batch['view1'].dtype == batch['view2'].dtype == tf.uint8
    else:
      assert set(batch) == {'image', 'label'} and batch['image'].dtype == tf.float32
    finished[placement] = v.in_step(batch)['image'].numpy()
    if placement == 'device':
      compiled = tf.function(v.in_step, jit_compile=True)(batch)['image'].numpy()
  host, device = finished['host'], finished['device']
  assert host.shape == (6, 32, 32, 6) and 0.0 <= host.min() and host.max() <= 1.0
  np.testing.assert_array_equal(device, host)
  np.testing.assert_array_equal(compiled, host)
  assert not np.allclose(host[..., :3], host[..., 3:])  # two different views


def test_a_view_is_the_same_alone_or_in_any_batch():
  """A view depends on its own crops and draws only: finished in a batch of 5 or alone, the same pixels."""
  encoded = encoded_images(5)
  v = views.pretrain_views(Config(image_size=32, use_blur=True, color_jitter_strength=1.0))
  examples = [v.example(data, seed(i, 3)) for i, data in enumerate(encoded)]
  batch = v.finish({k: tf.stack([e[k] for e in examples]) for k in examples[0]})['image'].numpy()
  for i, e in enumerate(examples):
    alone = v.finish({k: t[None] for k, t in e.items()})['image'].numpy()
    np.testing.assert_array_equal(alone[0], batch[i])


def test_views_are_reproducible_and_depend_on_the_seed():
  data = encoded_images(1)[0]
  v = views.pretrain_views(Config(image_size=32))
  crops = lambda example: np.stack([example['view1'].numpy(), example['view2'].numpy()])
  first = [crops(v.example(data, seed(i))) for i in range(4)]
  np.testing.assert_array_equal(crops(v.example(data, seed(2))), first[2])
  assert not np.allclose(first[0], first[1])
  assert not np.allclose(first[0][0], first[0][1])  # an example's two crops differ


def test_the_drawn_parameters_cover_the_references_ranges():
  """Over many views: jitter applied to 80%, greyscale to 20%, blur to 50%, flips to 50%; factors span
  [1 - 0.8s, 1 + 0.8s] (hue +-0.2s) and each of the four transforms comes first about equally often."""
  n = 4000
  uniforms = tf.random.stateless_uniform([n, augment.NUM_UNIFORMS], seed(0, 11))
  orders, params = zip(*[augment.jitter_parameters(uniforms[i], 0.5) for i in range(1000)])
  orders, params = np.array(orders), np.array(params)
  jittered = orders[:, 0] != augment.NO_OP
  assert abs(jittered.mean() - 0.8) < 0.04
  first = orders[jittered, 0]
  assert set(first) == {0, 1, 2, 3} and np.bincount(first).min() > 0.8 * len(first) / 4
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders[jittered])  # a permutation
  for t, (lo, hi) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
    assert lo <= params[:, t].min() < lo + 0.01 and hi - 0.01 < params[:, t].max() <= hi
  u = uniforms.numpy()
  assert abs((u[:, augment.GRAY] < 0.2).mean() - 0.2) < 0.02
  assert abs((u[:, augment.FLIP] < 0.5).mean() - 0.5) < 0.03
  sigmas = augment.blur_sigma(uniforms).numpy()
  assert abs((sigmas > 0).mean() - 0.5) < 0.03 and 0.1 <= sigmas[sigmas > 0].min() and sigmas.max() < 2.0


def test_blur_is_a_normalised_separable_gaussian_with_zero_padding():
  assert augment.blur_taps(224) == 23 and augment.blur_taps(32) == 3 and augment.blur_taps(10) == 1
  flat = tf.ones([3, 32, 32]) * 0.5  # channel planes
  blurred = augment.gaussian_blur(flat, tf.constant(1.0), 32).numpy()
  np.testing.assert_allclose(blurred[:, 1:-1, 1:-1], 0.5, rtol=1e-6)  # weights sum to 1 away from the zero border
  assert (blurred[:, 0, 1:-1] < 0.5).all() and (blurred[:, 1:-1, 0] < 0.5).all()  # zero padding at the border
  x = image(48, 3)
  k = augment.gaussian_kernel(tf.constant(1.5), 224).numpy()  # 23 taps, as at 224 px
  want = tf.nn.depthwise_conv2d(x[None], np.tile(k.reshape(1, -1, 1, 1), [1, 1, 3, 1]), [1] * 4, 'SAME')
  want = tf.nn.depthwise_conv2d(want, np.tile(k.reshape(-1, 1, 1, 1), [1, 1, 3, 1]), [1] * 4, 'SAME')[0]
  got = augment.from_planes(augment.gaussian_blur(augment.to_planes(x), tf.constant(1.5), 224))
  np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def test_eval_view_center_crops_big_images_only():
  small = image(32)
  np.testing.assert_allclose(augment.eval_view(small, 32).numpy(), small.numpy(), atol=1e-5)
  big = tf.reshape(tf.range(64 * 64 * 3, dtype=tf.float32) / (64 * 64 * 3), [64, 64, 3])
  out = augment.eval_view(big, 56)  # crop 56 of 64 (0.875), resize to 56 = identity
  np.testing.assert_allclose(out.numpy(), big[4:60, 4:60].numpy(), atol=1e-5)


def test_finetune_views_are_crops_and_flips_only():
  data = encoded_images(1, (48, 48))[0]
  for placement in ('host', 'device'):
    v = views.finetune_views(Config(image_size=32, augment_on=placement))
    example = v.example(data, seed(1))
    assert set(example) == {'image'} and example['image'].dtype == tf.uint8
    batch = {'image': example['image'][None]}
    pipeline, step = v.in_pipeline(batch)['image'], v.in_step(v.in_pipeline(batch))['image']
    assert pipeline.dtype == (tf.uint8 if placement == 'device' else tf.float32)
    assert step.dtype == tf.float32 and step.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(step.numpy(), example['image'].numpy()[None] * np.float32(1 / 255))


@pytest.mark.parametrize('min_area', [0.08, 0.5])
def test_finetune_crops_honour_their_minimum_area(min_area):
  # A lossless image whose red channel is 4·x and green channel 4·y: the value ranges of a view tell the size of the
  # window it was cropped from, so the areas are measured on the views themselves.
  ys, xs = np.meshgrid(np.arange(64), np.arange(64), indexing='ij')
  pixels = np.stack([4 * xs, 4 * ys, np.zeros_like(xs)], -1).astype(np.uint8)
  encoded = tf.io.encode_png(pixels)
  v = views.finetune_views(Config(image_size=32, finetune_crop_min_area=min_area))
  areas = []
  for i in range(300):
    image = v.example(encoded, seed(i))['image'].numpy().astype(float)
    width = (image[..., 0].max() - image[..., 0].min()) / 4 + 1
    height = (image[..., 1].max() - image[..., 1].min()) / 4 + 1
    areas.append(width * height / 64 ** 2)
  areas = np.array(areas)
  # Resizing pulls a window's outer pixels in by up to half an input pixel on each side: 1 pixel in 64 per axis.
  assert areas.min() >= min_area * (1 - 1 / 64) ** 2 - 1e-6
  assert areas.max() > 0.9
  if min_area < 0.1:
    assert (areas < 0.3).mean() > 0.1  # small crops do occur
