"""The stages the CIFAR-10 studies share (experiments/cifar10_semisup.py, cifar10_pretraining_curve.py,
cifar10_width_study.py, quickstart_steps.py): Chain (run.py commands as stages, skipped when done, kept in a ledger
in git), the grid search on a validation split, the tuning split, checkpoint copies, stopping with the run, and the
report's grid tables. Imported as `from experiments import stages` by the drivers, which run from the repository
root as modules (python -m experiments.<driver>).
"""

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRACTIONS = {'1pct': 0.01, '10pct': 0.1}


def link_subset(data_dir, out_dir, train_per_class, test_per_class):
  """OUT/data/{train,test}/<class>/ with symlinks to the first images of each class (nothing copied)."""
  target = os.path.join(out_dir, 'data')
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for cls in sorted(os.listdir(os.path.join(data_dir, split))):
      link_files(os.path.join(data_dir, split, cls), sorted(os.listdir(os.path.join(data_dir, split, cls)))[:count],
                 os.path.join(target, split, cls))
  return target


def link_files(source_dir, names, target_dir):
  os.makedirs(target_dir, exist_ok=True)
  for name in names:
    link = os.path.join(target_dir, name)
    if not os.path.lexists(link):
      os.symlink(os.path.abspath(os.path.join(source_dir, name)), link)


def tuning_split(data_dir, out, val_fraction):
  """OUT/tuning_data/{train,val}/<class>/: the last `val_fraction` of each class's training images (in name order)
  are the validation split, the others its training split (links, nothing copied)."""
  target = os.path.join(out, 'tuning_data')
  for cls in sorted(os.listdir(os.path.join(data_dir, 'train'))):
    folder = os.path.join(data_dir, 'train', cls)
    names = sorted(os.listdir(folder))
    cut = len(names) - max(1, int(round(len(names) * val_fraction)))
    link_files(folder, names[:cut], os.path.join(target, 'train', cls))
    link_files(folder, names[cut:], os.path.join(target, 'val', cls))
  return target


