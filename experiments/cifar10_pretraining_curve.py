"""Does SimCLRv2 pretraining pay off with enough of it? One long CIFAR-10 pretraining, and from the checkpoints it
keeps along the way (12, 25, 50, 100 epochs): fine-tuning on 1% and 10% of the labels, linear evaluation trained
until it converges, kNN; against the tuned supervised baseline; then distillation of the best 10% model into
itself and into a network of half the width, and seeds at the longest pretraining.

  python experiments/cifar10_pretraining_curve.py --ledger=experiments/results/cifar10_pretraining_curve/ledger
  python experiments/cifar10_pretraining_curve.py --preset=fast     # a few minutes: the CI smoke test

The network and the pretraining recipe are those of the 12-epoch chain (experiments/cifar10_semisup.py: ResNet-18
at width 0.25, CIFAR stem, batch 128, LARS at 1.0 x B/256, temperature 0.5, colour strength 0.5, no blur,
bfloat16), without the memory of negatives, for --pretrain_epochs with one cosine schedule; the warmup is 5% of it
(5 epochs), as in the paper. Stages are run.py commands under --out, skipped when done (their record in --out or
in the ledger), as in the chain.

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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cifar10_semisup as chain_lib  # noqa: E402  (the chain's stages, ledger and grid search)

ROOT = chain_lib.ROOT

PRESETS = {
    # 100 epochs at batch 128 is 39,062 steps, about 5.5 hours of a 2-core CPU in bfloat16.
    'full': dict(width=0.25, pretrain_epochs=100, kept_epochs=(12, 25, 50, 100), pretrain_batch=128,
                 warmup_epochs=5, precision='mixed_bfloat16'),
    'fast': dict(width=0.125, pretrain_epochs=4, kept_epochs=(1, 2, 4), pretrain_batch=32, warmup_epochs=1,
                 precision='float32', per_class=(40, 10)),
}
PRETRAIN = 'pretrain'


def count_images(data_dir, split='train'):
  root = os.path.join(data_dir, split)
  return sum(len(os.listdir(os.path.join(root, c))) for c in os.listdir(root))


def checkpoint_files(model_dir, step):
  """The files of model_dir's ckpt-<step> (empty if it is not complete)."""
  prefix = f'ckpt-{step}'
  names = [n for n in os.listdir(model_dir) if n.startswith(prefix + '.')] if os.path.isdir(model_dir) else []
  return names if f'{prefix}.index' in names else []


def listed_checkpoints(model_dir):
  """The steps of the checkpoints the `checkpoint` state file lists: TF writes it after a checkpoint's files,
  so these are complete."""
  state = os.path.join(model_dir, 'checkpoint')
  if not os.path.exists(state):
    return []
  steps = []
  for line in open(state):
    if line.startswith('all_model_checkpoint_paths:'):
      name = os.path.basename(line.split('"')[1])
      if name.rsplit('-', 1)[-1].isdigit():
        steps.append(int(name.rsplit('-', 1)[1]))
  return sorted(steps)


