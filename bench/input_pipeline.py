"""The pretraining input pipeline alone (decode + two augmented views, batched) against a straightforward tf.data
SimCLR pipeline, in host CPU-seconds per image (one core), at 32 and 224 px: ours with the augmentation in the
pipeline (--augment_on=host) and with only its geometric half there (device: the colour jitter, greyscale and blur
run in the training step); and what the device half adds to the model's training step.

  python bench/input_pipeline.py          # about 5 minutes on 2 cores

Images: real CIFAR-10 JPEGs from ../shared/data/cifar10 (32 px) and, for 224 px, the same images upscaled to
500x375 and re-encoded (ImageNet's typical size), held in memory so that disk speed does not count. Every ratio
compares settings measured interleaved in this process: the median over rounds of each round's ratio (single
rounds on this VM move by 10-20%).

One core means one thread for every setting: tf.data's private pool of one thread with intra-op parallelism 1
confines TF's kernels, but an XLA-compiled function called from tf.data (our finisher) runs on the process's
intra-op pool, which is therefore set to one thread too (--threads). With two threads there, its CPU time at 32 px
was about twice a single-threaded call's (37 against 17 us per image), from work split and waited for across the
pool, so ours was measured on more than one core. The training step is timed on the same one thread.
"""

import argparse
import glob
import os
import time

import common
import numpy as np
import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.data import inputs, views
from simclr_tf.runtime import files

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

def our_config(size, blur, augment_on='host'):
  return Config(image_size=size, use_blur=blur, color_jitter_strength=1.0, augment_on=augment_on)


def our_dataset(data, size, batch, blur, augment_on='host'):
  config = our_config(size, blur, augment_on).replace(shuffle_buffer=len(data))
  records = tf.data.Dataset.from_tensor_slices({'image': data, 'label': np.zeros(len(data), np.int64)})
  source = inputs.Source(name='bench', split='train', num_examples=len(data), num_classes=1,
                         records=lambda pipeline, pipelines: records, read=tf.identity)
  return inputs.train_dataset(source, config, views.pretrain_views(config), batch)


def images_per_second(dataset, batch, batches, threads):
  """Images/s of the dataset: per CPU second with `threads` (1 = per core), else per wall-clock second."""
  options = tf.data.Options()
  if threads:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  iterator = iter(dataset.with_options(options))
  clock = time.process_time if threads == 1 else time.perf_counter
  return batch / common.timed(lambda: next(iterator), warmup=3, repeats=batches, clock=clock)


