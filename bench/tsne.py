"""What --mode=embed's t-SNE picture costs: simclr_tf.modes.embed.tsne_points as it runs (one OpenMP thread, 500
iterations) against scikit-learn's defaults (every core, 1,000 iterations), in one process after TensorFlow has made
its thread pools, as in embed, on clustered vectors of the size an embedding has. Both are timed interleaved, the
best round of each; the ratio is the figure (on a busy machine the absolute seconds are not).

  python bench/tsne.py      # 500 and 2,000 points of 64 dimensions; a few minutes on two cores
"""

import argparse
import os

import common
import numpy as np
import tensorflow as tf

from simclr_tf.modes import embed
from simclr_tf.runtime import files


def clustered(n: int, dims: int = 64, classes: int = 10, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 1, (classes, dims))
  return (centres[rng.integers(0, classes, n)] + rng.normal(0, 0.7, (n, dims))).astype(np.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--points', type=int, nargs='+', default=[500, 2000])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--out', default=os.path.join(common.ROOT, 'bench', 'results', 'tsne.json'))
  options = parser.parse_args()
  tf.matmul(tf.ones([64, 64]), tf.ones([64, 64])).numpy()  # TensorFlow's thread pools exist, as in embed
  settings = {'embed (1 thread, 500 iterations)': dict(threads=1, iterations=embed.TSNE_ITERATIONS),
              "scikit-learn's defaults (all cores, 1,000 iterations)": dict(threads=None, iterations=1000)}
  rows, record = [], {'machine': common.machine(), 'results': []}
  for n in options.points:
    vectors = clustered(n)
    seconds = {name: float('inf') for name in settings}
    for _ in range(options.rounds):
      for name, kwargs in settings.items():
        seconds[name] = min(seconds[name], common.timed(lambda: embed.tsne_points(vectors, **kwargs), 0, 1))
    base = seconds["scikit-learn's defaults (all cores, 1,000 iterations)"]
    for name, value in seconds.items():
      rows.append([n, name, f'{value:.1f}', f'{base / value:.2f}x'])
      record['results'].append(dict(points=n, setting=name, seconds=round(value, 2), speedup=round(base / value, 2)))
  record['table'] = common.table(['points', 'setting', 'seconds', 'speed-up'], rows)
  print(record['machine'])
  print(record['table'])
  files.write_json(options.out, record)


if __name__ == '__main__':
  main()