class Chain:
  """Runs stages as run.py commands under `out`, skipping those already done; keeps their timings.

  With a `ledger` directory, every finished stage is also recorded there: its stage.json, config.json, metrics and
  result files (a few KB), and with `keep_checkpoint` its last checkpoint. A stage recorded in the ledger is not
  run again, even with a new `out` on another machine: its files are copied back. Committed with the results, the
  ledger lets a chain longer than one machine's life go on where it stopped. `also_from`: ledgers of other chains
  whose stages count as done here when their settings are the same (read only; what is taken from them is
  recorded in `ledger` too). A `resumable` stage (one longer than a session) keeps its newest checkpoint in
  LEDGER/in_progress/NAME while it runs, and a new machine resumes it from there. `run_flags`: run.py flags for how
  this machine runs a stage, not what it trains (--num_threads): added to every command, never to its settings."""

  KEPT = ('config.json', 'metrics.jsonl')  # with the result file, and stage.json last
  POLL_SECONDS = 15

  def __init__(self, out, commit, ledger=None, also_from=(), run_flags=()):
    self.out = out
    self.run_flags = list(run_flags)
    self.commit = commit
    self.ledger = ledger
    self.also_from = tuple(also_from)
    self.timings = {}
    self.places = {}  # stage name -> its model_dir, where it is not OUT/name (place())

  def place(self, name, model_dir):
    """Stage `name` runs in `model_dir` instead of OUT/name (a command whose folder is part of it, as the
    README's are)."""
    self.places[name] = model_dir

  def model_dir_of(self, name):
    return self.places.get(name, os.path.join(self.out, name))

  def ledger_record(self, name):
    """The ledger's stage.json of stage `name` (None without a ledger)."""
    return self.ledger and os.path.join(self.ledger, name, 'stage.json')

  def recorded(self, name):
    """Whether the ledger holds stage `name` as finished."""
    return bool(self.ledger) and os.path.exists(self.ledger_record(name))

  def record_elsewhere(self, name, args):
    """The folder of stage `name` in one of the `also_from` ledgers, recorded there with the same settings."""
    for ledger in self.also_from:
      record = os.path.join(ledger, name, 'stage.json')
      if os.path.exists(record) and settings(json.load(open(record))['args']) == settings(args):
        return os.path.dirname(record)
    return None

  def stage_seconds(self, name):
    """How long finished stage `name` took (its record here or in the ledger), or None."""
    for record in (os.path.join(self.model_dir_of(name), 'stage.json'), self.ledger_record(name)):
      if record and os.path.exists(record):
        return json.load(open(record))['seconds']
    return None

  def finished(self, name):
    return os.path.exists(os.path.join(self.model_dir_of(name), 'stage.json')) or self.recorded(name)

  def in_progress(self, name):
    """Where the ledger keeps the newest checkpoint of resumable stage `name` while it is not finished."""
    return self.ledger and os.path.join(self.ledger, 'in_progress', name)

  def forget(self, name):
    """Runs stage `name` again, from an empty model_dir, next time it is asked for (its record in the ledger goes
    too)."""
    shutil.rmtree(self.model_dir_of(name), ignore_errors=True)
    if self.recorded(name):
      os.remove(self.ledger_record(name))
    if self.ledger:
      shutil.rmtree(self.in_progress(name), ignore_errors=True)

  def run(self, name, args, result=None, may_fail=False, keep_checkpoint=False, resumable=False):
    """Runs `run.py --model_dir=OUT/name args` unless OUT/name/stage.json (or the ledger's) says it finished;
    returns the result file (model_dir/`result`) as a dict, or {}. With may_fail, a run that ends in one of
    run.py's one-line errors (exit code 2: a learning rate past the grid's edge that diverges) is recorded as such
    and returns {'failed': 2}; any other failure stops the chain (a killed run is run again next time, or, when
    `resumable`, continues from its newest checkpoint). SIGTERM or Ctrl-C to the driver stops its run too, at a
    checkpoint, and then the driver, in one line (exit_if_stopped)."""
    model_dir = self.model_dir_of(name)
    stops = []  # the signals that came while its run ran
    done = os.path.join(model_dir, 'stage.json')
    started = os.path.join(model_dir, 'stage_args.json')  # written as a run starts: a cut-short run's settings
    partial = self.in_progress(name)
    for recorded in (done, started, self.ledger_record(name), partial and os.path.join(partial, 'stage_args.json')):
      if recorded and os.path.exists(recorded) and settings(json.load(open(recorded))['args']) != settings(args):
        print(f'\n{name}: recorded with other settings, run again from the start', flush=True)
        self.forget(name)
    if not os.path.exists(done):
      source = (os.path.join(self.ledger, name) if self.recorded(name) else self.record_elsewhere(name, args))
      if source:
        copy_files(source, model_dir, sorted(os.listdir(source)))
    if not os.path.exists(done):
      if resumable and partial and os.path.isdir(partial) and not listed_checkpoints(model_dir):
        copy_files(partial, model_dir, sorted(os.listdir(partial)))
        print(f'\n{name}: resuming from the ledger\'s checkpoint of step {listed_checkpoints(model_dir)[-1]}',
              flush=True)
      cmd = [sys.executable, os.path.join(ROOT, 'run.py'), f'--model_dir={model_dir}', *args, *self.run_flags]
      os.makedirs(model_dir, exist_ok=True)
      with open(started, 'w') as f:
        json.dump({'args': args}, f, indent=1)
      print('\n$ ' + ' '.join(cmd[1:]), flush=True)
      start = time.time()
      process = subprocess.Popen(cmd, cwd=ROOT)
      with passing_stops_on(process) as stops:
        while True:
          try:
            code = process.wait(timeout=self.POLL_SECONDS if resumable and partial else None)
            break
          except subprocess.TimeoutExpired:
            keep_newest(model_dir, partial)
      if resumable and partial:
        keep_newest(model_dir, partial)  # the checkpoint a SIGTERM (a session's end) saved last
      if code:
        exit_if_stopped(name, stops, code)
      if code and not (may_fail and code == 2):  # 2: run.py's one-line errors, divergence among them
        raise subprocess.CalledProcessError(code, cmd)
      os.makedirs(model_dir, exist_ok=True)
      seconds = round(time.time() - start, 1)
      if resumable and os.path.exists(os.path.join(model_dir, 'metrics.jsonl')):
        seconds = round(training_seconds(model_dir), 1)  # over every session it took
      stage = {'seconds': seconds, 'commit': self.commit, 'args': args, 'run_flags': self.run_flags}
      with open(done, 'w') as f:
        json.dump(dict(stage, exit_code=code) if code else stage, f, indent=1)
    if self.ledger and not self.recorded(name):
      self.record(name, result, keep_checkpoint)
    if partial and os.path.isdir(partial):
      shutil.rmtree(partial)
      if not os.listdir(os.path.dirname(partial)):
        os.rmdir(os.path.dirname(partial))
    exit_if_told_to_stop(name, stops)
    stage = json.load(open(done))
    self.timings[name] = stage['seconds']
    if stage.get('exit_code'):
      return {'failed': stage['exit_code']}
    path = os.path.join(model_dir, result) if result else None
    return json.load(open(path)) if path and os.path.exists(path) else {}

  def record(self, name, result, keep_checkpoint):
    """Copies the stage's small files (and its last checkpoint) into the ledger; stage.json last, so a copy cut
    short is not taken for a finished stage."""
    model_dir, target = self.model_dir_of(name), os.path.join(self.ledger, name)
    names = [n for n in (*self.KEPT, result) if n and os.path.exists(os.path.join(model_dir, n))]
    if keep_checkpoint:
      from simclr_tf.runtime import checkpoints
      prefix = os.path.basename(checkpoints.latest_checkpoint(model_dir))
      names += [n for n in os.listdir(model_dir) if n.startswith(prefix + '.')]
      os.makedirs(target, exist_ok=True)
      with open(os.path.join(target, 'checkpoint'), 'w') as f:
        f.write(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    copy_files(model_dir, target, names + ['stage.json'])


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
  copy_files(model_dir, tmp, names + [n for n in extra if os.path.exists(os.path.join(model_dir, n))])
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


STOPS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def passing_stops_on(process):
  """While active, SIGTERM and SIGINT to this driver go on to `process`, a run.py (which saves a checkpoint and
  ends, exit code 128 + the signal), and the driver waits for it rather than leave it running on its own: stopping
  the driver stops its run as a session's end does. Yields the list of signals received."""
  received = []

  def pass_on(signum, frame):
    del frame
    received.append(signum)
    if process.poll() is None:
      process.send_signal(signum)

  previous = {sig: signal.signal(sig, pass_on) for sig in STOPS}
  try:
    yield received
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def exit_if_stopped(name, received, code):
  """Ends the driver in one line when stage `name`'s run, which failed with exit code `code`, was stopped by a
  signal, sent to the driver (`received`) or to the run itself (code 128 + the signal): the run saved a checkpoint
  and the same command continues it."""
  by_signal = [s for s in STOPS if code == 128 + s]
  if by_signal or received:
    print(f'{name}: stopped by {signal.Signals((by_signal or received)[0]).name} after its run saved a checkpoint; '
          'the same command continues it.', file=sys.stderr, flush=True)
    sys.exit(code)


def exit_if_told_to_stop(name, received):
  """Ends the driver in one line, before the next stage, when it was told to stop (`received`) as stage `name`'s
  run finished: that run is recorded first, so it is not cut."""
  if received:
    print(f'{name}: finished and recorded as {signal.Signals(received[0]).name} came; the same command goes on '
          'with the next stage.', file=sys.stderr, flush=True)
    sys.exit(128 + received[0])


def keep_newest(model_dir, target):
  """Keeps model_dir's newest complete checkpoint (with the run's config, metrics and settings) in `target`,
  replacing an older one there."""
  listed = listed_checkpoints(model_dir)
  if listed and listed_checkpoints(target)[-1:] != listed[-1:]:
    copy_checkpoint(model_dir, listed[-1], target, extra=('config.json', 'metrics.jsonl', 'stage_args.json'))


def training_seconds(model_dir):
  """The time a run spent training, from its metrics log (the last record of each step counts), whatever number
  of sessions it took."""
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    by_step = {r['step']: r for r in map(json.loads, filter(str.strip, f))}
  seconds, previous = 0.0, 0
  batch = json.load(open(os.path.join(model_dir, 'config.json')))['train_batch_size']
  for step in sorted(by_step):
    if 'images_per_second' in by_step[step]:
      seconds += (step - previous) * batch / by_step[step]['images_per_second']
      previous = step
  return seconds


PATH_FLAGS = ('--data_dir', '--checkpoint', '--teacher')  # where things are, which moves with --out
# How often a run saves changes nothing it computes (a resumed run continues exactly): a stage may save more often
# than the record it is compared with.
CADENCE_FLAGS = ('--checkpoint_epochs', '--checkpoint_steps', '--keep_checkpoint_max')
# How this machine computes, not what: threads, and the precision (float32 and mixed_bfloat16 train the same network
# with the same recipe, and their checkpoints are interchangeable; bfloat16 is faster on CPUs with AVX512_BF16 and
# emulated, 8x slower, elsewhere). A stage's record keeps the ones it ran with (`run_flags`).
MACHINE_FLAGS = ('--num_threads', '--precision')


def settings(args):
  """A stage's run.py arguments without the paths and the checkpoint cadence: what must match for a recorded stage
  to stand."""
  return sorted(a for a in args if a.split('=', 1)[0] not in PATH_FLAGS + CADENCE_FLAGS + MACHINE_FLAGS)


def copy_files(source_dir, target_dir, names):
  os.makedirs(target_dir, exist_ok=True)
  for name in names:
    shutil.copyfile(os.path.join(source_dir, name), os.path.join(target_dir, name))


def tag_of(lr, crop, epochs):
  return f'lr{lr:g}_crop{crop:g}_ep{epochs}'


def setting_of(tag):
  """tag_of's (learning rate, crop's minimum area, epochs)."""
  lr, crop, epochs = re.fullmatch(r'lr(.+)_crop(.+)_ep(\d+)', tag).groups()
  return float(lr), float(crop), int(epochs)


def saving_every(args, epochs):
  """args with a checkpoint every `epochs` epochs (the cadence is not part of a stage's settings)."""
  return [a for a in args if a.split('=', 1)[0] not in CADENCE_FLAGS] + [f'--checkpoint_epochs={epochs}',
                                                                         '--keep_checkpoint_max=2']


def grid_search(chain, prefix, base_args, lrs, crops, epoch_list, max_steps_out=2, resumable_after=None,
                min_gain=0.0):
  """Validation top-1 of every run, and the chosen (lr, crop, epochs).

  1. lr x crop at epoch_list[0].
  2. When the best pair lies on the grid's edge, the grid grows there: at the best crop, a learning rate 4x beyond
     the largest (or the smallest) one while that improves, up to `max_steps_out` times; then, at the best learning
     rate, the crop's minimum area 1.0 (no crop, flips only) when the largest area was best. Only along an axis with
     two or more values.
  3. The best setting at each longer epoch count while validation accuracy still improves, by more than
     `min_gain` (a smaller gain is a tie: the shorter run stays chosen and no longer one is tried).
  A setting must beat the best so far to be chosen: ties go to the earlier one. Runs longer than
  `resumable_after` epochs save a checkpoint every 5% of their epochs and continue from it on a new machine
  (Chain.run's `resumable`)."""
  scores = {}

  def score(lr, crop, epochs, may_fail=False):
    tag = tag_of(lr, crop, epochs)
    if tag not in scores:
      args = base_args + [f'--learning_rate={lr}', f'--finetune_crop_min_area={crop}', f'--train_epochs={epochs}']
      resumable = resumable_after is not None and epochs > resumable_after
      if resumable:
        args = saving_every(args, max(1, epochs // 20))
      result = chain.run(f'{prefix}_{tag}', args, 'eval_val.json', may_fail, resumable=resumable)
      scores[tag] = 0.0 if 'failed' in result else result['top1']  # failed: diverged
    return scores[tag]

  first = epoch_list[0]
  best = max(itertools.product(lrs, crops), key=lambda p: (score(p[0], p[1], first), -lrs.index(p[0])))
  best_score = score(*best, first)

  def step_out(candidates):
    nonlocal best, best_score
    for candidate in candidates:
      value = score(*candidate, first, may_fail=True)
      if value <= best_score:
        return
      best, best_score = candidate, value

  if len(lrs) > 1 and best[0] in (min(lrs), max(lrs)):
    factor = 4.0 if best[0] == max(lrs) else 0.25
    step_out([(best[0] * factor ** k, best[1]) for k in range(1, max_steps_out + 1)])
  if len(crops) > 1 and best[1] == max(crops) < 1.0:
    step_out([(best[0], 1.0)])
  chosen = first
  for epochs in epoch_list[1:]:
    value = score(*best, epochs)
    if value <= best_score + min_gain:
      break
    chosen, best_score = epochs, value
  return {'scores': scores, 'learning_rate': best[0], 'crop_min_area': best[1], 'epochs': chosen,
          'val_top1': best_score}


NUM_THREADS_HELP = ('run.py --num_threads for every stage (0: TF\'s default, every core). Two drivers side by side '
                    'on two cores (the curve\'s two parts) train faster with 1 each (docs/results.md); not part of a '
                    'stage\'s settings.')


def threads(options):
  return [f'--num_threads={options.num_threads}'] if options.num_threads else []


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


def longer_runs(t):
  """[(epochs, validation score)] of a grid search's chosen learning rate and crop, in epoch order."""
  best = (t['learning_rate'], t['crop_min_area'])
  return sorted((epochs, score) for (lr, crop, epochs), score in
                ((setting_of(tag), score) for tag, score in t['scores'].items()) if (lr, crop) == best)


def grid_tables(tuning, pct):
  """Markdown: every validation score of each grid search, its learning rate x crop grid at the first epoch count
  (the chosen pair in bold, '–' where the grid did not go, 'failed' for a run that diverged), then the longer runs
  of the best pair."""
  lines = []
  for key, t in tuning.items():
    points = {setting_of(tag): score for tag, score in t['scores'].items()}
    first = min(epochs for _, _, epochs in points)
    lrs = sorted({lr for lr, _, epochs in points if epochs == first})
    crops = sorted({crop for _, crop, epochs in points if epochs == first})
    best = (t['learning_rate'], t['crop_min_area'])

    def cell(lr, crop):
      score = points.get((lr, crop, first))
      text = '–' if score is None else 'failed' if score == 0 else pct(score)
      return f'**{text}**' if (lr, crop) == best else text

    lines += ['', f'| {key}, {first} epochs: learning rate | ' + ' | '.join(f'crop {c:g}' for c in crops) + ' |',
              '| ---: |' + ' ---: |' * len(crops)]
    lines += [f'| {lr:g} | ' + ' | '.join(cell(lr, crop) for crop in crops) + ' |' for lr in lrs]
    lines += ['', f'{key} at learning rate {best[0]:g}, crop {best[1]:g}: ' +
              ', '.join(f'{epochs} epochs {pct(score)}' for epochs, score in longer_runs(t)) +
              f' (chosen: {t["epochs"]} epochs).']
  return lines