def step_seconds(model, size, batch, blur, data, steps):
  """(seconds per training step on float views made by the pipeline, the same with the uint8 batch of
  --augment_on=device finished inside the step, and that finishing alone), interleaved; the best of each. Step
  times move by several percent from run to run here; the finishing alone measures the cost without that noise."""
  from step_speed import model_config
  from simclr_tf.modes import pretrain
  from simclr_tf.training import make_replica_update
  device_batch = next(iter(our_dataset(data, size, batch, blur, 'device')))
  host_batch = next(iter(our_dataset(data, size, batch, blur, 'host')))
  steps_of = {}
  for placement, batch_in in (('host', host_batch), ('device', device_batch)):
    config = model_config(model, 'mixed_bfloat16').replace(augment_on=placement, use_blur=blur)
    task = pretrain.make_task(config, tf.distribute.get_strategy(), None, num_classes=10, num_examples=50000)
    task.optimizer.build(task.model.trainable_variables)
    update = make_replica_update(task, 1)
    feed = {k: v for k, v in batch_in.items() if k != 'index'}
    feed['label'] = feed['label'] % 10
    steps_of[placement] = tf.function(lambda update=update, feed=feed: update(feed)['loss'])
    steps_of[placement]().numpy()  # traced and warmed up
  finish = tf.function(pretrain.views.pretrain_views(our_config(size, blur, 'device')).in_step)
  device_feed = {k: v for k, v in device_batch.items() if k != 'index'}
  finish_only = lambda: finish(device_feed)['image'].numpy()
  finish_only()
  best = {}
  for _ in range(steps):
    for placement, step in steps_of.items():
      best[placement] = min(best.get(placement, float('inf')), common.timed(lambda: step().numpy(), 0, 1))
    best['finish'] = min(best.get('finish', float('inf')), common.timed(finish_only, 0, 3))
  return best['host'], best['device'], best['finish']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', type=int, default=0,
                      help='timed batches per setting and round (default 20 at 32 px, 10 at 224)')
  parser.add_argument('--rounds', type=int, default=4, help='interleaved rounds; ratios are the median over rounds')
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--model_steps', type=int, default=5)
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'bench', 'results', 'input_pipeline.json'))
  parser.add_argument('--threads', type=int, default=1,
                      help="the process's intra-op threads (0: TF's default, one per core); see above")
  options = parser.parse_args()
  tf.config.threading.set_intra_op_parallelism_threads(options.threads)
  rows, records = [], []
  settings = (('straightforward', straightforward_dataset), ('ours_host', our_dataset),
              ('ours_device', lambda *args: our_dataset(*args, augment_on='device')))
  for size, batch, shape, blur, model in ((32, 64, None, False, 'r18_cifar'), (224, 16, (375, 500), True, 'r50_224')):
    data = jpegs(options.images, shape)
    batches = options.batches or (20 if size == 32 else 10)
    rounds = {name: [] for name, _ in settings}
    for round_ in range(options.rounds):  # interleaved, so that a slow spell of the machine hits every setting
      for name, make in settings:
        rounds[name].append(images_per_second(make(data, size, batch, blur), batch, batches, threads=1))
    # Images per CPU-second of each (the median round), and each ratio as the median of the rounds' ratios.
    speeds = {name: float(np.median(values)) for name, values in rounds.items()}
    ratios = {name: float(np.median(np.array(values) / np.array(rounds['straightforward'])))
              for name, values in rounds.items()}
    host_step, device_step, finish = step_seconds(model, size, batch, blur, data, options.model_steps)
    record = dict(image_size=size, blur=blur, batch=batch, model=model,
                  straightforward_images_per_cpu_second=round(speeds['straightforward'], 1),
                  host_images_per_cpu_second=round(speeds['ours_host'], 1),
                  device_images_per_cpu_second=round(speeds['ours_device'], 1),
                  host_augment_vs_straightforward=round(ratios['ours_host'], 2),
                  device_augment_host_work_vs_straightforward=round(ratios['ours_device'], 2),
                  step_seconds_bf16=round(host_step, 4), step_seconds_bf16_with_device_augment=round(device_step, 4),
                  device_augment_seconds=round(finish, 4), device_augment_vs_step=round(finish / host_step, 3),
                  step_with_device_augment_vs_without=round(device_step / host_step, 3))
    records.append(record)
    rows.append([f'{size} px{" (+blur)" if blur else ""}', f'{speeds["straightforward"]:.0f}',
                 f'{speeds["ours_host"]:.0f} ({ratios["ours_host"]:.2f}x)',
                 f'{speeds["ours_device"]:.0f} ({ratios["ours_device"]:.2f}x)',
                 f'{model}: {host_step:.3f} s; augmentation alone {1000 * finish:.0f} ms ({100 * finish / host_step:.1f}%); '
                 f'step with it {device_step:.3f} s ({100 * (device_step / host_step - 1):+.1f}%)'])
    print(rows[-1], flush=True)
  text = common.table(['images', 'straightforward (img per CPU-s)', 'ours, --augment_on=host',
                       'ours, --augment_on=device (host part)',
                       f'training step (bf16, {options.threads or "all"} intra-op thread(s)) and device augmentation'],
                      rows)
  print(f'\nMachine: {common.machine()}. Each image = decode + two augmented views; one core.\n')
  print(text)
  files.write_json(options.out, dict(machine=common.machine(), intra_op_threads=options.threads, results=records,
                                     table=text))


if __name__ == '__main__':
  main()
