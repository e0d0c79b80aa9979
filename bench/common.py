"""Shared by the benchmarks: process set-up, the machine's description, timing and a measured matmul peak."""

import os
import platform
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def machine() -> str:
  """'<cpu model>, <n> cores, TF <version>' of this machine."""
  import tensorflow as tf
  model = platform.processor() or 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  flags = ''
  try:
    with open('/proc/cpuinfo') as f:
      cpu_flags = next(l for l in f if l.startswith('flags')).split()
    flags = ', AVX-512 BF16' if 'avx512_bf16' in cpu_flags else ''
  except (OSError, StopIteration):
    pass
  return f'{model}, {os.cpu_count()} cores{flags}, TF {tf.__version__}'


def timed(fn, warmup: int, repeats: int, clock=time.perf_counter) -> float:
  """Seconds per call of fn() after `warmup` calls (fn must block until its work is done). With
  clock=time.process_time: CPU seconds of all this process's threads, a per-core cost that other processes on the
  machine do not inflate."""
  for _ in range(warmup):
    fn()
  start = clock()
  for _ in range(repeats):
    fn()
  return (clock() - start) / repeats


def matmul_peak(dtype: str = 'float32', n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of an n x n matmul in TF on this machine (the best of `repeats` timed runs)."""
  import tensorflow as tf
  a = tf.random.uniform([n, n], dtype=tf.float32)
  b = tf.random.uniform([n, n], dtype=tf.float32)
  a, b = tf.cast(a, dtype), tf.cast(b, dtype)
  step = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
  step()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    step().numpy()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


def table(header, rows) -> str:
  """A markdown table."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(' --- ' for _ in header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)
