"""One replica against two logical CPU replicas at the same global batch: what mirroring costs (the gathering of
negatives across replicas, synchronized batch norm, the gradient all-reduce), measured in one process.

  python bench/replicas.py            # ResNet-18, CIFAR stem, 32 px, global batch 64; about 2 minutes
"""

import argparse
import os

import common
import tensorflow as tf

_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from simclr_tf.modes import pretrain  # noqa: E402
from simclr_tf.runtime import files  # noqa: E402
from simclr_tf.training import make_replica_update  # noqa: E402
from step_speed import model_config  # noqa: E402


def images_per_second(strategy, config, steps):
  """Images/s of the distributed training update (as simclr_tf.training.fit runs it) on fixed per-replica batches."""
  task = pretrain.make_task(config, strategy, None, num_classes=10, num_examples=50000)
  with strategy.scope():
    task.optimizer.build(task.model.trainable_variables)
  update = make_replica_update(task, strategy.num_replicas_in_sync)
  per_replica = config.train_batch_size // strategy.num_replicas_in_sync
  size = config.image_size
  batch = {'image': tf.random.uniform([per_replica, size, size, 6]),
           'label': tf.random.uniform([per_replica], 0, 10, tf.int64)}

  @tf.function
  def step():
    losses = strategy.run(lambda: update(batch)['loss'])
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

  return config.train_batch_size / common.timed(lambda: step().numpy(), warmup=2, repeats=steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--precision', default='float32')
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'bench', 'results', 'replicas.json'))
  options = parser.parse_args()
  config = model_config('r18_cifar', options.precision)
  devices = [d.name for d in tf.config.list_logical_devices('CPU')]
  mirrored = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
  strategies = {'1 replica': tf.distribute.OneDeviceStrategy(devices[0]), '2 replicas': mirrored}
  speeds = {}
  for round_ in range(2):  # interleaved; the best of two rounds each
    for name, strategy in strategies.items():
      speeds[name] = max(speeds.get(name, 0), images_per_second(strategy, config, options.steps))
      print(name, round(speeds[name], 1), flush=True)
  overhead = 1 - speeds['2 replicas'] / speeds['1 replica']
  rows = [[name, f'{speed:.1f}', f'{speed / speeds["1 replica"]:.2f}x'] for name, speed in speeds.items()]
  text = common.table([f'ResNet-18 CIFAR, global batch {config.train_batch_size}, {options.precision}', 'images/s',
                       'vs 1 replica'], rows)
  print(f'\nMachine: {common.machine()}. Overhead of two replicas: {100 * overhead:.0f}%.\n')
  print(text)
  files.write_json(options.out, dict(machine=common.machine(), images_per_second=speeds,
                                    overhead=round(overhead, 3), table=text))


if __name__ == '__main__':
  main()
