"""Are bigger models more label-efficient on CIFAR-10 (the paper's title claim, its Figure 1 and Table 3 at our
scale)? ResNet-18 (CIFAR stem) at widths 0.125, 0.25 and 0.5, each pretrained with the chain's recipe; from each
width's 50-epoch checkpoint (100 where the clock allowed): fine-tuning at 1% and 10%, linear evaluation, kNN and
the tuned supervised baseline; then the widest network's fine-tuned models distilled into narrower students.

  LEDGER=experiments/results/cifar10_width_study/ledger
  # the long pretraining of one width (hours; resumable across machines from the ledger):
  python -m experiments.cifar10_width_study --ledger=$LEDGER --part=pretrain --width=0.5 --num_threads=1
  # then, from its 50-epoch checkpoint: kNN, fine-tuning at 1% and 10%, linear evaluation, the tuned baseline
  python -m experiments.cifar10_width_study --ledger=$LEDGER --part=evaluate --width=0.5 --epochs=50

Each width is a chain of its own (experiments/stages.py's Chain) under OUT/w<width> and LEDGER/w<width>,
with the stage names of the pretraining curve (experiments/cifar10_pretraining_curve.py): pretrain, knn_e50,
finetune_e50_10pct, ... Width 0.25 is the curve's network: its stages are taken from the curve's ledger where the
settings are the same. The pretraining recipe is the curve's (batch 128, LARS 1.0 x B/256, temperature 0.5, colour
strength 0.5, no blur) with its 100-epoch cosine schedule, so that the 50-epoch checkpoints of every width are taken
at the same point of the same schedule.

Precision is the machine's choice (--precision=auto): mixed_bfloat16 (the curve's) on CPUs with AVX512_BF16, float32
elsewhere, where bfloat16 is emulated (measured on a 2-core AMD EPYC with AVX2 only, ResNet-18 at width 0.25, batch
128: 10.2 s per step in bfloat16 against 1.3 s in float32, 8x). Both train the same network with the same recipe and
their checkpoints are interchangeable; every stage records the precision it ran with (run_flags), and the long
pretrainings each session's (LEDGER/w<width>/pretrain/sessions.jsonl).
"""

import argparse
import json
import os
import sys
import time

if not __package__:  # run as a file: `experiments` is not importable from here
  sys.exit('error: run it from the repository root as a module: python -m experiments.cifar10_width_study ...')

from experiments import cifar10_pretraining_curve as curve_lib  # noqa: E402  (the long pretraining, its stages)
from experiments import stages as chain_lib  # noqa: E402  (the chain's stages, ledger and grid search)

ROOT = chain_lib.ROOT

PRESETS = {
    # Relative to width 0.25 (7.3 hours for 100 epochs here), width 0.125 trains 2.2x faster, width 0.5 2.6x slower.
    # `stages`: the curve's preset whose grids, lengths and seeds the evaluation part uses (at every width).
    'full': dict(widths=(0.125, 0.25, 0.5), pretrain_epochs=100, kept_epochs=(50, 100), pretrain_batch=128,
                 warmup_epochs=5, stages='full'),
    'fast': dict(widths=(0.0625, 0.125), pretrain_epochs=2, kept_epochs=(1, 2), pretrain_batch=32, warmup_epochs=1,
                 per_class=(40, 10), stages='fast'),
}
# pretrain: the long pretraining of --width; evaluate: from its checkpoint of --epochs, the curve's evaluations
# (kNN, fine-tuning at 1% and 10% tuned on the validation split, linear evaluation) and its tuned supervised
# baseline at that width, then OUT/w<width>/results_e<epochs>.json.
PARTS = ('pretrain', 'evaluate')


def machine_precision() -> str:
  """mixed_bfloat16 where the CPU computes bfloat16 natively (AVX512_BF16 or AMX), float32 elsewhere."""
  try:
    flags = open('/proc/cpuinfo').read()
  except OSError:
    return 'float32'
  return 'mixed_bfloat16' if ('avx512_bf16' in flags or 'amx_bf16' in flags) else 'float32'


def cpu_name() -> str:
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown'


def width_tag(width):
  return f'w{width:g}'


