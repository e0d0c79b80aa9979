"""The README's three steps on the quick start's data: the fine-tuning and distillation settings the README prints,
chosen on a validation split, and the figures it prints beside each command.

  python -m experiments.quickstart_steps --ledger=experiments/results/quickstart_steps/ledger

It runs the README's quick start (unless runs/quickstart holds it), then on a validation split: the grid for
fine-tuning the pretrained network on 10% of the labels (200 images) and for the supervised-only network on the same
labels for as long, and the grid for distilling the fine-tuned model into a student; then the README's commands with
the chosen settings, evaluated once on the test split, and the linear probe on the same 200 labels (--mode=knn
--label_fraction=0.1). Writes results.json and results.md (the table the README shows) beside the ledger.

The validation split is a second draw of the shapes dataset (seed 1: the same generator, other images):
OUT/tuning_data/train is the quick start's training split (linked), OUT/tuning_data/val the seed-1 draw's test
split. Training uses the same images and labels while tuning as in the final runs (only the evaluated split
differs), so a chosen run and its final run train the same network; the test split is read by the final runs only.
Stages are run.py commands, skipped when done (experiments/stages.py: Chain, grid search and ledger).
"""

import argparse
import os
import sys

if not __package__:  # run as a file: `experiments` is not importable from here
  sys.exit('error: run it from the repository root as a module: python -m experiments.quickstart_steps ...')

from experiments import stages as chain_lib  # noqa: E402  (stages, ledger and grid search)

ROOT = chain_lib.ROOT

# The quick start's network and data, as the README's commands give them (the architecture comes from the
# checkpoint's record; the baseline, which has none, names it).
DATA = ['--dataset=shapes', '--data_dir=data/shapes']
NETWORK = ['--image_size=32', '--resnet_depth=18', '--width_multiplier=0.125']
LABELS = {'10pct': ['--label_fraction=0.1'], '1pct': ['--label_fraction=0.01']}
SUPERVISED = ['--mode=finetune', '--optimizer=momentum', '--train_batch_size=64', '--weight_decay=0',
              '--warmup_epochs=0']
FROM_PRETRAINED = ['--checkpoint=runs/quickstart', '--ft_proj_selector=1', '--zero_init_logits_layer']
FROM_SCRATCH = NETWORK + ['--ft_proj_selector=0']
DISTILL = ['--mode=distill', '--teacher=runs/quickstart_ft10', '--checkpoint=runs/quickstart', '--ft_proj_selector=1',
           '--optimizer=momentum', '--train_batch_size=128', '--weight_decay=0', '--warmup_epochs=0']
# Fine-tuning and the supervised-only baseline are tuned on the same grid at the same length (a few minutes each):
# 270 epochs of the 200 labelled images (843 steps), 900 of the 20 (281 steps).
GRID = dict(lrs=(0.05, 0.2, 0.8), crops=(0.3, 0.6, 1.0), distill_epochs=(10, 30, 90))
EPOCHS = {'10pct': 270, '1pct': 900}
KNN_K = 20  # the quick start's


def tuning_data(out):
  """OUT/tuning_data/{train,val}: the quick start's training split, and the test split of the seed-1 draw."""
  from simclr_tf.data import shapes
  draw = os.path.join(out, 'shapes_seed1')
  if not os.path.exists(os.path.join(draw, shapes.MARKER)):
    shapes.generate(draw, seed=1)
  target = os.path.join(out, 'tuning_data')
  os.makedirs(target, exist_ok=True)
  for split, source in (('train', os.path.join(ROOT, 'data', 'shapes', 'train')), ('val', os.path.join(draw, 'test'))):
    link = os.path.join(target, split)
    if not os.path.lexists(link):
      os.symlink(source, link)
  return target


def on_tuning(args, data):
  """args, tuning: the image folder of OUT/tuning_data instead of the shapes, evaluated on val, nothing exported."""
  replaced = [a for a in args if a.split('=', 1)[0] not in ('--dataset', '--data_dir', '--eval_split')]
  return replaced + ['--dataset=image_folder', f'--data_dir={data}', '--eval_split=val', '--export_at_end=false']


def chosen_flags(t):
  return [f'--learning_rate={t["learning_rate"]:g}', f'--finetune_crop_min_area={t["crop_min_area"]:g}',
          f'--train_epochs={t["epochs"]}']


def readme_commands(tuned):
  """{step: run.py arguments} of the README's commands with the chosen settings (model_dir last, as written)."""
  commands = {}
  for labels, short in (('10pct', '10'), ('1pct', '1')):
    commands[f'probe_{labels}'] = ['--mode=knn', '--checkpoint=runs/quickstart', *DATA, *LABELS[labels],
                                   f'--knn_k={KNN_K}', f'--model_dir=runs/quickstart_probe{short}']
    commands[f'supervised_{labels}'] = [*SUPERVISED, *DATA, *LABELS[labels], *FROM_SCRATCH,
                                        *chosen_flags(tuned[f'supervised_{labels}']), '--eval_split=test',
                                        f'--model_dir=runs/supervised{short}']
    commands[f'finetune_{labels}'] = [*SUPERVISED, *DATA, *LABELS[labels], *FROM_PRETRAINED,
                                      *chosen_flags(tuned[f'finetune_{labels}']), '--eval_split=test',
                                      f'--model_dir=runs/quickstart_ft{short}']
  commands['distill'] = [*DISTILL, *DATA, *chosen_flags(tuned['distill']), '--eval_split=test',
                         '--model_dir=runs/quickstart_student']
  return commands


