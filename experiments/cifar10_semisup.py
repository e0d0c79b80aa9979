"""SimCLRv2 on real CIFAR-10 images at a CPU budget, against a tuned supervised baseline: pretraining with and
without a memory of negatives, fine-tuning on 1% and 10% of the labels, distillation, linear evaluation and kNN,
then a results table (markdown + JSON) and PNG plots.

  python -m experiments.cifar10_semisup                       # the full run (many hours on 2 CPU cores; resumable)
  python -m experiments.cifar10_semisup --preset=fast          # a few minutes: the CI smoke test of the chain

Stages, in order (each a run.py command, printed before it runs, with its own model_dir under --out; a stage whose
result is there is not run again, so an interrupted chain continues where it stopped; --until stops early):
  1. tuning split: OUT/tuning_data/{train,val}/<class>/ links the preset's val_fraction of each class's training
     images into `val`, the rest into `train` (nothing copied). Settings are chosen on `val`, never on the test split.
  2. pretraining on all training images without labels, once per memory size of the preset (0 = no memory).
  3. supervised-only grid on the tuning split (learning rate × fine-tuning crop's minimum area at the first epoch
     count, grown past its edge when the best pair is there, then longer at the best pair while validation accuracy
     improves), per label fraction.
  4. the same grid for fine-tuning each pretrained network.
  5. final runs with the chosen settings on the whole training split, evaluated on the test split: supervised-only,
     fine-tuning, distillation of the 10% model, linear evaluation, kNN.
Data: --data_dir (default ../shared/data/cifar10: ROOT/{train,test}/<class>/*.jpg), read in place; any image folder
of that layout works. The fast preset links a few images per class into OUT/data first.
"""

import argparse
import json
import os
import sys

if not __package__:  # run as a file: `experiments` is not importable from here
  sys.exit('error: run it from the repository root as a module: python -m experiments.cifar10_semisup ...')

from experiments.stages import (FRACTIONS, NUM_THREADS_HELP, ROOT, Chain, git_commit, grid_search,  # noqa: E402
                                grid_tables, link_subset, longer_runs, threads, tuning_split)

