"""Pretraining step speed on this machine: images/s (two views each) of the real training update (SimCLRv2
3-layer head, NT-Xent, LARS, synchronized batch norm, linear head on a stop-gradient) for ResNet-18 with the CIFAR
stem at 32 px (batch 64) and ResNet-50 at 224 px (batch 16), in float32 and bfloat16, XLA off and on; with the
model's FLOPs and the achieved FLOP/s as a fraction of a matmul peak measured in the same process.

  python bench/step_speed.py                 # both models (about 5 minutes on 2 cores)
  python bench/step_speed.py --models=r18_cifar --steps=3

The input is a fixed random batch (bench/input_pipeline.py measures the pipeline); the reference figures are the
paper's TF2 code on this machine class, as given in the issue that asked for this benchmark.
"""

import argparse
import os

import common  # noqa: F401  (sets up logging first)
import tensorflow as tf

from simclr_tf import Config, build_model, files
from simclr_tf.modes import pretrain
from simclr_tf.training import make_replica_update

MODELS = {
    'r18_cifar': dict(resnet_depth=18, image_size=32, train_batch_size=64, reference=56.0,
                      label='ResNet-18, CIFAR stem, 32 px, batch 64'),
    'r50_224': dict(resnet_depth=50, image_size=224, train_batch_size=16, reference=5.6,
                    label='ResNet-50, 224 px, batch 16'),
}


def model_config(name: str, precision: str = 'float32', jit: bool = False) -> Config:
  spec = MODELS[name]
  return Config(mode='pretrain', resnet_depth=spec['resnet_depth'], width_multiplier=1.0,
                image_size=spec['image_size'], train_batch_size=spec['train_batch_size'], optimizer='lars',
                learning_rate=0.3, weight_decay=1e-6, temperature=0.1, precision=precision, jit_compile=jit,
                num_classes=10)


def forward_flops(config: Config) -> int:
  """FLOPs (2 x multiply-adds) of one image through encoder and heads, counted by TF's profiler on the graph."""
  from tensorflow.python.profiler import model_analyzer, option_builder
  model = build_model(config.replace(precision='float32'), pretraining=True, num_classes=10)
  size = config.image_size
  graph = tf.function(lambda x: model(x, training=False)['proj_head_output']).get_concrete_function(
      tf.TensorSpec([1, size, size, 3], tf.float32)).graph
  options = option_builder.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  return model_analyzer.profile(graph, options=options).total_float_ops


def images_per_second(config: Config, steps: int) -> float:
  """Images (each two views) per second of the training update on a fixed batch."""
  task = pretrain.make_task(config, tf.distribute.get_strategy(), None, num_classes=10, num_examples=50000)
  task.optimizer.build(task.model.trainable_variables)
  update = make_replica_update(task, 1, config.jit_compile)
  b, size = config.train_batch_size, config.image_size
  batch = {'image': tf.random.uniform([b, size, size, 6]), 'label': tf.random.uniform([b], 0, 10, tf.int64)}
  step = tf.function(lambda: update(batch)['loss'])
  seconds = common.timed(lambda: step().numpy(), warmup=1, repeats=steps)
  return b / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='r18_cifar,r50_224')
  parser.add_argument('--steps', type=int, default=0, help='timed steps per setting (default: 8 for R18, 3 for R50)')
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'bench', 'results', 'step_speed.json'))
  options = parser.parse_args()
  peak32 = common.matmul_peak('float32')
  peak16 = common.matmul_peak('bfloat16')
  rows, records = [], []
  for name in options.models.split(','):
    spec = MODELS[name]
    train_flops = 2 * 3 * forward_flops(model_config(name))  # two views; backward ~ 2x forward
    steps = options.steps or (8 if spec['image_size'] <= 32 else 3)
    baseline = None
    for precision in ('float32', 'mixed_bfloat16'):
      for jit in (False, True):
        speed = images_per_second(model_config(name, precision, jit), steps)
        baseline = baseline or speed
        achieved = speed * train_flops
        record = dict(model=name, precision=precision, jit_compile=jit, images_per_second=round(speed, 2),
                      vs_float32=round(speed / baseline, 2), vs_reference=round(speed / spec['reference'], 2),
                      train_gflop_per_image=round(train_flops / 1e9, 2), achieved_gflops=round(achieved / 1e9, 1),
                      of_float32_matmul_peak=round(achieved / peak32, 2))
        records.append(record)
        rows.append([spec['label'], precision, 'on' if jit else 'off', f'{speed:.1f}', f'{speed / baseline:.2f}x',
                     f'{speed / spec["reference"]:.2f}x ({spec["reference"]})', f'{train_flops / 1e9:.1f}',
                     f'{achieved / 1e9:.0f}', f'{achieved / peak32:.2f}'])
        print(rows[-1], flush=True)
  print(f'\nMachine: {common.machine()}. Matmul peak (2048^2, TF): float32 {peak32 / 1e9:.0f} GFLOP/s, '
        f'bfloat16 {peak16 / 1e9:.0f} GFLOP/s.\n')
  text = common.table(['model', 'precision', 'XLA', 'images/s', 'vs float32 (same process)',
                       'vs reference TF2 code (img/s)', 'train GFLOP/image', 'GFLOP/s', 'of fp32 matmul peak'], rows)
  print(text)
  peaks = {'float32': round(peak32 / 1e9), 'bfloat16': round(peak16 / 1e9)}
  files.write_json(options.out, dict(machine=common.machine(), matmul_peak_gflops=peaks, results=records, table=text))


if __name__ == '__main__':
  main()
