"""What the memory of negatives (--memory_size) costs per pretraining step: images/s of the real update with and
without it, in one process, the settings interleaved and the best of the rounds kept.

  python bench/memory_cost.py              # about 3 minutes on 2 cores

Settings: the CIFAR-10 chain's network (ResNet-18 at width 0.25, CIFAR stem, 32 px, batch 128, bfloat16, K = 4096)
and the full-width ResNet-18 of bench/step_speed.py (batch 64, float32, K = 4096). The memory adds one forward pass
of both views through the momentum network, the EMA of its weights and K more logits per view.
"""

import argparse
import os

import common  # noqa: F401  (sets up logging first)

from simclr_tf import Config, files
from step_speed import images_per_second

SETTINGS = {
    'chain_r18_w025': dict(width_multiplier=0.25, train_batch_size=128, precision='mixed_bfloat16',
                           label='ResNet-18 x0.25, 32 px, batch 128, bfloat16'),
    'r18_cifar': dict(width_multiplier=1.0, train_batch_size=64, precision='float32',
                      label='ResNet-18 x1, 32 px, batch 64, float32'),
}


def config(name: str, memory_size: int) -> Config:
  spec = {k: v for k, v in SETTINGS[name].items() if k != 'label'}
  return Config(mode='pretrain', resnet_depth=18, image_size=32, optimizer='lars', learning_rate=1.0,
                weight_decay=1e-4, temperature=0.5, num_classes=10, memory_size=memory_size, **spec)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--settings', default='chain_r18_w025,r18_cifar')
  parser.add_argument('--steps', type=int, default=6)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'bench', 'results', 'memory_cost.json'))
  options = parser.parse_args()
  rows, records = [], []
  for name in options.settings.split(','):
    best = {0: 0.0, 4096: 0.0}
    for _ in range(options.rounds):
      for memory_size in best:
        best[memory_size] = max(best[memory_size], images_per_second(config(name, memory_size), options.steps))
    ratio = best[0] / best[4096]
    records.append(dict(setting=name, images_per_second_without=round(best[0], 1),
                        images_per_second_with_memory_4096=round(best[4096], 1),
                        step_time_with_memory_vs_without=round(ratio, 3)))
    rows.append([SETTINGS[name]['label'], f'{best[0]:.1f}', f'{best[4096]:.1f}', f'{ratio:.2f}x'])
    print(rows[-1], flush=True)
  text = common.table(['network', 'images/s without memory', 'images/s with K = 4096',
                       'step time with memory vs without'], rows)
  print(text)
  files.write_json(options.out, dict(machine=common.machine(), results=records, table=text))


if __name__ == '__main__':
  main()