def copy_checkpoint(model_dir, step, target, extra=()):
  """Copies ckpt-<step> (and `extra` files of model_dir) into a new folder `target` with its own state file,
  replacing what was there: the copy is made beside it and renamed into place, the old one moved aside first."""
  names = checkpoint_files(model_dir, step)
  if not names:
    raise FileNotFoundError(f'{model_dir}/ckpt-{step} is not complete')
  tmp = f'{target}.partial'
  shutil.rmtree(tmp, ignore_errors=True)
  chain_lib.copy_files(model_dir, tmp, names + [n for n in extra if os.path.exists(os.path.join(model_dir, n))])
  written = os.path.getmtime(os.path.join(model_dir, f'ckpt-{step}.index'))
  with open(os.path.join(tmp, 'checkpoint'), 'w') as f:  # as TF's CheckpointManager writes it
    f.write(f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n'
            f'all_model_checkpoint_timestamps: {written}\nlast_preserved_timestamp: {written - 1}\n')
  old = f'{target}.old'
  if os.path.exists(target):
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
  os.rename(tmp, target)
  shutil.rmtree(old, ignore_errors=True)


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
    for folder in (self.model_dir, self.ledger_dir):
      recorded = folder and os.path.join(folder, 'stage_args.json')
      if recorded and os.path.exists(recorded):
        if chain_lib.settings(json.load(open(recorded))['args']) != chain_lib.settings(self.args):
          sys.exit(f'error: {recorded} records the long pretraining with other settings; move {folder} away to '
                   f'start another one.')

  def bring_back(self, latest=True):
    """From the ledger on a new machine: the kept checkpoints, and (`latest`) the newest one to resume from."""
    if not self.ledger_dir or not os.path.isdir(self.ledger_dir):
      return
    for epochs in self.kept_steps:
      source = os.path.join(self.ledger_dir, f'epoch_{epochs}')
      if os.path.isdir(source) and not os.path.isdir(self.kept(epochs)):
        shutil.copytree(source, self.kept(epochs))
    latest = latest and os.path.join(self.ledger_dir, 'latest')
    if latest and os.path.isdir(latest) and not listed_checkpoints(self.model_dir):
      step = listed_checkpoints(latest)[-1]
      os.makedirs(self.model_dir, exist_ok=True)
      chain_lib.copy_files(latest, self.model_dir, sorted(os.listdir(latest)))
      print(f'\n{PRETRAIN}: resuming from the ledger\'s checkpoint of step {step}', flush=True)

  def sync(self):
    """Keeps the kept epochs' checkpoints (locally and in the ledger) and the ledger's latest checkpoint."""
    listed = listed_checkpoints(self.model_dir)
    for epochs, step in self.kept_steps.items():
      if step in listed and not os.path.isdir(self.kept(epochs)):
        copy_checkpoint(self.model_dir, step, self.kept(epochs), extra=('config.json',))
        print(f'{PRETRAIN}: kept the checkpoint of epoch {epochs} (step {step})', flush=True)
      if self.ledger_dir and os.path.isdir(self.kept(epochs)):
        target = os.path.join(self.ledger_dir, f'epoch_{epochs}')
        if not os.path.isdir(target):
          shutil.copytree(self.kept(epochs), target + '.partial')
          os.rename(target + '.partial', target)
    if self.ledger_dir and listed:
      latest = os.path.join(self.ledger_dir, 'latest')
      if listed_checkpoints(latest)[-1:] != listed[-1:]:
        copy_checkpoint(self.model_dir, listed[-1], latest, extra=('config.json', 'metrics.jsonl',
                                                                   'stage_args.json'))

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
    cmd = [sys.executable, os.path.join(ROOT, 'run.py'), f'--model_dir={self.model_dir}', *self.args]
    print('\n$ ' + ' '.join(cmd[1:]), flush=True)
    process = subprocess.Popen(cmd, cwd=ROOT)
    while process.poll() is None:
      time.sleep(self.POLL_SECONDS)
      self.sync()
    if process.returncode:
      raise subprocess.CalledProcessError(process.returncode, cmd)
    self.sync()
    missing = [e for e in self.kept_steps if not os.path.isdir(self.kept(e))]
    if missing:
      sys.exit(f'error: the checkpoints of epochs {missing} were not kept (removed before the driver saw them?); '
               f'see {self.model_dir}.')
    # Its time over every session: the metrics log's intervals (steps x batch / images per second).
    stage = {'seconds': round(training_seconds(self.model_dir), 1), 'commit': self.chain.commit, 'args': self.args}
    for folder in filter(None, (self.model_dir, self.ledger_dir)):
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, 'stage.json'), 'w') as f:
        json.dump(stage, f, indent=1)

  def ledger_has(self, epochs):
    return bool(self.ledger_dir) and os.path.isdir(os.path.join(self.ledger_dir, f'epoch_{epochs}'))


def training_seconds(model_dir):
  """The time a run spent training, from its metrics log (the last record of each step counts), whatever number
  of sessions it took."""
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    by_step = {r['step']: r for r in map(json.loads, filter(str.strip, f))}
  seconds, previous = 0.0, 0
  batch = json.load(open(os.path.join(model_dir, 'config.json')))['train_batch_size']
  for step in sorted(by_step):
    seconds += (step - previous) * batch / by_step[step]['images_per_second']
    previous = step
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=sorted(PRESETS), default='full')
  parser.add_argument('--data_dir', default=os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10'))
  parser.add_argument('--out', default=None, help='default: runs/cifar10_pretraining_curve_<preset>')
  parser.add_argument('--until', default='report', choices=('pretrain', 'report'))
  parser.add_argument('--ledger', default=None, help='as in experiments/cifar10_semisup.py')
  options = parser.parse_args()
  p = PRESETS[options.preset]
  out = os.path.abspath(options.out or os.path.join(ROOT, 'runs', f'cifar10_pretraining_curve_{options.preset}'))
  os.makedirs(out, exist_ok=True)
  if not os.path.isdir(os.path.join(options.data_dir, 'train')):
    sys.exit(f'error: --data_dir={options.data_dir} has no train/ split (expected ROOT/train/<class>/*.jpg).')
  data = chain_lib.link_subset(options.data_dir, out, *p['per_class']) if 'per_class' in p else options.data_dir
  chain = chain_lib.Chain(out, chain_lib.git_commit(), options.ledger and os.path.abspath(options.ledger))

  common = ['--dataset=image_folder', '--image_size=32', '--resnet_depth=18', f'--width_multiplier={p["width"]}',
            '--seed=0', '--export_at_end=false', '--log_every_steps=50', '--proj_out_dim=128', '--num_proj_layers=3',
            f'--precision={p["precision"]}']
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
  pretraining.run()
  if options.until == 'pretrain':
    return


if __name__ == '__main__':
  main()