def pretraining(chain, p, data, width):
  """The long pretraining of `width`, as the curve's (LongPretraining), keeping the checkpoints of p's
  kept_epochs."""
  end_of = lambda epochs: epochs * curve_lib.count_images(data) // p['pretrain_batch']
  common = common_args(p, width)
  args = common + [
      f'--data_dir={data}', '--mode=pretrain', f'--train_batch_size={p["pretrain_batch"]}',
      f'--train_epochs={p["pretrain_epochs"]}', '--optimizer=lars', '--learning_rate=1.0',
      '--learning_rate_scaling=linear', '--weight_decay=1e-4', '--temperature=0.5', '--color_jitter_strength=0.5',
      '--use_blur=false', f'--warmup_epochs={p["warmup_epochs"]}', '--checkpoint_epochs=1',
      '--keep_checkpoint_max=1000']
  return curve_lib.LongPretraining(chain, args, {e: end_of(e) for e in p['kept_epochs']},
                                   end_of(p['pretrain_epochs']))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=sorted(PRESETS), default='full')
  parser.add_argument('--data_dir', default=os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10'))
  parser.add_argument('--out', default=None, help='default: runs/cifar10_width_study_<preset>')
  parser.add_argument('--ledger', default=None, help='as in experiments/cifar10_semisup.py')
  parser.add_argument('--part', default='pretrain', choices=PARTS)
  parser.add_argument('--width', type=float, required=True, help='the width multiplier to pretrain or evaluate')
  parser.add_argument('--epochs', type=int, default=None,
                      help='--part=evaluate: the kept checkpoint to evaluate from (default: the first kept epoch)')
  parser.add_argument('--num_threads', type=int, default=0, help=chain_lib.NUM_THREADS_HELP)
  parser.add_argument('--precision', default='auto', choices=('auto', 'float32', 'mixed_bfloat16'),
                      help='run.py --precision of every stage (auto: machine_precision())')
  options = parser.parse_args()
  p = PRESETS[options.preset]
  if options.width not in p['widths']:
    sys.exit(f'error: --width={options.width:g} is not one of the study\'s widths {p["widths"]}.')
  out = os.path.abspath(options.out or os.path.join(ROOT, 'runs', f'cifar10_width_study_{options.preset}'))
  if not os.path.isdir(os.path.join(options.data_dir, 'train')):
    sys.exit(f'error: --data_dir={options.data_dir} has no train/ split (expected ROOT/train/<class>/*.jpg).')
  os.makedirs(out, exist_ok=True)
  data = chain_lib.link_subset(options.data_dir, out, *p['per_class']) if 'per_class' in p else options.data_dir
  tag = width_tag(options.width)
  ledger = options.ledger and os.path.join(os.path.abspath(options.ledger), tag)
  precision = machine_precision() if options.precision == 'auto' else options.precision
  chain = chain_lib.Chain(os.path.join(out, tag), chain_lib.git_commit(), ledger,
                          run_flags=chain_lib.threads(options) + [f'--precision={precision}'])
  os.makedirs(chain.out, exist_ok=True)
  long_run = pretraining(chain, p, data, options.width)
  if options.part == 'pretrain':
    with session_logged(long_run, chain):
      long_run.run()
    return
  epochs = options.epochs or p['kept_epochs'][0]
  if epochs not in p['kept_epochs']:
    sys.exit(f'error: --epochs={epochs} is not a kept epoch of the pretraining {p["kept_epochs"]}.')
  long_run.bring_back(latest=False)
  if not os.path.isdir(long_run.kept(epochs)):
    sys.exit(f'error: the width-{options.width:g} pretraining has not reached epoch {epochs} yet (no '
             f'{long_run.kept(epochs)}, nor in the ledger); run --part=pretrain --width={options.width:g} first.')
  report = evaluation(chain, p, data, options.width, long_run, epochs).all(('pretrained', 'baseline'))
  if report is not None:
    path = os.path.join(chain.out, f'results_e{epochs}.json')
    with open(path + '.partial', 'w') as f:
      json.dump(dict(report, width=options.width, epochs=epochs, commit=chain.commit,
                     run_flags=chain.run_flags), f, indent=1, sort_keys=True)
    os.replace(path + '.partial', path)
    print(f'\nwrote {path}', flush=True)


def evaluation(chain, p, data, width, long_run, epochs):
  """The curve's stages (experiments/cifar10_pretraining_curve.py's Stages) at `width`, from the pretraining's
  checkpoint of `epochs`: its grids are run at this width, on the validation split, as at width 0.25."""
  preset = dict(curve_lib.PRESETS[p['stages']], width=width)
  return curve_lib.Stages(chain, preset, data, common_args(preset, width), {epochs: long_run.kept(epochs)},
                          long_run)


def common_args(preset, width):
  """The curve's flags of every stage at `width`, without --precision: a run flag here (machine_precision)."""
  args = curve_lib.common_args(dict(preset, width=width, precision=''))
  return [a for a in args if not a.startswith('--precision=')]


class session_logged:
  """Appends one line per session of a long pretraining to LEDGER/.../pretrain/sessions.jsonl: the steps it
  trained, how (run flags: the precision), on which CPU, from which commit, and its wall-clock time."""

  def __init__(self, long_run, chain):
    self.long_run, self.chain = long_run, chain

  def step(self):
    steps = chain_lib.listed_checkpoints(self.long_run.model_dir)
    return steps[-1] if steps else 0

  def __enter__(self):
    self.start = time.time()
    return self

  def __exit__(self, *exc):
    if self.long_run.ledger_dir and self.step():
      first = self.first_step()
      line = dict(first_step=first, last_step=self.step(), run_flags=self.chain.run_flags, cpu=cpu_name(),
                  commit=self.chain.commit, wall_seconds=round(time.time() - self.start, 1),
                  ended=time.strftime('%Y-%m-%d %H:%M:%S'))
      if line['last_step'] > first:
        os.makedirs(self.long_run.ledger_dir, exist_ok=True)
        with open(os.path.join(self.long_run.ledger_dir, 'sessions.jsonl'), 'a') as f:
          f.write(json.dumps(line) + '\n')
    return False

  def first_step(self):
    """Where this session started: the last step an earlier session logged (0 for the first)."""
    path = os.path.join(self.long_run.ledger_dir, 'sessions.jsonl')
    if not os.path.exists(path):
      return 0
    lines = [json.loads(l) for l in open(path) if l.strip()]
    return lines[-1]['last_step'] if lines else 0


if __name__ == '__main__':
  main()
