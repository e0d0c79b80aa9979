"""What one call into the graph per step costs: the training loop of simclr_tf.training.fit
(make_train_loop) at
--steps_per_loop 1 and 10, timed per step in one process, interleaved, on a small model where the host's share is
largest.

  python bench/steps_per_loop.py      # ResNet-18 at 1/8 width, 32 px, global batch 16; about a minute
"""

import argparse
import os

import common
import tensorflow as tf

from simclr_tf import Config, files
from simclr_tf.modes import pretrain
from simclr_tf.training import make_train_loop


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=60, help='steps timed per setting and round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'bench', 'results', 'steps_per_loop.json'))
  options = parser.parse_args()
  config = Config(resnet_depth=18, width_multiplier=0.125, image_size=32, train_batch_size=16, proj_out_dim=16,
                  temperature=0.5, train_steps=100000, warmup_epochs=0)
  strategy = tf.distribute.get_strategy()
  task = pretrain.make_task(config, strategy, None, num_classes=10, num_examples=50000)
  optimizer = task.optimizer
  optimizer.build(task.model.trainable_variables)
  train_loop, _ = make_train_loop(strategy, task)
  batch = {'image': tf.random.uniform([16, 32, 32, 6], seed=1), 'label': tf.zeros([16], tf.int64),
           'index': tf.range(16, dtype=tf.int64)}
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())

  per_step = {1: float('inf'), 10: float('inf')}
  for _ in range(options.rounds):  # interleaved; the best round of each
    for n in per_step:
      calls = options.steps // n
      seconds = common.timed(lambda: train_loop(iterator, n) or optimizer.iterations.numpy(),
                             warmup=2, repeats=calls)
      per_step[n] = min(per_step[n], seconds / n)
      print(f'steps_per_loop={n}: {1000 * seconds / n:.2f} ms per step', flush=True)
  host_ms = 1000 * (per_step[1] - per_step[10])
  ratio = per_step[1] / per_step[10]
  rows = [[n, f'{1000 * t:.2f}', f'{per_step[1] / t:.3f}x'] for n, t in per_step.items()]
  text = common.table(['steps_per_loop (ResNet-18 1/8, 32 px, batch 16, CPU)', 'ms per step', 'speed vs 1'], rows)
  print(f'\nMachine: {common.machine()}. One call per step costs {host_ms:.2f} ms more per step '
        f'({100 * (ratio - 1):.1f}% of a step at 10 steps per call).\n')
  print(text)
  files.write_json(options.out, dict(machine=common.machine(), ms_per_step={str(n): round(1000 * t, 3)
                                                                            for n, t in per_step.items()},
                                    host_ms_per_step_saved=round(host_ms, 3),
                                    steps_per_loop_10_vs_1=round(ratio, 3), table=text))


if __name__ == '__main__':
  main()
