"""The pretraining input pipeline alone (JPEG decode + two augmented views, batched) against a straightforward
tf.data SimCLR pipeline, per core, at 32 and 224 px; and against the model's training step: pipeline/model.

  python bench/input_pipeline.py          # about 3 minutes on 2 cores

Images: real CIFAR-10 JPEGs from ../shared/data/cifar10 (32 px) and, for 224 px, the same images upscaled to
500x375 and re-encoded (ImageNet's typical size), held in memory so that disk speed does not count.
"""

import argparse
import glob
import os
import time

import common
import numpy as np
import tensorflow as tf

from simclr_tf import files
from simclr_tf.config import Config
from simclr_tf.data import inputs

DATA = os.path.join(os.path.dirname(common.ROOT), 'shared', 'data', 'cifar10', 'train')


def jpegs(count: int, size=None):
  """`count` CIFAR-10 training JPEGs (bytes), optionally upscaled to size=(h, w) and re-encoded at quality 90."""
  paths = sorted(glob.glob(os.path.join(DATA, '*', '*.jp*g')))[:count]
  if len(paths) < count:
    raise SystemExit(f'error: need {count} JPEGs under {DATA} (the CIFAR-10 image folder).')
  out = []
  for p in paths:
    data = tf.io.read_file(p)
    if size:
      image = tf.image.resize(tf.io.decode_jpeg(data, channels=3)[None], size, method='bicubic')[0]
      data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90)
    out.append(data.numpy())
  return out


# ---- the straightforward pipeline: per image, stateful random ops, as commonly written -----------------------

def straightforward_view(image, size, strength=1.0, blur=True):
  image = tf.image.convert_image_dtype(image, tf.float32)
  begin, crop, _ = tf.image.sample_distorted_bounding_box(
      tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=100, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop)
  image = tf.clip_by_value(tf.image.resize(image[None], [size, size], method='bicubic')[0], 0.0, 1.0)
  image = tf.image.random_flip_left_right(image)

  def jitter(x):
    b = c = s = 0.8 * strength
    ops = [lambda x: x * tf.random.uniform([], 1 - b, 1 + b),
           lambda x: tf.image.random_contrast(x, 1 - c, 1 + c),
           lambda x: tf.image.random_saturation(x, 1 - s, 1 + s),
           lambda x: tf.image.random_hue(x, 0.2 * strength)]
    order = tf.random.shuffle(tf.range(4))
    for i in range(4):
      x = tf.switch_case(order[i], [lambda op=op: op(x) for op in ops])
      x = tf.clip_by_value(x, 0.0, 1.0)
    return x

  def maybe(p, fn, x):
    return tf.cond(tf.random.uniform([]) < p, lambda: fn(x), lambda: x)

  image = maybe(0.8, jitter, image)
  image = maybe(0.2, lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), image)
  if blur:
    def gaussian(x):
      radius = (2 * int(size / 20) + 1) // 2
      sigma = tf.random.uniform([], 0.1, 2.0)
      k = tf.exp(-tf.square(tf.cast(tf.range(-radius, radius + 1), tf.float32)) / (2 * sigma ** 2))
      k /= tf.reduce_sum(k)
      x = tf.nn.depthwise_conv2d(x[None], tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1]), [1] * 4, 'SAME')
      return tf.nn.depthwise_conv2d(x, tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1]), [1] * 4, 'SAME')[0]
    image = maybe(0.5, gaussian, image)
  return tf.clip_by_value(image, 0.0, 1.0)


def straightforward_dataset(data, size, batch, blur):
  def prepare(encoded):
    image = tf.io.decode_jpeg(encoded, channels=3)
    return tf.concat([straightforward_view(image, size, blur=blur), straightforward_view(image, size, blur=blur)],
                     axis=-1)
  ds = tf.data.Dataset.from_tensor_slices(data).repeat().shuffle(len(data))
  return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True).prefetch(2)


# ---- ours ------------------------------------------------------------------------------------------------------

def our_dataset(data, size, batch, blur):
  config = Config(image_size=size, use_blur=blur, color_jitter_strength=1.0, shuffle_buffer=len(data))
  records = tf.data.Dataset.from_tensor_slices({'image': data, 'label': np.zeros(len(data), np.int64)})
  source = inputs.Source(name='bench', split='train', num_examples=len(data), num_classes=1,
                         records=lambda pipeline, pipelines: records, decode=inputs.decode_image)
  return inputs.train_dataset(source, config, inputs.pretrain_view_fn(config), batch)


def images_per_second(dataset, batch, batches, threads):
  """Images/s of the dataset: per CPU second with `threads` (1 = per core), else per wall-clock second."""
  options = tf.data.Options()
  if threads:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  iterator = iter(dataset.with_options(options))
  clock = time.process_time if threads == 1 else time.perf_counter
  return batch / common.timed(lambda: next(iterator), warmup=3, repeats=batches, clock=clock)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', type=int, default=0,
                      help='timed batches per setting (default 20 at 32 px, 6 at 224)')
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--model_steps', type=int, default=2)
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'bench', 'results', 'input_pipeline.json'))
  options = parser.parse_args()
  rows, records = [], []
  for size, batch, shape, blur, model in ((32, 64, None, False, 'r18_cifar'), (224, 16, (375, 500), True, 'r50_224')):
    data = jpegs(options.images, shape)
    batches = options.batches or (20 if size == 32 else 6)
    speeds = {}
    for round_ in range(2):  # interleaved; the best of two rounds each
      for name, make in (('straightforward', straightforward_dataset), ('ours', our_dataset)):
        speed = images_per_second(make(data, size, batch, blur), batch, batches, threads=1)
        speeds[name] = max(speeds.get(name, 0), speed)
    ours_all_cores = images_per_second(our_dataset(data, size, batch, blur), batch, batches, threads=0)
    from step_speed import images_per_second as step_images_per_second, model_config
    model_speed = step_images_per_second(model_config(model, 'mixed_bfloat16'), options.model_steps)
    ratio = speeds['ours'] / speeds['straightforward']
    record = dict(image_size=size, blur=blur, batch=batch, straightforward_per_core=round(speeds['straightforward'], 1),
                  ours_per_core=round(speeds['ours'], 1), ours_vs_straightforward=round(ratio, 2),
                  ours_all_cores=round(ours_all_cores, 1), model=model, model_step_bf16=round(model_speed, 1),
                  pipeline_over_model=round(ours_all_cores / model_speed, 2))
    records.append(record)
    rows.append([f'{size} px{" (+blur)" if blur else ""}', f'{speeds["straightforward"]:.0f}',
                 f'{speeds["ours"]:.0f}', f'{ratio:.2f}x', f'{ours_all_cores:.0f}', f'{model_speed:.1f} ({model})',
                 f'{ours_all_cores / model_speed:.1f}x'])
    print(rows[-1], flush=True)
  text = common.table(['images', 'straightforward, 1 core (img/s)', 'ours, 1 core (img/s)', 'ours / straightforward',
                       f'ours, {os.cpu_count()} cores (img/s)', 'model step, bf16 (img/s)', 'pipeline / model'], rows)
  print(f'\nMachine: {common.machine()}. Each image = JPEG decode + two augmented views.\n')
  print(text)
  files.write_json(options.out, dict(machine=common.machine(), results=records, table=text))


if __name__ == '__main__':
  main()
