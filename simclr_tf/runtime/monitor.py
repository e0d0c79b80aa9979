"""What a long run shows: a progress line (step, loss, images/s, ETA), TensorBoard scalars, a metrics log
(model_dir/metrics.jsonl) and PNG training curves drawn from that log. model_dir may be any filesystem TF knows:
the log is rewritten whole (atomically) rather than appended to, since object stores cannot append."""

import io
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from simclr_tf.runtime import files

log = logging.getLogger('simclr_tf')


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class Monitor:
  """Reports training progress; only the chief writes files."""

  def __init__(self, model_dir: str, total_steps: int, global_batch: int, start_step: int, write: bool = True,
               prefix: str = 'train'):
    self.model_dir = model_dir
    self.total_steps = total_steps
    self.global_batch = global_batch
    self.prefix = prefix
    self.write = write and bool(model_dir)
    self.writer = tf.summary.create_file_writer(os.path.join(model_dir, prefix)) if self.write else None
    self.metrics_path = os.path.join(model_dir, 'metrics.jsonl')
    self.records = read_metrics(model_dir, repair=True) if self.write else []
    self._last_time = time.time()
    self._last_step = start_step
    self._first_step = start_step

  def report(self, step: int, metrics: Dict[str, float]) -> None:
    now = time.time()
    steps = step - self._last_step
    rate = steps * self.global_batch / max(now - self._last_time, 1e-9)
    eta = (self.total_steps - step) * self.global_batch / rate if rate > 0 else float('inf')
    self._last_time, self._last_step = now, step
    shown = '  '.join(f'{k} {v:.4g}' for k, v in metrics.items())
    log.info('step %d/%d  %s  |  %.1f img/s  ETA %s', step, self.total_steps, shown, rate, format_duration(eta))
    if not self.write:
      return
    with self.writer.as_default(step=step):
      for k, v in metrics.items():
        tf.summary.scalar(k, v)
      tf.summary.scalar('images_per_second', rate)
    self.writer.flush()
    self.records.append(dict(step=step, mode=self.prefix, images_per_second=rate, **metrics))
    write_metrics(self.metrics_path, self.records)


  def histograms(self, step: int, variables) -> None:
    """TensorBoard histograms of the values of `variables` (the trained weights, at a checkpoint's step), each
    under its path in the model."""
    if not self.write:
      return
    with self.writer.as_default(step=step):
      for v in variables:
        tf.summary.histogram(f'weights/{getattr(v, "path", v.name)}', v)
    self.writer.flush()


def read_metrics(model_dir: str, repair: bool = False):
  """The records of model_dir/metrics.jsonl. A line that does not parse (a copy cut short, a disk that filled up,
  an earlier version killed while appending) is dropped with one warning naming the file; with `repair` (the
  run that writes the file) the file is rewritten without it, so that every later reader finds it whole."""
  path = os.path.join(model_dir, 'metrics.jsonl')
  if not tf.io.gfile.exists(path):
    return []
  records, dropped = [], []
  for number, line in enumerate(files.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict):
      records.append(record)
    else:
      dropped.append(number)
  if dropped:
    what = (f'line {dropped[0]} does not parse (cut short?)' if len(dropped) == 1 else
            f'{len(dropped)} lines ({", ".join(map(str, dropped[:5]))}{", ..." if len(dropped) > 5 else ""}) do '
            f'not parse')
    log.warning('%s: %s; %s', path, what, 'rewrote the file without it' if repair else 'read without it')
    if repair:
      write_metrics(path, records)
  return records


def write_metrics(path: str, records) -> None:
  """metrics.jsonl: one JSON record per line, the whole file replaced atomically."""
  files.write_atomically(path, ''.join(json.dumps(r) + '\n' for r in records))


def unit_of(metric: str) -> str:
  """The y-axis label of a logged metric: what it counts, in which unit."""
  if metric == 'images_per_second':
    return 'images / s'
  if metric == 'skipped_images':
    return 'unreadable images so far'
  if metric == 'learning_rate':
    return 'learning rate'
  if metric == 'memory_fill':
    return 'fraction of the memory filled'
  if any(word in metric for word in ('acc', 'top1', 'top5', 'agreement')):
    return 'accuracy (fraction)'
  if 'loss' in metric and 'scale' in metric:
    return 'loss scale'
  if 'loss' in metric or 'entropy' in metric:
    return 'nats'
  return metric


# What a panel's title says of each metric, and the group it is drawn in: losses, accuracies, then the rest, speed
# and the learning rate last. Metrics not named here keep their names, among the rest.
TITLES = {
    'loss': 'total loss (minimised, weight decay included)', 'contrast_loss': 'contrastive loss (NT-Xent)',
    'sup_loss': 'supervised cross-entropy', 'distill_loss': 'distillation loss (vs the teacher)',
    'loss_scale': 'loss scale (float16)',
    'contrast_acc': 'contrastive accuracy (positive ranked first)', 'sup_acc': 'supervised head, training top-1',
    'teacher_agreement': 'agreement with the teacher', 'knn_top1': 'kNN top-1 (eval split)',
    'knn_top5': 'kNN top-5 (eval split)', 'probe_top1': 'linear probe top-1 (eval split)',
    'contrast_entropy': 'entropy of the contrastive softmax', 'memory_fill': 'memory of negatives filled',
    'skipped_images': 'unreadable images skipped', 'images_per_second': 'speed', 'learning_rate': 'learning rate'}