PRESETS = {
    # Pretraining 12 epochs at batch 128 (about 45 minutes each in bfloat16 on a 2-core CPU); the grids and the
    # final runs take the rest. The supervised baseline's longest runs (2,700 epochs at 1%, 540 at 10%) take about
    # as long as a pretraining plus its fine-tuning, and run only while the shorter ones still improve. The memory's
    # momentum is 0.99 (MoCo's CIFAR setting), not the paper's 0.999 for ImageNet: at 0.999 the momentum network
    # lags about 1,000 steps, a fifth of this 4,687-step schedule.
    'full': dict(width=0.25, pretrain_epochs=12, pretrain_batch=128, memory_sizes=(0, 4096), memory_momentum=0.99,
                 batch=64,
                 lrs=(0.05, 0.2, 0.8), crop_min_areas=(0.08, 0.35, 0.7),
                 epochs={'1pct': (100, 300, 900, 2700), '10pct': (20, 60, 180, 540)},
                 finetune_epochs={'1pct': (30, 100, 300), '10pct': (10, 30, 90)},
                 distill_epochs=6, linear_epochs=3, knn_k=200, val_fraction=0.1, precision='mixed_bfloat16'),
    # A few minutes: every stage runs a handful of steps on a few images per class (one grid point per side).
    'fast': dict(width=0.125, pretrain_epochs=2, pretrain_batch=32, memory_sizes=(64,), memory_momentum=0.99,
                 batch=16,
                 lrs=(0.2,), crop_min_areas=(0.35,), epochs={'1pct': (1,), '10pct': (1,)},
                 finetune_epochs={'1pct': (1,), '10pct': (1,)}, distill_epochs=1, linear_epochs=1, knn_k=5,
                 val_fraction=0.25, precision='float32', per_class=(40, 10)),
}
def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=sorted(PRESETS), default='full')
  parser.add_argument('--data_dir', default=os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10'))
  parser.add_argument('--out', default=None, help='default: runs/cifar10_semisup_<preset>')
  parser.add_argument('--until', default='report', choices=('pretrain', 'tuning', 'report'),
                      help='stop after this stage (the chain can be continued later with the same --out)')
  parser.add_argument('--ledger', default=None,
                      help='also record every finished stage here, and take stages recorded here as done (their '
                           'files are copied into --out): a chain can go on from a ledger on another machine')
  parser.add_argument('--num_threads', type=int, default=0, help=NUM_THREADS_HELP)
  options = parser.parse_args()
  p = PRESETS[options.preset]
  out = os.path.abspath(options.out or os.path.join(ROOT, 'runs', f'cifar10_semisup_{options.preset}'))
  os.makedirs(out, exist_ok=True)
  if not os.path.isdir(os.path.join(options.data_dir, 'train')):
    sys.exit(f'error: --data_dir={options.data_dir} has no train/ split (expected ROOT/train/<class>/*.jpg).')
  data = link_subset(options.data_dir, out, *p['per_class']) if 'per_class' in p else options.data_dir
  tuning_data = tuning_split(data, out, p['val_fraction'])
  commit = git_commit()
  chain = Chain(out, commit, options.ledger and os.path.abspath(options.ledger), run_flags=threads(options))

  common = ['--dataset=image_folder', '--image_size=32', '--resnet_depth=18', f'--width_multiplier={p["width"]}',
            '--seed=0', '--export_at_end=false', '--log_every_steps=50', '--proj_out_dim=128', '--num_proj_layers=3',
            f'--precision={p["precision"]}']
  final = common + [f'--data_dir={data}', '--eval_split=test']
  tuning = common + [f'--data_dir={tuning_data}', '--eval_split=val']
  # Fine-tuning and supervised-only training share everything but their start (and the grid picks the learning
  # rate, the crop's minimum area and the epochs of each): momentum SGD, cosine schedule, crop + flip.
  supervised = ['--mode=finetune', f'--train_batch_size={p["batch"]}', '--optimizer=momentum',
                '--learning_rate_scaling=linear', '--weight_decay=1e-4', '--warmup_epochs=0',
                '--checkpoint_epochs=0', '--checkpoint_steps=0']
  from_scratch = ['--ft_proj_selector=0']

  def from_pretrained(pre):
    return [f'--checkpoint={pre}', '--ft_proj_selector=1', '--zero_init_logits_layer']

  pretrained = {}
  for memory in p['memory_sizes']:
    name = f'pretrain_m{memory}'
    memory_args = [f'--memory_size={memory}', f'--memory_momentum={p["memory_momentum"]}'] if memory else []
    chain.run(name, common + [f'--data_dir={data}', '--mode=pretrain', f'--train_batch_size={p["pretrain_batch"]}',
                              f'--train_epochs={p["pretrain_epochs"]}', '--optimizer=lars', '--learning_rate=1.0',
                              '--learning_rate_scaling=linear', '--weight_decay=1e-4', '--temperature=0.5',
                              '--color_jitter_strength=0.5', '--use_blur=false', '--warmup_epochs=1',
                              '--checkpoint_epochs=1', *memory_args], keep_checkpoint=True)
    pretrained[memory] = os.path.join(out, name)
  if options.until == 'pretrain':
    return

  # The pretrained arms go first, tuning and then their final runs, and the supervised baseline after them: its
  # longest grid points take as long as a pretraining.
  report = {'tuning': {}, 'results': {}}
  tuned = {}
  for memory, pre in pretrained.items():
    for frac, fraction in FRACTIONS.items():
      tuned[f'finetune_m{memory}_{frac}'] = grid_search(
          chain, f'tune/finetune_m{memory}_{frac}',
          tuning + supervised + from_pretrained(pre) + [f'--label_fraction={fraction}'],
          p['lrs'], p['crop_min_areas'], p['finetune_epochs'][frac])

  def tune_supervised():
    for frac, fraction in FRACTIONS.items():
      tuned[f'supervised_{frac}'] = grid_search(
          chain, f'tune/supervised_{frac}', tuning + supervised + from_scratch + [f'--label_fraction={fraction}'],
          p['lrs'], p['crop_min_areas'], p['epochs'][frac])
    # The report lists the baseline first.
    report['tuning'] = {key: tuned[key] for key in sorted(tuned, key=lambda k: not k.startswith('supervised'))}

  if options.until == 'tuning':
    tune_supervised()
    return print(json.dumps(report['tuning'], indent=1))

  results = report['results']
  from simclr_tf.runtime import checkpoints

  def chosen(key):
    t = tuned[key]
    return [f'--learning_rate={t["learning_rate"]}', f'--finetune_crop_min_area={t["crop_min_area"]}',
            f'--train_epochs={t["epochs"]}']

  def finetune(memory, frac):
    return chain.run(f'finetune_m{memory}_{frac}', final + supervised + from_pretrained(pretrained[memory]) +
                     [f'--label_fraction={FRACTIONS[frac]}'] + chosen(f'finetune_m{memory}_{frac}'), 'eval_test.json')

  for memory, pre in pretrained.items():
    for frac in FRACTIONS:
      results[f'finetune_m{memory}_{frac}'] = finetune(memory, frac)
    teacher, teacher_dir = chosen(f'finetune_m{memory}_10pct'), os.path.join(out, f'finetune_m{memory}_10pct')
    if not chain.finished(f'distill_m{memory}_10pct') and not checkpoints.latest_checkpoint(teacher_dir):
      # The teacher was restored from the ledger, which keeps no fine-tuned checkpoint: train it again.
      chain.forget(f'finetune_m{memory}_10pct')
      finetune(memory, '10pct')
    results[f'distill_m{memory}_10pct'] = chain.run(f'distill_m{memory}_10pct', final + [
        '--mode=distill', f'--teacher={teacher_dir}', f'--checkpoint={pre}',
        '--ft_proj_selector=1', f'--train_batch_size={p["batch"]}', f'--train_epochs={p["distill_epochs"]}',
        '--optimizer=momentum', teacher[0], teacher[1], '--learning_rate_scaling=linear', '--weight_decay=1e-4',
        '--warmup_epochs=0', '--distill_temperature=1.0', '--checkpoint_epochs=1'], 'eval_test.json')
    results[f'linear_m{memory}'] = chain.run(f'linear_m{memory}', final + [
        '--mode=finetune', f'--checkpoint={pre}', '--fine_tune_after_block=4', '--ft_proj_selector=0',
        '--train_batch_size=256', f'--train_epochs={p["linear_epochs"]}', '--optimizer=momentum',
        '--learning_rate=0.4', '--learning_rate_scaling=linear', '--weight_decay=0', '--warmup_epochs=0',
        '--zero_init_logits_layer', '--checkpoint_epochs=1'], 'eval_test.json')
    results[f'knn_m{memory}'] = chain.run(f'knn_m{memory}', [
        '--mode=knn', f'--checkpoint={pre}', '--dataset=image_folder', f'--data_dir={data}', '--image_size=32',
        '--resnet_depth=18', f'--width_multiplier={p["width"]}', f'--knn_k={p["knn_k"]}', '--knn_temperature=0.1',
        '--eval_split=test'], 'knn_test.json')

  tune_supervised()
  for frac, fraction in FRACTIONS.items():
    results[f'supervised_{frac}'] = chain.run(
        f'supervised_{frac}', final + supervised + from_scratch + [f'--label_fraction={fraction}'] +
        chosen(f'supervised_{frac}'), 'eval_test.json')
  write_report(out, options, p, report, chain.timings, commit)


def write_report(out, options, preset, report, timings, commit):
  from simclr_tf.runtime import files
  results, tuning = report['results'], report['tuning']
  top1 = lambda key: results[key].get('top1')
  memories = preset['memory_sizes']
  name = lambda m: f'memory of {m:,} negatives' if m else 'no memory'
  baseline = (top1('supervised_1pct'), top1('supervised_10pct'))
  # (label, 1% top-1, 10% top-1, what each is measured against and how that is named in the table)
  rows = [('Supervised only (tuned)', *baseline, (None, None), '')]
  for m in memories:
    finetuned = (top1(f'finetune_m{m}_1pct'), top1(f'finetune_m{m}_10pct'))
    rows.append((f'SimCLRv2, {name(m)}: pretrain → fine-tune', *finetuned, baseline, ''))
    rows.append((f'SimCLRv2, {name(m)}: + self-distillation', None, top1(f'distill_m{m}_10pct'),
                 (None, finetuned[1]), ' on its teacher'))
  summary = dict(preset=options.preset, settings=preset, commit=commit, data_dir=options.data_dir,
                 tuning=tuning, results=results, seconds=timings, total_minutes=round(sum(timings.values()) / 60, 1))
  files.write_json(os.path.join(out, 'results.json'), summary)
  pct = lambda v: '–' if v is None else f'{100 * v:.1f}'
  against = lambda v, ref, what: '' if v is None or ref is None else f' ({100 * (v - ref):+.1f}{what})'
  lines = ['| method | 1% labels | 10% labels |', '| --- | ---: | ---: |']
  lines += [f'| {label} | {pct(a)}{against(a, refs[0], what)} | {pct(b)}{against(b, refs[1], what)} |'
            for label, a, b, refs, what in rows]
  lines += ['', '| pretrained encoder, all labels | linear evaluation | kNN (k={}, cosine) |'.format(preset['knn_k']),
            '| --- | ---: | ---: |']
  lines += [f'| {name(m)} | {pct(top1(f"linear_m{m}"))} | {pct(top1(f"knn_m{m}"))} |' for m in memories]
  lines += ['', '| chosen on the validation split | learning rate | crop min. area | epochs | val top-1 |',
            '| --- | ---: | ---: | ---: | ---: |']
  lines += [f'| {key} | {t["learning_rate"]:g} | {t["crop_min_area"]:g} | {t["epochs"]} | {pct(t["val_top1"])} |'
            for key, t in tuning.items()]
  lines += ['', 'Validation top-1 (%) of every grid point:'] + grid_tables(tuning, pct)
  examples = results['supervised_10pct'].get('num_examples', 0)
  lines += ['', f'Test split ({examples:,} images). ResNet-18 at width {preset["width"]} with the CIFAR stem, '
            f'{preset["pretrain_epochs"]} pretraining epochs at batch {preset["pretrain_batch"]}; commit {commit}; '
            f'{summary["total_minutes"]} minutes in all.']
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  plot(out, [row[:3] for row in rows], tuning, memories)
  print('\n'.join(lines))


def plot(out, rows, tuning, memories):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from simclr_tf.runtime.monitor import read_metrics
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  ax = axes[0]
  width = 0.8 / len(rows)
  for i, (label, a, b) in enumerate(rows):
    values = [100 * v if v is not None else 0 for v in (a, b)]
    ax.bar([x + width * (i - (len(rows) - 1) / 2) for x in (0, 1)], values, width=width, label=label)
  ax.set_xticks([0, 1], ['1% labels', '10% labels'])
  ax.set_ylabel('test top-1 (%)')
  ax.set_title('accuracy by method and label fraction')
  ax.legend(fontsize=6)
  for m in memories:
    pre = read_metrics(os.path.join(out, f'pretrain_m{m}'))
    axes[1].plot([r['step'] for r in pre], [r['contrast_acc'] for r in pre], '.-', label=f'memory {m}')
  axes[1].set_title('pretraining: contrastive accuracy')
  axes[1].set_xlabel('step')
  axes[1].legend(fontsize=7)
  ax = axes[2]
  for key, t in tuning.items():
    runs = longer_runs(t)
    ax.plot([e for e, _ in runs], [100 * s for _, s in runs], 'o-', label=key)
  ax.set_xscale('log')
  ax.set_xlabel('epochs (at the chosen learning rate and crop)')
  ax.set_ylabel('validation top-1 (%)')
  ax.set_title('tuning: longer training')
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'results.png'), dpi=80)
  plt.close(fig)


if __name__ == '__main__':
  main()