def run_readme_command(chain, name, args, result):
  """A README command as a stage: in the README's model_dir (under ROOT), recorded in the ledger as `name`."""
  model_dir = next(a.split('=', 1)[1] for a in args if a.startswith('--model_dir='))
  chain.place(name, os.path.join(ROOT, model_dir))
  return chain.run(name, [a for a in args if not a.startswith('--model_dir=')], result)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'quickstart_steps'))
  parser.add_argument('--ledger', default=None, help='as in experiments/cifar10_semisup.py')
  parser.add_argument('--num_threads', type=int, default=0, help=chain_lib.NUM_THREADS_HELP)
  options = parser.parse_args()
  out = os.path.abspath(options.out)
  os.makedirs(out, exist_ok=True)
  chain = chain_lib.Chain(out, chain_lib.git_commit(), options.ledger and os.path.abspath(options.ledger),
                          run_flags=chain_lib.threads(options))
  quickstart = run_readme_command(chain, 'quickstart', ['--flagfile=flags/quickstart.cfg',
                                                        '--model_dir=runs/quickstart'], 'eval_test.json')
  data = tuning_data(out)
  tuned = {}
  for labels in ('10pct', '1pct'):
    # The pretrained network and the supervised-only one on the same labels for as long, on the same grid.
    for name, start in (('finetune', FROM_PRETRAINED), ('supervised', FROM_SCRATCH)):
      tuned[f'{name}_{labels}'] = chain_lib.grid_search(
          chain, f'tune/{name}_{labels}', on_tuning([*SUPERVISED, *LABELS[labels], *start], data), GRID['lrs'],
          GRID['crops'], (EPOCHS[labels],))
  # The distillation's teacher is the chosen fine-tuning's run (the same images and labels as the final one).
  ft = tuned['finetune_10pct']
  # The teacher is named in the distillations' stage names: a stage's recorded settings leave paths out, so a
  # teacher trained anew at the same path would otherwise leave the students of the old one standing.
  ft_tag = chain_lib.tag_of(ft['learning_rate'], ft['crop_min_area'], ft['epochs'])
  teacher, teacher_tag = chain.model_dir_of(f'tune/finetune_10pct_{ft_tag}'), f'ft10_{ft_tag}'
  distill = on_tuning([a if not a.startswith('--teacher=') else f'--teacher={teacher}' for a in DISTILL], data)
  tuned['distill'] = chain_lib.grid_search(chain, f'tune/distill_from_{teacher_tag}', distill, GRID['lrs'],
                                           GRID['crops'], GRID['distill_epochs'])
  results = {'quickstart': quickstart}
  for name, args in readme_commands(tuned).items():  # in order: the fine-tuned model teaches the student
    stage = f'distill_from_{teacher_tag}' if name == 'distill' else name
    results[name] = run_readme_command(chain, stage, args, 'knn_test.json' if name.startswith('probe') else
                                       'eval_test.json')
  write_report(os.path.dirname(chain.ledger) if chain.ledger else out, tuned, results, readme_commands(tuned),
               chain.timings, chain.commit)


def write_report(folder, tuned, results, commands, timings, commit):
  from simclr_tf.runtime import files
  top1 = {name: results[name].get('linear_probe_top1' if name.startswith('probe') else 'top1') for name in commands}
  for labels in LABELS:
    top1[f'knn_{labels}'] = results[f'probe_{labels}'].get('top1')
  summary = dict(commit=commit, tuning=tuned, top1=top1, commands={k: ' '.join(v) for k, v in commands.items()},
                 results=results, seconds=timings)
  files.write_json(os.path.join(folder, 'results.json'), summary)
  pct = lambda v: '–' if v is None else f'{100 * v:.1f}%'
  row = lambda text, key: f'| {text} | {pct(top1.get(key + "_10pct"))} | {pct(top1.get(key + "_1pct"))} |'
  lines = ['| on the 5-class test split (500 images), top-1 | 10% of the labels (200 images) | 1% (20 images) |',
           '| --- | ---: | ---: |',
           row('linear probe on the frozen pretrained encoder, fitted to the labelled images', 'probe'),
           row(f'kNN (k = {KNN_K}) with the labelled images as memory', 'knn'),
           row('supervised only, the same labelled images for as long', 'supervised'),
           row('fine-tuned from the projection head\'s first layer', 'finetune'),
           f'| distilled from the 10% model into the same network on all 2,000 training images (no labels) | '
           f'{pct(top1["distill"])} | |',
           '', '| chosen on the validation split | learning rate | crop min. area | epochs | val top-1 |',
           '| --- | ---: | ---: | ---: | ---: |']
  lines += [f'| {key} | {t["learning_rate"]:g} | {t["crop_min_area"]:g} | {t["epochs"]} | {pct(t["val_top1"])} |'
            for key, t in tuned.items()]
  lines += ['', f'commit {commit}; {round(sum(timings.values()) / 60, 1)} minutes of runs in all']
  with open(os.path.join(folder, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
