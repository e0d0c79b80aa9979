"""Runs every benchmark, each in its own process, and writes bench/results/summary.md (the README's table).

  python bench/run_all.py          # under 10 minutes on 2 CPU cores; run it on an otherwise idle machine
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')
SCRIPTS = ('step_speed.py', 'input_pipeline.py', 'replicas.py', 'steps_per_loop.py', 'memory_cost.py', 'tsne.py')


def main():
  start = time.time()
  for script in SCRIPTS:
    print(f'\n$ python bench/{script}', flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, script)], check=True)
  results = {name: json.load(open(os.path.join(RESULTS, name + '.json')))
             for name in ('step_speed', 'input_pipeline', 'replicas', 'steps_per_loop', 'memory_cost', 'tsne')}
  step = results['step_speed']
  lines = [f'Machine: {step["machine"]}; TF\'s matmul peak measured in the same process: float32 '
           f'{step["matmul_peak_gflops"]["float32"]} GFLOP/s, bfloat16 {step["matmul_peak_gflops"]["bfloat16"]} '
           f'GFLOP/s. All benchmarks together: {(time.time() - start) / 60:.1f} minutes.', '',
           '**Pretraining step** (`bench/step_speed.py`: the real update, fixed input)', '', step['table'], '',
           '**Input pipeline** (`bench/input_pipeline.py`: decode + two augmented views, host CPU-seconds per image)', '',
           results['input_pipeline']['table'], '',
           '**Replicas** (`bench/replicas.py`: same global batch)', '', results['replicas']['table'], '',
           '**Steps per call** (`bench/steps_per_loop.py`: the training loop of simclr_tf.training.fit)', '',
           results['steps_per_loop']['table'], '',
           '**Memory of negatives** (`bench/memory_cost.py`: the update with and without --memory_size=4096)', '',
           results['memory_cost']['table'], '',
           '**t-SNE picture** (`bench/tsne.py`: --mode=embed\'s, against scikit-learn\'s defaults)', '',
           results['tsne']['table'], '']
  with open(os.path.join(RESULTS, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
