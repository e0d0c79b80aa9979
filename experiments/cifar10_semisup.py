"""SimCLRv2 on real CIFAR-10 images at a CPU budget: supervised baselines, pretraining, fine-tuning on 1% and 10%
of the labels, distillation, linear evaluation and kNN, then a results table (markdown + JSON) and PNG plots.

  python experiments/cifar10_semisup.py                       # the full run (65-80 minutes on 2 CPU cores)
  python experiments/cifar10_semisup.py --preset=fast          # a few minutes: the CI smoke test of the chain

Data: --data_dir (default ../shared/data/cifar10: ROOT/{train,test}/<class>/*.jpg), read in place. The fast preset
links a few images per class into OUT/data instead. Every stage is a run.py command (printed before it runs) with
its own model_dir under --out, so the chain can be inspected, resumed or rerun stage by stage; evaluation is on the
test split only.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRESETS = {
    # Budget: about 70 minutes on a 2-core CPU (the issue allows 90). Pretraining gets most of it.
    'full': dict(width=0.25, pretrain_epochs=12, pretrain_batch=128, finetune_epochs_1pct=60, finetune_epochs_10pct=20,
                 distill_epochs=2, linear_epochs=3, batch=64, knn_k=200),
    # A few minutes: every stage runs a handful of steps on a few images per class.
    'fast': dict(width=0.125, pretrain_epochs=2, pretrain_batch=32, finetune_epochs_1pct=2, finetune_epochs_10pct=2,
                 distill_epochs=1, linear_epochs=1, batch=16, knn_k=5, per_class=(40, 10)),
}


def link_subset(data_dir, out_dir, train_per_class, test_per_class):
  """OUT/data/{train,test}/<class>/ with symlinks to the first images of each class (nothing copied)."""
  target = os.path.join(out_dir, 'data')
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for cls in sorted(os.listdir(os.path.join(data_dir, split))):
      folder = os.path.join(target, split, cls)
      os.makedirs(folder, exist_ok=True)
      for name in sorted(os.listdir(os.path.join(data_dir, split, cls)))[:count]:
        link = os.path.join(folder, name)
        if not os.path.lexists(link):
          os.symlink(os.path.abspath(os.path.join(data_dir, split, cls, name)), link)
  return target


def run_stage(name, out, args, timings):
  model_dir = os.path.join(out, name)
  cmd = [sys.executable, os.path.join(ROOT, 'run.py'), f'--model_dir={model_dir}', *args]
  print('\n$ ' + ' '.join(cmd[1:]), flush=True)
  start = time.time()
  subprocess.run(cmd, check=True, cwd=ROOT)
  timings[name] = round(time.time() - start, 1)
  result_path = os.path.join(model_dir, 'eval_test.json')
  return json.load(open(result_path)) if os.path.exists(result_path) else {}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=sorted(PRESETS), default='full')
  parser.add_argument('--data_dir', default=os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10'))
  parser.add_argument('--out', default=None, help='default: runs/cifar10_semisup_<preset>')
  options = parser.parse_args()
  p = PRESETS[options.preset]
  out = os.path.abspath(options.out or os.path.join(ROOT, 'runs', f'cifar10_semisup_{options.preset}'))
  os.makedirs(out, exist_ok=True)
  if not os.path.isdir(os.path.join(options.data_dir, 'train')):
    sys.exit(f'error: --data_dir={options.data_dir} has no train/ split (expected ROOT/train/<class>/*.jpg).')
  data = link_subset(options.data_dir, out, *p['per_class']) if 'per_class' in p else options.data_dir
  commit = git_commit()

  common = ['--dataset=image_folder', f'--data_dir={data}', '--image_size=32', '--resnet_depth=18',
            f'--width_multiplier={p["width"]}', '--eval_split=test', '--seed=0', '--export_at_end=false',
            '--log_every_steps=50', '--proj_out_dim=128', '--num_proj_layers=3']
  # Fine-tuning and the supervised baselines share everything but their start: same optimizer, schedule and
  # augmentation (crop + flip), so the difference is what pretraining gives.
  supervised = ['--mode=finetune', f'--train_batch_size={p["batch"]}', '--optimizer=momentum',
                '--learning_rate=0.2', '--learning_rate_scaling=linear', '--weight_decay=1e-4', '--warmup_epochs=0',
                '--checkpoint_epochs=0', '--checkpoint_steps=0']
  timings, results = {}, {}
  pre = os.path.join(out, 'pretrain')
  for fraction, epochs in ((0.01, p['finetune_epochs_1pct']), (0.1, p['finetune_epochs_10pct'])):
    tag = f'{int(fraction * 100)}pct'
    results[f'supervised_{tag}'] = run_stage(f'supervised_{tag}', out, common + supervised + [
        f'--label_fraction={fraction}', f'--train_epochs={epochs}', '--ft_proj_selector=0'], timings)
  results['pretrain'] = run_stage('pretrain', out, common + [
      '--mode=pretrain', f'--train_batch_size={p["pretrain_batch"]}', f'--train_epochs={p["pretrain_epochs"]}',
      '--optimizer=lars', '--learning_rate=1.0', '--learning_rate_scaling=linear', '--weight_decay=1e-4',
      '--temperature=0.5', '--color_jitter_strength=0.5', '--use_blur=false', '--warmup_epochs=1',
      '--checkpoint_epochs=1'], timings)
  for fraction, epochs in ((0.01, p['finetune_epochs_1pct']), (0.1, p['finetune_epochs_10pct'])):
    tag = f'{int(fraction * 100)}pct'
    results[f'finetune_{tag}'] = run_stage(f'finetune_{tag}', out, common + supervised + [
        f'--label_fraction={fraction}', f'--train_epochs={epochs}', f'--checkpoint={pre}', '--ft_proj_selector=1',
        '--zero_init_logits_layer'], timings)
  teacher = os.path.join(out, 'finetune_10pct')
  results['distill_10pct'] = run_stage('distill_10pct', out, common + [
      '--mode=distill', f'--teacher={teacher}', f'--checkpoint={pre}', '--ft_proj_selector=1',
      f'--train_batch_size={p["batch"]}', f'--train_epochs={p["distill_epochs"]}', '--optimizer=momentum',
      '--learning_rate=0.2', '--learning_rate_scaling=linear', '--weight_decay=1e-4', '--warmup_epochs=0',
      '--distill_temperature=1.0', '--checkpoint_epochs=1'], timings)
  results['linear_eval'] = run_stage('linear_eval', out, common + [
      '--mode=finetune', f'--checkpoint={pre}', '--fine_tune_after_block=4', '--ft_proj_selector=0',
      '--train_batch_size=256', f'--train_epochs={p["linear_epochs"]}', '--optimizer=momentum',
      '--learning_rate=0.4', '--learning_rate_scaling=linear', '--weight_decay=0', '--warmup_epochs=0',
      '--zero_init_logits_layer', '--checkpoint_epochs=1'], timings)
  start = time.time()
  results['knn'] = {'top1': knn(pre, data, p), 'k': p['knn_k']}
  timings['knn'] = round(time.time() - start, 1)
  write_report(out, options, p, results, timings, commit)


def knn(pretrain_dir, data, p):
  """kNN top-1 on the test split with the pretrained encoder's final_avg_pool and all training images
  (--mode=knn, which writes knn_test.json beside the pretraining run)."""
  from simclr_tf import Config, run
  return run(Config(mode='knn', checkpoint=pretrain_dir, dataset='image_folder', data_dir=data, image_size=32,
                    resnet_depth=18, width_multiplier=p['width'], knn_k=p['knn_k'], knn_temperature=0.1,
                    eval_split='test'))['top1']


def git_commit():
  """The commit the run starts from, with '+changes' if tracked files differ from it (taken once, at the start)."""
  try:
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], capture_output=True,
                           text=True, cwd=ROOT, check=True).stdout.strip()
    return head + ('+changes' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def write_report(out, options, preset, results, timings, commit):
  from simclr_tf import files
  top1 = lambda key: results[key].get('top1')
  rows = [
      ('Supervised from scratch', top1('supervised_1pct'), top1('supervised_10pct')),
      ('SimCLRv2 pretrain → fine-tune (head layer 1)', top1('finetune_1pct'), top1('finetune_10pct')),
      ('SimCLRv2 + self-distillation (teacher: 10% fine-tune)', None, top1('distill_10pct')),
  ]
  summary = dict(preset=options.preset, settings=preset, commit=commit, data_dir=options.data_dir,
                 results={k: v for k, v in results.items()}, seconds=timings,
                 total_minutes=round(sum(timings.values()) / 60, 1))
  files.write_json(os.path.join(out, 'results.json'), summary)
  pct = lambda v: '–' if v is None else f'{100 * v:.1f}'
  lines = ['| method | 1% labels | 10% labels |', '| --- | ---: | ---: |']
  lines += [f'| {name} | {pct(a)} | {pct(b)} |' for name, a, b in rows]
  lines += ['', '| pretrained encoder, all labels | top-1 |', '| --- | ---: |',
            f'| linear evaluation (frozen encoder) | {pct(top1("linear_eval"))} |',
            f'| kNN (k={results["knn"]["k"]}, cosine) | {pct(results["knn"]["top1"])} |']
  examples = results['finetune_10pct'].get('num_examples', 0)
  lines += ['', f'CIFAR-10 test split ({examples:,} images). ResNet-18 at width {preset["width"]} with the CIFAR stem, '
            f'{preset["pretrain_epochs"]} pretraining epochs; commit {summary["commit"]}; '
            f'{summary["total_minutes"]} minutes in all.']
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  plot(out, rows, results)
  print('\n'.join(lines))


def plot(out, rows, results):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from simclr_tf.monitor import read_metrics
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  ax = axes[0]
  for i, (name, a, b) in enumerate(rows):
    values = [100 * v if v is not None else 0 for v in (a, b)]
    ax.bar([x + 0.27 * (i - 1) for x in (0, 1)], values, width=0.27, label=name)
  ax.set_xticks([0, 1], ['1% labels', '10% labels'])
  ax.set_ylabel('test top-1 (%)')
  ax.set_title('CIFAR-10: accuracy by method and label fraction')
  ax.legend(fontsize=7)
  pre = read_metrics(os.path.join(out, 'pretrain'))
  axes[1].plot([r['step'] for r in pre], [r['contrast_loss'] for r in pre], '.-', label='contrastive loss')
  twin = axes[1].twinx()
  twin.plot([r['step'] for r in pre], [r['contrast_acc'] for r in pre], '.-', color='tab:orange',
           label='contrastive acc')
  axes[1].set_title('pretraining')
  axes[1].set_xlabel('step')
  axes[1].legend(loc='upper left', fontsize=7)
  twin.legend(loc='upper right', fontsize=7)
  for stage in ('supervised_10pct', 'finetune_10pct', 'distill_10pct'):
    records = read_metrics(os.path.join(out, stage))
    key = 'loss'
    axes[2].plot([r['step'] for r in records], [r[key] for r in records], '.-', label=stage)
  axes[2].set_title('training loss, 10% labels')
  axes[2].set_xlabel('step')
  axes[2].set_yscale('log')
  axes[2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'results.png'), dpi=80)
  plt.close(fig)


if __name__ == '__main__':
  main()
