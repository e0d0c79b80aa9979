"""Does SimCLRv2 pretraining pay off with enough of it? One long CIFAR-10 pretraining, and from the checkpoints it
keeps along the way (12, 25, 50, 100 epochs): fine-tuning on 1% and 10% of the labels, linear evaluation trained
until it converges, kNN; against the tuned supervised baseline; then distillation of the best 10% model into
itself and into a network of half the width, and seeds at the longest pretraining (docs/results.md says what
each stage does and why).

  LEDGER=experiments/results/cifar10_pretraining_curve/ledger
  python -m experiments.cifar10_pretraining_curve --ledger=$LEDGER                  # everything, then the report
  # or its parts two at a time, one thread each on two cores (students once the 10% fine-tuning is done):
  python -m experiments.cifar10_pretraining_curve --ledger=$LEDGER --part=pretrained --num_threads=1 &
  python -m experiments.cifar10_pretraining_curve --ledger=$LEDGER --part=baseline --num_threads=1 &&
  python -m experiments.cifar10_pretraining_curve --ledger=$LEDGER --part=students --num_threads=1
  python -m experiments.cifar10_pretraining_curve --preset=fast     # every stage on a few images (15 minutes)

The network and the pretraining recipe are those of the 12-epoch chain (experiments/cifar10_semisup.py: ResNet-18
at width 0.25, CIFAR stem, batch 128, LARS at 1.0 x B/256, temperature 0.5, colour strength 0.5, no blur,
bfloat16), without the memory of negatives, for 100 epochs with one cosine schedule; the warmup is 5% of it
(5 epochs), as in the paper. Stages are run.py commands under --out, skipped when done (their record in --out or
in the ledger, or, for the baseline, in the chain's ledger), as in the chain.

The pretraining is longer than a machine's life here: while it runs, the driver copies each kept epoch's
checkpoint into the ledger (KEPT/epoch_E) as it appears, and the latest checkpoint into the ledger's `latest/`
(the previous one replaced), so a new machine with the ledger resumes it from there rather than starting again.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

if not __package__:  # run as a file: `experiments` is not importable from here
  sys.exit('error: run it from the repository root as a module: python -m experiments.cifar10_pretraining_curve ...')

from experiments import stages as chain_lib  # noqa: E402  (the chain's stages, ledger and grid search)

ROOT = chain_lib.ROOT

PRESETS = {
    # 100 epochs at batch 128 is 39,062 steps, about 5.5 hours of a 2-core CPU in bfloat16. Fine-tuning, the
    # supervised baseline and their grids are the 12-epoch chain's (experiments/cifar10_semisup.py), whose
    # baseline runs are taken from its ledger where the settings are the same; the baseline's epochs go on past
    # the chain's longest (x3 each time) while validation accuracy improves by more than half a point and the run
    # fits in the clock of the longest pretraining plus its fine-tuning: each run is three times as long as the one
    # before, and a smaller gain is within the noise of a 5,000-image validation split (one standard error of its
    # top-1 is 0.6-0.7 points), a tie that goes to the shorter run. Linear evaluation: the learning rate and crop on
    # the grid, then longer while validation improves. The small student (half the width) is trained from scratch
    # by distillation alone.
    'full': dict(width=0.25, pretrain_epochs=100, kept_epochs=(12, 25, 50, 100), pretrain_batch=128,
                 warmup_epochs=5, precision='mixed_bfloat16',
                 batch=64, lrs=(0.05, 0.2, 0.8), crop_min_areas=(0.08, 0.35, 0.7),
                 baseline_epochs={'1pct': (100, 300, 900, 2700), '10pct': (20, 60, 180, 540)},
                 baseline_min_gain=0.005,
                 finetune_epochs={'1pct': (30, 100, 300), '10pct': (10, 30, 90)},
                 linear_lrs=(0.1, 0.4, 1.6), linear_epochs=(10, 30, 90), linear_batch=256,
                 distill_epochs=20, student_width=0.125, seeds=(0, 1, 2), knn_k=200, val_fraction=0.1,
                 also_from=os.path.join('results', 'cifar10_semisup_full', 'ledger')),
    'fast': dict(width=0.125, pretrain_epochs=4, kept_epochs=(1, 2, 4), pretrain_batch=32, warmup_epochs=1,
                 precision='float32', per_class=(40, 10),
                 batch=16, lrs=(0.2,), crop_min_areas=(0.35,), baseline_epochs={'1pct': (1, 2), '10pct': (1, 2)},
                 baseline_min_gain=0.0,
                 finetune_epochs={'1pct': (1,), '10pct': (1,)}, linear_lrs=(0.4,), linear_epochs=(1,),
                 linear_batch=32, distill_epochs=1, student_width=0.0625, seeds=(0, 1), knn_k=5, val_fraction=0.25,
                 also_from=None),
}
FRACTIONS = chain_lib.FRACTIONS
REFERENCE_CROP = 0.08  # the reference's random crop (minimum area) when it trains a linear head
REFERENCE_LINEAR = f'linear_e{{epochs}}_crop{REFERENCE_CROP:g}'  # its final run's stage, .format(epochs=E)
PRETRAIN = 'pretrain'
# What --part runs. Two different parts but `all` may run at once, in two processes with the same --out and
# --ledger.
PARTS = {'all': ('pretrained', 'students', 'baseline'),  # everything left, then the report
         'pretrained': ('pretrained',),  # the pretraining, then kNN, fine-tuning and linear evaluation
         'students': ('students',),  # fine-tuning's other seeds and the distillations: after the 10% fine-tuning
         'baseline': ('baseline',)}  # the supervised baseline (hours)


def count_images(data_dir, split='train'):
  root = os.path.join(data_dir, split)
  return sum(len(os.listdir(os.path.join(root, c))) for c in os.listdir(root))


class LongPretraining:
  """The one long pretraining run: OUT/pretrain is its model_dir, OUT/pretrain_kept/epoch_E (and the ledger's
  pretrain/epoch_E) the checkpoints kept at the chosen epochs, the ledger's pretrain/latest the newest checkpoint
  for a later machine to resume from."""

  POLL_SECONDS = 15

  def __init__(self, chain, args, kept_steps, total_steps):
    self.chain, self.args = chain, args
    self.kept_steps, self.total_steps = kept_steps, total_steps  # {epochs: step}
    self.model_dir = os.path.join(chain.out, PRETRAIN)
    self.kept_dir = os.path.join(chain.out, PRETRAIN + '_kept')
    self.ledger_dir = chain.ledger and os.path.join(chain.ledger, PRETRAIN)

  def kept(self, epochs):
    """The local folder holding the checkpoint kept at `epochs`."""
    return os.path.join(self.kept_dir, f'epoch_{epochs}')

  def check_settings(self):
    """A run recorded with other settings is never discarded (it is hours of work): stop and say so."""
    for recorded in [os.path.join(f, n) for f in filter(None, (self.model_dir, self.ledger_dir))
                     for n in ('stage_args.json', 'stage.json')]:
      if os.path.exists(recorded):
        if chain_lib.settings(json.load(open(recorded))['args']) != chain_lib.settings(self.args):
          sys.exit(f'error: {recorded} records the long pretraining with other settings; move '
                   f'{os.path.dirname(recorded)} away to start another one.')

  def bring_back(self, latest=True):
    """From the ledger on a new machine: the kept checkpoints, and (`latest`) the newest one to resume from."""
    if not self.ledger_dir or not os.path.isdir(self.ledger_dir):
      return
    for epochs in self.kept_steps:
      source = os.path.join(self.ledger_dir, f'epoch_{epochs}')
      if os.path.isdir(source) and not os.path.isdir(self.kept(epochs)):
        shutil.copytree(source, self.kept(epochs))
    latest = latest and os.path.join(self.ledger_dir, 'latest')
    if latest and os.path.isdir(latest) and not chain_lib.listed_checkpoints(self.model_dir):
      step = chain_lib.listed_checkpoints(latest)[-1]
      os.makedirs(self.model_dir, exist_ok=True)
      chain_lib.copy_files(latest, self.model_dir, sorted(os.listdir(latest)))
      print(f'\n{PRETRAIN}: resuming from the ledger\'s checkpoint of step {step}', flush=True)

  def sync(self):
    """Keeps the kept epochs' checkpoints (locally and in the ledger) and the ledger's latest checkpoint."""
    listed = chain_lib.listed_checkpoints(self.model_dir)
    for epochs, step in self.kept_steps.items():
      if step in listed and not os.path.isdir(self.kept(epochs)):
        chain_lib.copy_checkpoint(self.model_dir, step, self.kept(epochs), extra=('config.json',))
        print(f'{PRETRAIN}: kept the checkpoint of epoch {epochs} (step {step})', flush=True)
      if self.ledger_dir and os.path.isdir(self.kept(epochs)):
        target = os.path.join(self.ledger_dir, f'epoch_{epochs}')
        if not os.path.isdir(target):
          shutil.copytree(self.kept(epochs), target + '.partial')
          os.rename(target + '.partial', target)
    if self.ledger_dir and listed:
      chain_lib.keep_newest(self.model_dir, os.path.join(self.ledger_dir, 'latest'))

  def run(self):
    """Runs (or resumes) the pretraining to its end, keeping checkpoints as they appear."""
    self.check_settings()
    if self.chain.finished(PRETRAIN) and all(os.path.isdir(self.kept(e)) or self.ledger_has(e)
                                             for e in self.kept_steps):
      self.bring_back(latest=False)
      return
    self.bring_back()
    os.makedirs(self.model_dir, exist_ok=True)
    with open(os.path.join(self.model_dir, 'stage_args.json'), 'w') as f:
      json.dump({'args': self.args}, f, indent=1)
    cmd = [sys.executable, os.path.join(ROOT, 'run.py'), f'--model_dir={self.model_dir}', *self.args,
           *self.chain.run_flags]  # how this machine runs it (--num_threads), not what it trains
    print('\n$ ' + ' '.join(cmd[1:]), flush=True)
    process = subprocess.Popen(cmd, cwd=ROOT)
    with chain_lib.passing_stops_on(process) as stops:
      while process.poll() is None:
        time.sleep(self.POLL_SECONDS)
        self.sync()
    self.sync()  # the checkpoint a SIGTERM (a session's end) saved last
    if process.returncode:
      chain_lib.exit_if_stopped(PRETRAIN, stops, process.returncode)
      raise subprocess.CalledProcessError(process.returncode, cmd)
    missing = [e for e in self.kept_steps if not os.path.isdir(self.kept(e))]
    if missing:
      sys.exit(f'error: the checkpoints of epochs {missing} were not kept (removed before the driver saw them?); '
               f'see {self.model_dir}.')
    # Its time over every session: the metrics log's intervals (steps x batch / images per second).
    stage = {'seconds': round(chain_lib.training_seconds(self.model_dir), 1), 'commit': self.chain.commit,
             'args': self.args, 'run_flags': self.chain.run_flags}
    for folder in filter(None, (self.model_dir, self.ledger_dir)):
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, 'stage.json'), 'w') as f:
        json.dump(stage, f, indent=1)
    chain_lib.exit_if_told_to_stop(PRETRAIN, stops)

  def ledger_has(self, epochs):
    return bool(self.ledger_dir) and os.path.isdir(os.path.join(self.ledger_dir, f'epoch_{epochs}'))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=sorted(PRESETS), default='full')
  parser.add_argument('--data_dir', default=os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10'))
  parser.add_argument('--out', default=None, help='default: runs/cifar10_pretraining_curve_<preset>')
  parser.add_argument('--until', default='report', choices=('pretrain', 'report'))
  parser.add_argument('--ledger', default=None, help='as in experiments/cifar10_semisup.py')
  parser.add_argument('--part', default='all', choices=sorted(PARTS),
                      help='pretrained: the pretraining, kNN, fine-tuning and linear evaluation; students: the other '
                           'seeds of fine-tuning and the distillations (once the 10%% fine-tuning from the longest '
                           'pretraining, their teacher, is done); baseline: the supervised baseline (hours). Two '
                           'different parts may run at once, in two processes with the same --out and --ledger. '
                           'all (never beside another part): everything left, then the report.')
  parser.add_argument('--num_threads', type=int, default=0, help=chain_lib.NUM_THREADS_HELP)
  options = parser.parse_args()
  p = PRESETS[options.preset]
  out = os.path.abspath(options.out or os.path.join(ROOT, 'runs', f'cifar10_pretraining_curve_{options.preset}'))
  os.makedirs(out, exist_ok=True)
  if not os.path.isdir(os.path.join(options.data_dir, 'train')):
    sys.exit(f'error: --data_dir={options.data_dir} has no train/ split (expected ROOT/train/<class>/*.jpg).')
  data = chain_lib.link_subset(options.data_dir, out, *p['per_class']) if 'per_class' in p else options.data_dir
  also_from = [os.path.join(ROOT, 'experiments', p['also_from'])] if p['also_from'] else []
  chain = chain_lib.Chain(out, chain_lib.git_commit(), options.ledger and os.path.abspath(options.ledger),
                          also_from=also_from, run_flags=chain_lib.threads(options))

  common = common_args(p)
  # Epoch E ends at step E * N // batch (simclr_tf.optim.build.epoch_period), where --checkpoint_epochs=1 saves.
  # The checkpoints kept at 12, 25 and 50 epochs were written before that (epoch = N // batch = 390 steps): ledger
  # pretrain/epoch_12 is ckpt-4680, not 4687; a kept folder is never written again.
  end_of = lambda epochs: epochs * count_images(data) // p['pretrain_batch']
  total = end_of(p['pretrain_epochs'])
  kept_steps = {e: end_of(e) for e in p['kept_epochs']}
  pretraining = LongPretraining(chain, common + [
      f'--data_dir={data}', '--mode=pretrain', f'--train_batch_size={p["pretrain_batch"]}',
      f'--train_epochs={p["pretrain_epochs"]}', '--optimizer=lars', '--learning_rate=1.0',
      '--learning_rate_scaling=linear', '--weight_decay=1e-4', '--temperature=0.5', '--color_jitter_strength=0.5',
      '--use_blur=false', f'--warmup_epochs={p["warmup_epochs"]}', '--checkpoint_epochs=1',
      '--keep_checkpoint_max=1000'], kept_steps, total)
  parts = PARTS[options.part]
  teacher = f'finetune_e{max(p["kept_epochs"])}_10pct'
  if parts == ('students',) and not chain.finished(teacher):
    sys.exit(f'error: --part=students needs {teacher} (the distillations\' teacher) done: run --part=pretrained '
             'until it is (or --part=all).')
  if parts != ('baseline',):
    pretraining.run()
    if options.until == 'pretrain':
      return
  stages = Stages(chain, p, data, common, {e: pretraining.kept(e) for e in p['kept_epochs']}, pretraining)
  report = stages.all(parts)
  if report is not None and options.part == 'all':
    write_report(out, p, report, chain.timings, chain.commit)


def common_args(p):
  """The run.py flags every stage of preset `p` shares: the network, its precision, how it logs."""
  return ['--dataset=image_folder', '--image_size=32', '--resnet_depth=18', f'--width_multiplier={p["width"]}',
          '--seed=0', '--export_at_end=false', '--log_every_steps=50', '--proj_out_dim=128', '--num_proj_layers=3',
          f'--precision={p["precision"]}']


def curve_rows(p, results):
  """{pretraining epochs: {what: test top-1}} for every kept checkpoint (None where a run is missing)."""
  top1 = lambda key: results.get(key, {}).get('top1')
  return {e: {'finetune_1pct': top1(f'finetune_e{e}_1pct'), 'finetune_10pct': top1(f'finetune_e{e}_10pct'),
              'linear': top1(f'linear_e{e}'), 'knn': top1(f'knn_e{e}')} for e in sorted(p['kept_epochs'])}


def seed_summary(p, results, keys):
  """{key: {'top1': [per seed], 'mean', 'std'}} for the runs repeated with every seed."""
  summary = {}
  for key in keys:
    values = [results[with_seed(key, s)]['top1'] for s in p['seeds'] if with_seed(key, s) in results]
    if len(values) == len(p['seeds']):
      mean, std = mean_std(values)
      summary[key] = {'top1': values, 'mean': mean, 'std': std}
  return summary


def goals(p, results, seeds, curve):
  """The issue's goals at the longest pretraining, measured: [{'goal', 'measured', 'met'}], and the first kept
  checkpoint whose 10% fine-tuning reaches the baseline (seed 0, the curve's). A gap between fine-tuning and the
  baseline is the difference of their means over the seeds; under two standard deviations of that difference
  (sqrt(sd_a² + sd_b²)) it is called a tie. The difference at each seed is shown too: a seed draws the labelled
  subset, the same for both."""
  longest, found = max(p['kept_epochs']), []
  for frac, target in (('1pct', 15.0), ('10pct', 5.0)):
    a, b = seeds.get(f'finetune_e{longest}_{frac}'), seeds.get(f'supervised_{frac}')
    if a and b:
      gap, sd = 100 * (a['mean'] - b['mean']), 100 * (a['std'] ** 2 + b['std'] ** 2) ** 0.5
      tie = ' (a tie: under two standard deviations)' if abs(gap) < 2 * sd else ''
      paired = ', '.join(f'{100 * (x - y):+.1f}' for x, y in zip(a['top1'], b['top1']))
      found.append({'goal': f'fine-tuning at {frac[:-3]}% labels ≥ the tuned baseline + {target:g} points',
                    'measured': f'{gap:+.1f} ± {sd:.1f} points (by seed, on the same labelled images: {paired}){tie}',
                    'met': gap >= target})
  for kind, goal, limit in (('self', 'the self-distilled student ≥ its teacher − 1 point', -1.0),
                            ('half', 'the half-width student within 3 points of its teacher', -3.0)):
    r = results.get(f'distill_e{longest}_10pct_{kind}', {})
    if r.get('top1') is not None and r.get('teacher_top1') is not None:
      diff = 100 * (r['top1'] - r['teacher_top1'])
      found.append({'goal': goal, 'measured': f'{diff:+.1f} points on its teacher', 'met': diff >= limit})
  baseline = results.get('supervised_10pct', {}).get('top1')
  reached = [e for e, r in sorted(curve.items()) if baseline is not None and r['finetune_10pct'] is not None and
             r['finetune_10pct'] >= baseline]
  crossing = reached[0] if reached else None
  return found, crossing


def write_report(out, p, report, timings, commit):
  """results.json (the chain's schema: rows with top1, students with teacher_top1; plus the curve and the seeds),
  results.md (the tables) and results.png (test top-1 against pretraining epochs, the baselines as lines)."""
  from simclr_tf.runtime import files
  results, tuning, longest = report['results'], report['tuning'], max(p['kept_epochs'])
  curve = curve_rows(p, results)
  seeds = seed_summary(p, results, [f'finetune_e{longest}_1pct', f'finetune_e{longest}_10pct', 'supervised_1pct',
                                    'supervised_10pct'])
  met, crossing = goals(p, results, seeds, curve)
  summary = dict(settings=p, commit=commit, tuning=tuning, results=results, curve=curve, seeds=seeds, goals=met,
                 crossing_10pct=crossing, seconds=timings, total_hours=round(sum(timings.values()) / 3600, 2))
  files.write_json(os.path.join(out, 'results.json'), summary)
  pct = lambda v: '–' if v is None else f'{100 * v:.1f}'
  spread = lambda key: (f'{100 * seeds[key]["mean"]:.1f} ± {100 * seeds[key]["std"]:.1f}' if key in seeds else
                        pct(results.get(key, {}).get('top1')))
  lines = [f'| pretraining epochs | fine-tune 1% | fine-tune 10% | linear eval | kNN (k={p["knn_k"]}) |',
           '| ---: | ---: | ---: | ---: | ---: |']
  lines += [f'| {e} | {pct(r["finetune_1pct"])} | {pct(r["finetune_10pct"])} | {pct(r["linear"])} | '
            f'{pct(r["knn"])} |' for e, r in curve.items()]
  lines += [f'| supervised only (tuned) | {pct(results["supervised_1pct"]["top1"])} | '
            f'{pct(results["supervised_10pct"]["top1"])} | | |', '']
  reference = results.get(REFERENCE_LINEAR.format(epochs=longest), {}).get('top1')
  if reference is not None and 'linear' in tuning:
    lines += [f'Linear evaluation at {longest} epochs with the reference\'s crop (minimum area {REFERENCE_CROP:g}, '
              f'its learning rate and length tuned at that crop): {pct(reference)}%; with the crop tuned too '
              f'(minimum area {tuning["linear"]["crop_min_area"]:g}): {pct(curve[longest]["linear"])}%.', '']
  lines += [f'At {longest} epochs, {len(p["seeds"])} seeds (mean ± standard deviation):', '',
            '| | 1% labels | 10% labels |', '| --- | ---: | ---: |',
            f'| supervised only (tuned) | {spread("supervised_1pct")} | {spread("supervised_10pct")} |',
            f'| SimCLRv2 fine-tuned | {spread(f"finetune_e{longest}_1pct")} | '
            f'{spread(f"finetune_e{longest}_10pct")} |', '',
            '| distillation of the 10% model | student top-1 | teacher top-1 |', '| --- | ---: | ---: |']
  for kind, label in (('self', 'into itself'), ('half', f'into width {p["student_width"]} (from scratch)')):
    r = results.get(f'distill_e{longest}_10pct_{kind}', {})
    lines.append(f'| {label} | {pct(r.get("top1"))} | {pct(r.get("teacher_top1"))} |')
  lines += ['', f'| goal at {longest} epochs of pretraining | measured | met |', '| --- | --- | --- |']
  lines += [f'| {g["goal"]} | {g["measured"]} | {"yes" if g["met"] else "no"} |' for g in met]
  lines += ['', (f'At 10% labels, fine-tuning (seed 0) first reaches the tuned baseline after {crossing} epochs of '
                 'pretraining.') if crossing else
            (f'At 10% labels, fine-tuning (seed 0) stays under the tuned baseline at every kept checkpoint up to '
             f'{longest} epochs of pretraining.')]
  lines += ['', '| chosen on the validation split | learning rate | crop min. area | epochs | val top-1 |',
            '| --- | ---: | ---: | ---: | ---: |']
  lines += [f'| {key} | {t["learning_rate"]:g} | {t["crop_min_area"]:g} | {t["epochs"]} | {pct(t["val_top1"])} |'
            for key, t in tuning.items()]
  lines += ['', 'Validation top-1 (%) of every grid point:'] + chain_lib.grid_tables(tuning, pct)
  lines += ['', f'Test split. ResNet-18 at width {p["width"]} (CIFAR stem), one pretraining of '
            f'{p["pretrain_epochs"]} epochs at batch {p["pretrain_batch"]}, checkpoints kept at '
            f'{", ".join(map(str, p["kept_epochs"]))} epochs; commit {commit}; {summary["total_hours"]} hours of '
            f'runs in all.']
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  plot_curve(os.path.join(out, 'results.png'), curve, results)
  print('\n'.join(lines))


def plot_curve(path, curve, results):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9.5, 4.8))
  epochs = sorted(curve)
  # (curve key, label, style, the baseline drawn beside it as a line)
  for key, label, style, baseline in (
      ('finetune_1pct', 'fine-tuned, 1% labels', 'o-', ('supervised_1pct', '1%')),
      ('finetune_10pct', 'fine-tuned, 10% labels', 's-', ('supervised_10pct', '10%')),
      ('linear', 'linear evaluation (all labels)', '^-', None), ('knn', 'kNN (all labels)', 'v-', None)):
    points = [(e, 100 * curve[e][key]) for e in epochs if curve[e][key] is not None]
    line, = ax.plot([e for e, _ in points], [v for _, v in points], style, label=label)
    if baseline and baseline[0] in results:
      ax.axhline(100 * results[baseline[0]]['top1'], color=line.get_color(), linestyle='--', linewidth=1,
                 label=f'supervised only, {baseline[1]} labels (tuned)')
  ax.set_xscale('log')
  ax.minorticks_off()
  ax.set_xticks(epochs, [str(e) for e in epochs])
  ax.set_xlabel('pretraining epochs')
  ax.set_ylabel('test top-1 (%)')
  ax.set_title('CIFAR-10: accuracy against the length of pretraining')
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))  # beside the axes: no line hidden under it
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def seeded(args, seed):
  """args with --seed=seed instead of the run's seed."""
  return [f'--seed={seed}' if a.startswith('--seed=') else a for a in args]


def with_seed(name, seed):
  """Stage names: the first seed's run keeps the plain name (it is the run the curve shows)."""
  return name if seed == 0 else f'{name}_seed{seed}'


def extended_epochs(listed, seconds_per_epoch, budget):
  """The baseline's epoch counts: the chain's, then three times the last while a run that long takes at most
  `budget` seconds, the last one cut to what fits (rounded down to a multiple of 10). A cut run under 1.5 times
  the extension before it would tell little for hours of clock: that extension is stretched to it instead."""
  epochs = list(listed)
  if not (seconds_per_epoch and budget):
    return tuple(epochs)
  fits = int(budget // seconds_per_epoch) // 10 * 10
  while epochs[-1] * 3 <= fits:
    epochs.append(epochs[-1] * 3)
  if fits > epochs[-1]:
    if len(epochs) > len(listed) and fits < 1.5 * epochs[-1]:
      epochs[-1] = fits
    else:
      epochs.append(fits)
  return tuple(epochs)


def mean_std(values):
  mean = sum(values) / len(values)
  std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
  return round(mean, 5), round(std, 5)


class Stages:
  """The runs that follow the pretraining, in three parts (PARTS) that may run side by side. evaluations: kNN at
  every kept checkpoint; fine-tuning tuned on the validation split at the longest pretraining and run with those
  settings from every kept checkpoint; linear evaluation likewise. students: the other seeds of fine-tuning at the
  longest; distillation of its 10% model into itself and into a network of half the width. baseline: the
  supervised baseline, whose longest runs take hours."""

  def __init__(self, chain, preset, data, common, kept, pretraining):
    self.chain, self.p, self.kept, self.pretraining = chain, preset, kept, pretraining
    self.longest, self.data = max(kept), data
    tuning_data = chain_lib.tuning_split(data, chain.out, preset['val_fraction'])
    self.final = common + [f'--data_dir={data}', '--eval_split=test']
    self.tuning = common + [f'--data_dir={tuning_data}', '--eval_split=val']
    # As in the chain: fine-tuning and supervised-only training share everything but their start.
    self.supervised = ['--mode=finetune', f'--train_batch_size={preset["batch"]}', '--optimizer=momentum',
                       '--learning_rate_scaling=linear', '--weight_decay=1e-4', '--warmup_epochs=0',
                       '--checkpoint_epochs=0', '--checkpoint_steps=0']
    self.from_scratch = ['--ft_proj_selector=0']
    self.tuned, self.results = {}, {}

  def from_pretrained(self, epochs):
    return [f'--checkpoint={self.kept[epochs]}', '--ft_proj_selector=1', '--zero_init_logits_layer']

  def linear(self, epochs):
    """Linear evaluation: a new head on the frozen encoder (after block group 4), no weight decay."""
    return ['--mode=finetune', f'--checkpoint={self.kept[epochs]}', '--fine_tune_after_block=4',
            '--ft_proj_selector=0', f'--train_batch_size={self.p["linear_batch"]}', '--optimizer=momentum',
            '--learning_rate_scaling=linear', '--weight_decay=0', '--warmup_epochs=0', '--zero_init_logits_layer',
            '--checkpoint_epochs=1']

  @staticmethod
  def chosen(t):
    return [f'--learning_rate={t["learning_rate"]}', f'--finetune_crop_min_area={t["crop_min_area"]}',
            f'--train_epochs={t["epochs"]}']

  def all(self, parts=PARTS['all']):
    """The stages of `parts` (see PARTS), in order; {'tuning', 'results'} for the report, or None while the
    baseline has to wait for the pretraining's clock."""
    if 'pretrained' in parts:
      self.evaluations()
    if 'students' in parts:
      self.students()
    if 'baseline' in parts and self.baseline() is None:
      return None
    return {'tuning': self.tuned, 'results': self.results}

  def finetune_tuning(self):
    """Fine-tuning's settings at both fractions, tuned at the longest pretraining (the grid's runs are taken from
    --out or the ledger once done)."""
    p = self.p
    for frac, fraction in FRACTIONS.items():
      self.tuned[f'finetune_{frac}'] = chain_lib.grid_search(
          self.chain, f'tune/finetune_e{self.longest}_{frac}',
          self.tuning + self.supervised + self.from_pretrained(self.longest) + [f'--label_fraction={fraction}'],
          p['lrs'], p['crop_min_areas'], p['finetune_epochs'][frac])

  def evaluations(self):
    """kNN, fine-tuning and linear evaluation from every kept checkpoint."""
    p, chain, results, tuned, longest = self.p, self.chain, self.results, self.tuned, self.longest
    for epochs in sorted(self.kept, reverse=True):
      results[f'knn_e{epochs}'] = chain.run(f'knn_e{epochs}', [
          '--mode=knn', f'--checkpoint={self.kept[epochs]}', '--dataset=image_folder', f'--data_dir={self.data}',
          '--image_size=32', f'--knn_k={p["knn_k"]}', '--knn_temperature=0.1', '--eval_split=test'],
          'knn_test.json')
    self.finetune_tuning()
    for epochs in sorted(self.kept, reverse=True):  # the settings tuned at the longest, for every checkpoint
      for frac in FRACTIONS:
        results[f'finetune_e{epochs}_{frac}'] = self.finetune(epochs, frac)
    # Linear evaluation: the learning rate and length tuned at the reference's crop first (its runs are shared
    # with the full grid), then the crop tuned too, as for fine-tuning: a linear head on frozen features fits
    # crops of 8% of a 32-pixel image poorly (at 100 epochs it ended at 61% training accuracy, 65.6% test, under
    # the 67.6% of the frozen-feature probe).
    linear_grid = lambda crops: chain_lib.grid_search(chain, f'tune/linear_e{longest}', self.tuning +
                                                      self.linear(longest), p['linear_lrs'], crops, p['linear_epochs'])
    tuned['linear_reference_crop'] = linear_grid((REFERENCE_CROP,))
    tuned['linear'] = linear_grid(p['crop_min_areas'])
    for epochs in sorted(self.kept, reverse=True):  # 90 epochs of linear evaluation: about an hour each here
      results[f'linear_e{epochs}'] = chain.run(f'linear_e{epochs}', self.final + self.linear(epochs) +
                                               self.chosen(tuned['linear']), 'eval_test.json', resumable=True)
    reference = self.chosen(tuned['linear_reference_crop'])
    name = REFERENCE_LINEAR.format(epochs=longest)
    results[name] = (results[f'linear_e{longest}'] if reference == self.chosen(tuned['linear']) else
                     chain.run(name, self.final + self.linear(longest) + reference, 'eval_test.json', resumable=True))

  def students(self):
    """The other seeds of fine-tuning at the longest pretraining (minutes), then the distillations (hours)."""
    self.finetune_tuning()
    for seed in self.p['seeds'][1:]:
      for frac in FRACTIONS:
        self.results[with_seed(f'finetune_e{self.longest}_{frac}', seed)] = self.finetune(self.longest, frac, seed)
    self.distill()

  def finetune(self, epochs, frac, seed=0):
    # The 10% model of the longest pretraining teaches the distillations: its checkpoint is kept in the ledger.
    return self.chain.run(
        with_seed(f'finetune_e{epochs}_{frac}', seed),
        seeded(self.final, seed) + self.supervised + self.from_pretrained(epochs) +
        [f'--label_fraction={FRACTIONS[frac]}'] + self.chosen(self.tuned[f'finetune_{frac}']), 'eval_test.json',
        keep_checkpoint=(epochs, frac, seed) == (self.longest, '10pct', 0))

  def distill(self):
    """The longest's 10% model teaches on every training image (labels unused): a student of its own size
    started from the same pretraining (self-distillation, the teacher's learning rate and crop), and one of half
    the width trained from scratch (the supervised baseline's learning rate and crop at 10%)."""
    p, longest = self.p, self.longest
    teacher = os.path.join(self.chain.out, f'finetune_e{longest}_10pct')
    from simclr_tf.runtime import checkpoints
    if not checkpoints.latest_checkpoint(teacher):  # its stage restored without its checkpoint: train it again
      self.chain.forget(f'finetune_e{longest}_10pct')
      self.results[f'finetune_e{longest}_10pct'] = self.finetune(longest, '10pct')
    student = ['--mode=distill', f'--teacher={teacher}', f'--train_batch_size={p["batch"]}',
               f'--train_epochs={p["distill_epochs"]}', '--optimizer=momentum', '--learning_rate_scaling=linear',
               '--weight_decay=1e-4', '--warmup_epochs=0', '--distill_temperature=1.0', '--checkpoint_epochs=1']
    t = self.tuned['finetune_10pct']
    self.results[f'distill_e{longest}_10pct_self'] = self.chain.run(
        f'distill_e{longest}_10pct_self', self.final + student + [
            f'--checkpoint={self.kept[longest]}', '--ft_proj_selector=1', f'--learning_rate={t["learning_rate"]}',
            f'--finetune_crop_min_area={t["crop_min_area"]}'], 'eval_test.json', resumable=True)
    b = self.baseline_tuning('10pct', extend=False)
    small = [f'--width_multiplier={p["student_width"]}' if a.startswith('--width_multiplier=') else a
             for a in self.final]
    self.results[f'distill_e{longest}_10pct_half'] = self.chain.run(
        f'distill_e{longest}_10pct_half', small + student + self.from_scratch + [
            f'--learning_rate={b["learning_rate"]}', f'--finetune_crop_min_area={b["crop_min_area"]}'],
        'eval_test.json', resumable=True)

  def baseline_tuning(self, frac, extend=True):
    """The chain's grid for the supervised baseline (its runs taken from its ledger), and with `extend` longer
    runs while validation improves (by more than the preset's baseline_min_gain) and they fit in the clock of the
    longest pretraining plus its fine-tuning.
    None while that clock is not known and the next run may not fit in what the pretraining has taken so far."""
    p, chain = self.p, self.chain
    base = self.tuning + self.supervised + self.from_scratch + [f'--label_fraction={FRACTIONS[frac]}']
    listed = p['baseline_epochs'][frac]
    t = chain_lib.grid_search(chain, f'tune/supervised_{frac}', base, p['lrs'], p['crop_min_areas'],
                              listed if extend else listed[:1], min_gain=p['baseline_min_gain'])
    if not extend or t['epochs'] != listed[-1] or len(listed) < 2:
      return t
    # The longest listed run still improved: how long may the next be?
    per_epoch = self.baseline_seconds(frac, t, listed[-1]) / listed[-1]
    pretrain_seconds, finished = self.pretraining_seconds()
    finetune = chain.stage_seconds(f'finetune_e{self.longest}_{frac}') or 0.0
    epochs = extended_epochs(listed, per_epoch, pretrain_seconds + finetune)
    nxt = epochs[len(listed)] if len(epochs) > len(listed) else None
    if nxt is None and not finished:
      print(f'\nsupervised_{frac}: the next run ({listed[-1] * 3} epochs, about '
            f'{listed[-1] * 3 * per_epoch / 3600:.1f} h) waits for the pretraining\'s clock', flush=True)
      return None
    # Runs longer than the listed ones take hours: they keep their newest checkpoint in the ledger.
    return chain_lib.grid_search(chain, f'tune/supervised_{frac}', base, p['lrs'], p['crop_min_areas'], epochs,
                                 resumable_after=listed[-1], min_gain=p['baseline_min_gain'])

  def baseline_seconds(self, frac, t, epochs):
    """How long the baseline at `t`'s learning rate and crop takes for `epochs` epochs on every training image:
    its tuning run's recorded seconds (on the training split less the validation images), scaled."""
    run = f'tune/supervised_{frac}_{chain_lib.tag_of(t["learning_rate"], t["crop_min_area"], epochs)}'
    return self.chain.timings[run] / (1 - self.p['val_fraction'])

  def pretraining_seconds(self):
    """(seconds the long pretraining has trained so far, whether it is finished): its record once finished (here
    or in the ledger), else its metrics so far (here, or in the ledger's latest checkpoint on a new machine)."""
    model_dir, ledger_dir = self.pretraining.model_dir, self.pretraining.ledger_dir
    for folder in filter(None, (model_dir, ledger_dir)):
      if os.path.exists(os.path.join(folder, 'stage.json')):
        return json.load(open(os.path.join(folder, 'stage.json')))['seconds'], True
    for folder in filter(None, (model_dir, ledger_dir and os.path.join(ledger_dir, 'latest'))):
      if os.path.exists(os.path.join(folder, 'metrics.jsonl')):
        return chain_lib.training_seconds(folder), False
    return 0.0, False

  def baseline(self):
    """The tuned baseline at both fractions, with every seed; None when it has to wait."""
    for frac in FRACTIONS:
      t = self.baseline_tuning(frac)
      if t is None:
        return None
      self.tuned[f'supervised_{frac}'] = t
      # A run of more than half an hour here keeps its newest checkpoint in the ledger as it goes, to continue in a
      # later session.
      long = self.baseline_seconds(frac, t, t['epochs']) > 1800
      for seed in self.p['seeds']:
        args = (seeded(self.final, seed) + self.supervised + self.from_scratch +
                [f'--label_fraction={FRACTIONS[frac]}'] + self.chosen(t))
        self.results[with_seed(f'supervised_{frac}', seed)] = self.chain.run(
            with_seed(f'supervised_{frac}', seed), chain_lib.saving_every(args, t['epochs'] // 20) if long else args,
            'eval_test.json', resumable=long)
    return {'tuning': self.tuned, 'results': self.results}


if __name__ == '__main__':
  main()