GROUPS = (('losses', lambda m: 'loss' in m and 'scale' not in m),
          ('accuracies', lambda m: unit_of(m) == 'accuracy (fraction)'),
          ('other', lambda m: m not in ('images_per_second', 'learning_rate')),
          ('speed', lambda m: m == 'images_per_second'), ('learning rate', lambda m: m == 'learning_rate'))


def panel_order(names) -> List[str]:
  """`names` in the order of GROUPS (losses, accuracies, the rest, speed, learning rate), alphabetical within a
  group but for the total loss, which leads."""
  ordered = []
  for _, belongs in GROUPS:
    group = sorted((n for n in names if n not in ordered and belongs(n)), key=lambda n: (n != 'loss', n))
    ordered += group
  return ordered


def chance_levels(model_dir: str, records) -> Dict[str, float]:
  """{metric: its chance level} where one applies: a class prediction (1 / the run's number of classes, from its
  record) and the contrastive accuracy (1 / the 2B - 1 candidates of each view). {} when the run's record cannot be
  read."""
  from simclr_tf import record
  try:
    recorded = record.read(os.path.join(model_dir, 'config.json'))
  except Exception:  # noqa: BLE001  (a picture is drawn whatever the record says)
    recorded = None
  if not recorded:
    return {}
  levels = {}
  classes = len(recorded.get(record.CLASS_NAMES) or []) or recorded.get('num_classes') or 0
  if classes > 1:
    levels.update({m: 1 / classes for m in ('sup_acc', 'knn_top1', 'probe_top1')})
    if classes > 5:
      levels['knn_top5'] = 5 / classes
  batch = recorded.get('train_batch_size', 0)
  if batch > 1 and not recorded.get('memory_size'):
    levels['contrast_acc'] = 1 / (2 * batch - 1)
  return {m: v for m, v in levels.items() if any(m in r for r in records)}


def curve_panels(records) -> Tuple[List[str], Dict[str, float]]:
  """(the metrics that get a panel, {metric: value} of those that never moved and get none) of metric records."""
  names = sorted({k for r in records for k in r if k not in ('step', 'mode') and isinstance(r[k], (int, float))
                  and not isinstance(r[k], bool)})
  values = {name: [r[name] for r in records if name in r] for name in names}
  constant = {name: values[name][0] for name in names if len(values[name]) > 1 and len(set(values[name])) == 1}
  moving = [name for name in names if name not in constant]
  return (moving, constant) if moving else (names, {})


def _space_panels(fig, rows: int, cols: int, bottom_note: float = 0.0) -> None:
  """Margins and gaps in inches (room for the tick labels, the y label, the title above and the x label below each
  panel), set without drawing the figure first as tight_layout does (which costs as much as drawing it)."""
  width, height = fig.get_size_inches()
  left, right, top, bottom, gap_x, gap_y = 0.75, 0.15, 0.35, 0.55 + bottom_note, 0.8, 0.85
  panel_w = (width - left - right - (cols - 1) * gap_x) / cols
  panel_h = (height - top - bottom - (rows - 1) * gap_y) / rows
  fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                      wspace=gap_x / panel_w, hspace=gap_y / panel_h)


def plot_curves(model_dir: str, out_path: Optional[str] = None) -> Optional[str]:
  """Draws every logged metric against the step into model_dir/curves.png: one panel per metric, grouped (losses,
  accuracies, the rest, speed, learning rate), titled in words, its unit on the y axis, chance drawn as a dashed
  line where it applies (chance_levels). A metric that never moved (e.g. kNN top-5 with 5 classes, always 1) gets
  no panel: it is named with its value below the panels."""
  records = read_metrics(model_dir)
  if not records:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  # The last record of each step wins (a resumed run repeats no step, but be safe).
  by_step = {}
  for r in records:
    by_step[(r.get('mode', 'train'), r['step'])] = r
  records = [by_step[k] for k in sorted(by_step)]
  names, constant = curve_panels(records)
  names = panel_order(names)
  chance = chance_levels(model_dir, records)
  cols = min(3, len(names))
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows + (0.3 if constant else 0)), squeeze=False)
  for ax, name in zip(axes.flat, names):
    for mode in sorted({r.get('mode', 'train') for r in records}):
      pts = [(r['step'], r[name]) for r in records if r.get('mode', 'train') == mode and name in r]
      if pts:
        ax.plot(*zip(*pts), label=mode, marker='o' if len(pts) < 12 else None)
    if name in chance:
      ax.axhline(chance[name], color='grey', linestyle='--', linewidth=1, label='chance')
      ax.legend(fontsize=7, loc='best')
    ax.set_title(TITLES.get(name, name.replace('_', ' ')), fontsize=10)
    ax.set_xlabel('training step')
    ax.set_ylabel(unit_of(name))
    ax.grid(alpha=0.3)
  if constant:
    fig.text(0.01, 0.005, 'constant throughout: ' + ', '.join(f'{n} = {v:g}' for n, v in constant.items()),
             fontsize=9)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  _space_panels(fig, rows, cols, bottom_note=0.3 if constant else 0.0)
  out_path = out_path or os.path.join(model_dir, 'curves.png')
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=80)
  plt.close(fig)
  return files.write_atomically(out_path, png.getvalue())
