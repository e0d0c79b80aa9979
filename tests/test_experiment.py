"""The CIFAR-10 semi-supervised chain (experiments/cifar10_semisup.py) end to end on a few real images, and its
choice of settings on the validation split."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments import cifar10_pretraining_curve, cifar10_semisup, stages

from conftest import ROOT, SHARED, needs_shared

CIFAR = os.path.join(SHARED, 'data', 'cifar10')


@needs_shared('data/cifar10/train', 'The CIFAR-10 chain\'s fast preset (real data)')
def test_fast_chain_runs_every_stage(tmp_path, tmp_path_factory):
  ledger = tmp_path_factory.mktemp('ledger')
  base = [sys.executable, '-m', 'experiments.cifar10_semisup', '--preset=fast',
          f'--data_dir={CIFAR}']
  command = base + [f'--out={tmp_path}', f'--ledger={ledger}']
  proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / 'results.json'))
  stages = {'supervised_1pct', 'supervised_10pct', 'finetune_m64_1pct', 'finetune_m64_10pct', 'distill_m64_10pct',
            'linear_m64', 'knn_m64'}
  assert set(summary['results']) == stages
  for stage in stages:
    assert 0 <= summary['results'][stage]['top1'] <= 1 and summary['results'][stage]['num_examples'] == 100
  assert summary['results']['distill_m64_10pct']['teacher'].startswith(str(tmp_path / 'finetune_m64_10pct'))
  assert json.load(open(tmp_path / 'finetune_m64_1pct' / 'label_subset.json'))['num_examples'] == 10  # of 400
  # Pretraining used the memory; the settings were chosen on the validation split carved from the training images.
  pretrain_config = json.load(open(tmp_path / 'pretrain_m64' / 'config.json'))
  assert pretrain_config['memory_size'] == 64
  assert set(summary['tuning']) == {'supervised_1pct', 'supervised_10pct', 'finetune_m64_1pct', 'finetune_m64_10pct'}
  tuned = tmp_path / 'tune' / 'supervised_10pct_lr0.2_crop0.35_ep1'
  assert json.load(open(tuned / 'eval_val.json'))['num_examples'] == 100  # 10 of each class's 40 images
  assert json.load(open(tuned / 'config.json'))['finetune_crop_min_area'] == 0.35
  assert (tmp_path / 'results.png').stat().st_size > 10000
  assert '| Supervised only (tuned)' in (tmp_path / 'results.md').read_text()
  # Nothing of the data is copied: both the subset and the tuning split are links.
  for folder in ('data', 'tuning_data'):
    assert all(os.path.islink(os.path.join(dirpath, f)) for dirpath, _, names in os.walk(tmp_path / folder)
               for f in names)
  linked = lambda split: {os.path.realpath(os.path.join(dirpath, f))
                          for dirpath, _, names in os.walk(tmp_path / 'tuning_data' / split) for f in names}
  train, val = linked('train'), linked('val')
  assert len(train) == 300 and len(val) == 100 and not train & val

  # A second run finds every stage done and only writes the report again.
  again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert again.returncode == 0 and '$ ' not in again.stdout, again.stdout[-2000:]

  # The ledger holds every stage's small files, and the pretraining's last checkpoint (nothing else's).
  last = open(tmp_path / 'pretrain_m64' / 'checkpoint').readline().split('"')[1]
  assert sorted(os.listdir(ledger / 'pretrain_m64')) == [
      'checkpoint', f'{last}.data-00000-of-00001', f'{last}.index', 'config.json', 'metrics.jsonl', 'stage.json']
  assert (ledger / 'tune' / 'supervised_10pct_lr0.2_crop0.35_ep1' / 'eval_val.json').exists()
  assert not [n for n in os.listdir(ledger / 'finetune_m64_10pct') if n.startswith('ckpt')]
  # On another machine (a new --out), the chain goes on from the ledger: what the ledger lacks runs again. The
  # distillation's student starts from the pretraining's checkpoint (restored from the ledger), and its teacher,
  # whose checkpoint is not kept, is trained again first.
  shutil.rmtree(ledger / 'distill_m64_10pct')
  elsewhere = tmp_path_factory.mktemp('elsewhere')
  moved = subprocess.run(base + [f'--out={elsewhere}', f'--ledger={ledger}'], capture_output=True,
                         text=True, cwd=ROOT, timeout=900)
  assert moved.returncode == 0, moved.stderr[-3000:]
  ran = [line.split('--model_dir=')[1].split()[0] for line in moved.stdout.splitlines() if line.startswith('$ ')]
  assert ran == [str(elsewhere / s) for s in ('finetune_m64_10pct', 'distill_m64_10pct')]
  moved_summary = json.load(open(elsewhere / 'results.json'))
  for stage in ('finetune_m64_10pct', 'distill_m64_10pct'):  # the same runs from the same checkpoints
    assert moved_summary['results'][stage]['top1'] == summary['results'][stage]['top1']
  assert moved_summary['results']['knn_m64'] == summary['results']['knn_m64']  # restored from the ledger
  assert moved_summary['tuning'] == summary['tuning']


class FakeChain:
  """Validation accuracies by setting, instead of runs."""

  def __init__(self, scores):
    self.scores, self.ran = scores, []

  def run(self, name, args, result=None, may_fail=False, resumable=False):
    values = dict(a[2:].split('=') for a in args if a.startswith('--'))
    key = (float(values['learning_rate']), float(values['finetune_crop_min_area']), int(values['train_epochs']))
    self.ran.append(key)
    if self.scores[key] == 'diverged':
      assert may_fail
      return {'failed': 2}
    return {'top1': self.scores[key]}


def test_the_grid_takes_the_best_pair_then_trains_longer_while_validation_improves():
  grid = stages.grid_search
  scores = {(lr, crop, 10): 0.1 for lr in (0.1, 0.4) for crop in (0.08, 0.35)}
  scores.update({(0.4, 0.35, 10): 0.5, (0.4, 0.35, 30): 0.6, (0.4, 0.35, 90): 0.55, (0.4, 0.35, 270): 0.9})
  scores.update({(1.6, 0.35, 10): 0.45, (0.4, 1.0, 10): 0.5})  # past the edges: worse, then a tie
  chain = FakeChain(scores)
  chosen = grid(chain, 'tune/x', [], (0.1, 0.4), (0.08, 0.35), (10, 30, 90, 270))
  assert (chosen['learning_rate'], chosen['crop_min_area'], chosen['epochs']) == (0.4, 0.35, 30)
  assert chosen['val_top1'] == 0.6 and (0.4, 0.35, 270) not in chain.ran  # stops at the first step that is worse
  assert (1.6, 0.35, 10) in chain.ran and (6.4, 0.35, 10) not in chain.ran  # one step out, worse: no second
  assert len(chain.ran) == len(set(chain.ran))  # no setting runs twice
  # A longer run's gain under min_gain is a tie: the shorter run stays chosen and nothing longer is tried.
  scores[(0.4, 0.35, 90)] = 0.604
  chain = FakeChain(scores)
  chosen = grid(chain, 'tune/x', [], (0.1, 0.4), (0.08, 0.35), (10, 30, 90, 270), min_gain=0.005)
  assert (chosen['epochs'], chosen['val_top1']) == (30, 0.6) and (0.4, 0.35, 270) not in chain.ran
  chosen = grid(FakeChain(scores), 'tune/x', [], (0.1, 0.4), (0.08, 0.35), (10, 30, 90, 270), min_gain=0.003)
  assert chosen['epochs'] == 270
  # Ties go to the smaller learning rate; the smallest one was best, so a 4x smaller one is tried (and ties).
  chain = FakeChain({(lr, 0.08, 5): 0.3 for lr in (0.025, 0.1, 0.4)})
  assert grid(chain, 'tune/y', [], (0.1, 0.4), (0.08,), (5,))['learning_rate'] == 0.1
  assert (0.025, 0.08, 5) in chain.ran


def test_the_grid_grows_past_its_edge_while_that_improves():
  grid = stages.grid_search
  scores = {(lr, crop, 20): 0.2 for lr in (0.2, 0.8) for crop in (0.35, 0.7)}
  scores.update({(0.8, 0.7, 20): 0.6, (3.2, 0.7, 20): 0.65, (12.8, 0.7, 20): 0.7, (12.8, 1.0, 20): 0.72,
                 (12.8, 1.0, 60): 0.71})
  chain = FakeChain(scores)
  chosen = grid(chain, 'tune/z', [], (0.2, 0.8), (0.35, 0.7), (20, 60), max_steps_out=2)
  assert (chosen['learning_rate'], chosen['crop_min_area'], chosen['epochs']) == (12.8, 1.0, 20)
  assert chosen['val_top1'] == 0.72 and (51.2, 0.7, 20) not in chain.ran  # at most max_steps_out steps
  # A step out that diverges ends the growth; the best so far stays.
  scores.update({(12.8, 0.7, 20): 'diverged', (3.2, 1.0, 20): 0.6})
  chain = FakeChain(scores)
  chosen = grid(chain, 'tune/v', [], (0.2, 0.8), (0.35, 0.7), (20,), max_steps_out=2)
  assert (chosen['learning_rate'], chosen['crop_min_area']) == (3.2, 0.7)
  assert chosen['scores']['lr12.8_crop0.7_ep20'] == 0
  # An axis with one value does not grow (the fast preset).
  chain = FakeChain({(0.2, 0.35, 1): 0.5})
  assert grid(chain, 'tune/w', [], (0.2,), (0.35,), (1,))['learning_rate'] == 0.2 and len(chain.ran) == 1


def test_a_run_that_may_fail_is_recorded_as_failed_and_not_run_again(tmp_path):
  chain = stages.Chain(str(tmp_path), 'test')
  bad = ['--image_size=4', '--train_steps=1']  # a one-line error of run.py (exit code 2)
  with pytest.raises(subprocess.CalledProcessError):
    chain.run('strict', bad)
  assert not os.path.exists(tmp_path / 'strict' / 'stage.json')  # run again next time
  assert chain.run('lenient', bad, may_fail=True) == {'failed': 2}
  assert json.load(open(tmp_path / 'lenient' / 'stage.json'))['exit_code'] == 2
  assert chain.run('lenient', ['--no_such_flag'], may_fail=True) == {'failed': 2}  # recorded: not run again


def test_the_report_shows_every_grid_point():
  pairs = [(0.05, 0.35), (0.05, 0.7), (0.2, 0.35), (0.2, 0.7), (0.8, 0.7)]
  scores = {stages.tag_of(lr, crop, 20): 0.1 * i for i, (lr, crop) in enumerate(pairs, start=1)}  # 0.1 to 0.5
  scores[stages.tag_of(0.2, 1.0, 20)] = 0.0  # diverged: grid_search scores a failed run 0
  scores.update({stages.tag_of(0.8, 0.7, 60): 0.55, stages.tag_of(0.8, 0.7, 180): 0.5})
  tuning = {'supervised_10pct': {'scores': scores, 'learning_rate': 0.8, 'crop_min_area': 0.7, 'epochs': 60,
                                 'val_top1': 0.55}}
  lines = stages.grid_tables(tuning, lambda v: f'{100 * v:.1f}')
  assert lines[1:] == [
      '| supervised_10pct, 20 epochs: learning rate | crop 0.35 | crop 0.7 | crop 1 |',
      '| ---: | ---: | ---: | ---: |',
      '| 0.05 | 10.0 | 20.0 | – |',
      '| 0.2 | 30.0 | 40.0 | failed |',
      '| 0.8 | – | **50.0** | – |',
      '',
      'supervised_10pct at learning rate 0.8, crop 0.7: 20 epochs 50.0, 60 epochs 55.0, 180 epochs 50.0 '
      '(chosen: 60 epochs).']


def test_the_report_says_each_result_against_what_it_is_measured_by(tmp_path):
  """Fine-tuning is measured against the supervised baseline at the same label fraction, the distilled student
  against its teacher (the fine-tuned 10% model of its arm)."""
  results = {'supervised_1pct': {'top1': 0.422}, 'supervised_10pct': {'top1': 0.74, 'num_examples': 10000},
             'finetune_m0_1pct': {'top1': 0.515}, 'finetune_m0_10pct': {'top1': 0.707},
             'distill_m0_10pct': {'top1': 0.716}, 'linear_m0': {'top1': 0.511}, 'knn_m0': {'top1': 0.5213}}
  tuning = {'supervised_1pct': {'scores': {stages.tag_of(0.8, 0.7, 900): 0.42}, 'learning_rate': 0.8,
                                'crop_min_area': 0.7, 'epochs': 900, 'val_top1': 0.42}}
  preset = dict(cifar10_semisup.PRESETS['full'], memory_sizes=(0,))
  options = type('Options', (), {'preset': 'full', 'data_dir': 'data'})
  cifar10_semisup.write_report(str(tmp_path), options, preset, {'results': results, 'tuning': tuning}, {'x': 60}, 'abc')
  lines = (tmp_path / 'results.md').read_text().splitlines()
  assert lines[2:5] == ['| Supervised only (tuned) | 42.2 | 74.0 |',
                        '| SimCLRv2, no memory: pretrain → fine-tune | 51.5 (+9.3) | 70.7 (-3.3) |',
                        '| SimCLRv2, no memory: + self-distillation | – | 71.6 (+0.9 on its teacher) |']
  assert '| no memory | 51.1 | 52.1 |' in lines
  assert (tmp_path / 'results.png').exists()


def test_a_stage_recorded_with_other_settings_runs_again(tmp_path, capsys):
  """A stage is known by its name; when the driver now asks it with other settings (say, more epochs), the record
  does not stand and the stage runs again. Paths may differ: a chain moved to a new --out keeps its stages."""
  ledger = tmp_path / 'ledger'
  chain = stages.Chain(str(tmp_path / 'out'), 'test', str(ledger))
  bad = ['--image_size=4', '--train_steps=1', f'--data_dir={tmp_path}/a']  # exits with a one-line error (2)
  ran = lambda: capsys.readouterr().out.count('\n$ ')
  assert chain.run('stage', bad, may_fail=True) == {'failed': 2} and ran() == 1
  assert chain.run('stage', bad, may_fail=True) == {'failed': 2} and ran() == 0
  moved = stages.Chain(str(tmp_path / 'elsewhere'), 'test', str(ledger))
  assert moved.run('stage', bad[:2] + [f'--data_dir={tmp_path}/elsewhere/a'], may_fail=True) == {'failed': 2}
  assert ran() == 0  # restored from the ledger
  other = ['--image_size=4', '--train_steps=2', f'--data_dir={tmp_path}/a']
  assert chain.run('stage', other, may_fail=True) == {'failed': 2} and ran() == 1
  for record in (tmp_path / 'out' / 'stage' / 'stage.json', ledger / 'stage' / 'stage.json'):
    assert json.load(open(record))['args'] == other
  # A run cut short (no stage.json) whose settings have changed since starts again from an empty model_dir, rather
  # than resuming its checkpoints under the new settings.
  (tmp_path / 'out' / 'cut').mkdir()
  (tmp_path / 'out' / 'cut' / 'stage_args.json').write_text(json.dumps({'args': bad}))
  (tmp_path / 'out' / 'cut' / 'ckpt-5.index').write_text('')
  assert chain.run('cut', other, may_fail=True) == {'failed': 2} and ran() == 1
  assert not (tmp_path / 'out' / 'cut' / 'ckpt-5.index').exists()


@pytest.mark.parametrize('name', ['cifar10_semisup', 'cifar10_pretraining_curve', 'cifar10_width_study',
                                  'quickstart_steps'])
def test_a_driver_run_as_a_file_says_how_to_run_it(name):
  done = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', f'{name}.py'), '--help'],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 1 and done.stderr.splitlines() == [
      f'error: run it from the repository root as a module: python -m experiments.{name} ...']


@needs_shared('data/cifar10/train', 'The width study\'s fast preset (real data)')
def test_the_width_study_evaluates_a_width_from_its_kept_checkpoint(tmp_path):
  """--part=evaluate refuses a width whose pretraining has not reached the epoch, then runs the curve's
  evaluations and tuned baseline at that width from the kept checkpoint, into results_e<epochs>.json."""
  base = [sys.executable, '-m', 'experiments.cifar10_width_study', '--preset=fast', f'--data_dir={CIFAR}',
          f'--out={tmp_path / "out"}', f'--ledger={tmp_path / "ledger"}', '--width=0.0625']
  early = subprocess.run(base + ['--part=evaluate'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert early.returncode == 1 and early.stderr.strip().splitlines()[-1].startswith(
      'error: the width-0.0625 pretraining has not reached epoch 1 yet'), early.stderr[-2000:]
  for part in ('pretrain', 'evaluate'):
    done = subprocess.run(base + [f'--part={part}'], capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
  report = json.load(open(tmp_path / 'out' / 'w0.0625' / 'results_e1.json'))
  assert report['width'] == 0.0625 and report['epochs'] == 1
  assert {'knn_e1', 'finetune_e1_1pct', 'finetune_e1_10pct', 'linear_e1', 'supervised_1pct',
          'supervised_10pct'} <= set(report['results'])
  for stage, result in report['results'].items():
    assert result['num_examples'] == 100 and 0 <= result.get('top1', result.get('knn_top1', 0)) <= 1, stage
  assert {'finetune_1pct', 'finetune_10pct', 'linear', 'supervised_1pct', 'supervised_10pct'} <= set(report['tuning'])
  # Every run is the width's own network, from the width's own checkpoint.
  for stage in ('finetune_e1_10pct', 'linear_e1', 'supervised_10pct'):
    config = json.load(open(tmp_path / 'out' / 'w0.0625' / stage / 'config.json'))
    assert config['width_multiplier'] == 0.0625, stage
  finetuned = json.load(open(tmp_path / 'out' / 'w0.0625' / 'finetune_e1_10pct' / 'config.json'))
  assert finetuned['checkpoint'] == str(tmp_path / 'out' / 'w0.0625' / 'pretrain_kept' / 'epoch_1')


CHAIN_LEDGER = os.path.join(ROOT, 'experiments', 'results', 'cifar10_semisup_full', 'ledger')
CURVE_LEDGER = os.path.join(ROOT, 'experiments', 'results', 'cifar10_pretraining_curve', 'ledger')


def tiny_image_folder(root):
  for cls in ('a', 'b'):
    os.makedirs(root / 'train' / cls)
    for i in range(10):
      (root / 'train' / cls / f'{i}.png').write_bytes(b'')
  return str(root)


def full_curve_stages(tmp_path, also_from, pretraining_ledger, run_flags=()):
  """The full preset's Stages over a tiny image folder, with --out and the ledger under tmp_path, taking runs from
  the `also_from` ledger and the pretraining's record from `pretraining_ledger`."""
  curve = cifar10_pretraining_curve
  p = curve.PRESETS['full']
  chain = curve.chain_lib.Chain(str(tmp_path / 'out'), 'test', str(tmp_path / 'ledger'), also_from=[also_from],
                                run_flags=run_flags)
  pretraining = type('Pretraining', (), {'model_dir': str(tmp_path / 'out' / 'pretrain'),
                                         'ledger_dir': pretraining_ledger})
  return curve.Stages(chain, p, tiny_image_folder(tmp_path / 'data'), curve.common_args(p),
                      {e: f'kept/{e}' for e in p['kept_epochs']}, pretraining)


def test_the_curve_takes_the_chains_baseline_runs_and_waits_for_the_pretrainings_clock(tmp_path, capsys):
  """The curve's supervised baseline is the committed chain's: its grid points are taken from the chain's ledger
  (same settings, nothing run), and a run past the chain's longest waits until the pretraining's clock allows it."""
  stages = full_curve_stages(tmp_path, CHAIN_LEDGER, str(tmp_path / 'ledger' / 'pretrain'))
  first = stages.baseline_tuning('10pct', extend=False)
  assert '$ ' not in capsys.readouterr().out  # nothing ran
  assert (first['learning_rate'], first['crop_min_area'], round(first['val_top1'], 3)) == (0.8, 0.7, 0.66)
  # Taken into this chain's own ledger too.
  assert (tmp_path / 'ledger' / 'tune' / 'supervised_10pct_lr0.8_crop0.7_ep20' / 'eval_val.json').exists()
  # At 10% the chain's longest run (540 epochs) still improved: the next one waits for the pretraining's clock.
  assert stages.baseline_tuning('10pct') is None
  assert 'waits for the pretraining' in capsys.readouterr().out
  # At 1% the chain's grid stopped improving before its longest run: its choice stands.
  assert stages.baseline_tuning('1pct')['epochs'] == 900
  # The clock is the pretraining's record, here or (on a new machine) in the ledger; before it ends, its metrics.
  os.makedirs(tmp_path / 'ledger' / 'pretrain' / 'latest')
  (tmp_path / 'ledger' / 'pretrain' / 'latest' / 'config.json').write_text(json.dumps({'train_batch_size': 128}))
  (tmp_path / 'ledger' / 'pretrain' / 'latest' / 'metrics.jsonl').write_text(
      json.dumps({'step': 100, 'images_per_second': 64.0}) + '\n')
  assert stages.pretraining_seconds() == (200.0, False)
  (tmp_path / 'ledger' / 'pretrain' / 'stage.json').write_text(json.dumps({'seconds': 15000.0}))
  assert stages.pretraining_seconds() == (15000.0, True)


def test_the_curves_baseline_stops_where_a_longer_run_gains_less_than_half_a_point(tmp_path, capsys):
  """The curve's own ledger: at 10% labels the 1,620-epoch run gained 0.2 points of validation top-1 over the
  540-epoch one, within the noise of 5,000 images: a tie, so 540 epochs stay chosen and no longer run is tried. At
  1% the 2,700-epoch run was worse than 900 epochs: 900 stay chosen."""
  stages = full_curve_stages(tmp_path, CURVE_LEDGER, os.path.join(CURVE_LEDGER, 'pretrain'),
                             run_flags=['--no_such_flag'])  # a run that starts ends in an error at once
  ten = stages.baseline_tuning('10pct')
  assert (ten['learning_rate'], ten['crop_min_area'], ten['epochs'], ten['val_top1']) == (0.8, 0.7, 540, 0.764)
  assert round(ten['scores']['lr0.8_crop0.7_ep1620'] - ten['val_top1'], 4) == 0.0022
  assert 'lr0.8_crop0.7_ep5140' not in ten['scores']
  assert stages.baseline_tuning('1pct')['epochs'] == 900
  assert '$ ' not in capsys.readouterr().out  # every run taken from the ledger


def test_the_students_part_waits_for_its_teacher(tmp_path):
  """--part=students (the distillations, the other seeds) needs the 10% fine-tuning of the longest pretraining:
  without it, one line saying so, and nothing started (no pretraining from a second process)."""
  data = tiny_image_folder(tmp_path / 'data')
  command = [sys.executable, '-m', 'experiments.cifar10_pretraining_curve', f'--data_dir={data}',
             f'--out={tmp_path / "out"}', f'--ledger={tmp_path / "ledger"}', '--part=students']
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert done.returncode == 1 and done.stderr.splitlines() == [
      'error: --part=students needs finetune_e100_10pct (the distillations\' teacher) done: run --part=pretrained '
      'until it is (or --part=all).']
  assert sorted(os.listdir(tmp_path / 'out')) == []
  # With the teacher recorded, the part goes on to the pretraining's checkpoints (here: its settings' check).
  os.makedirs(tmp_path / 'ledger' / 'finetune_e100_10pct')
  (tmp_path / 'ledger' / 'finetune_e100_10pct' / 'stage.json').write_text(json.dumps({'seconds': 1.0}))
  os.makedirs(tmp_path / 'ledger' / 'pretrain')
  (tmp_path / 'ledger' / 'pretrain' / 'stage.json').write_text(json.dumps({'args': ['--other']}))
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert done.returncode == 1 and 'records the long pretraining with other settings' in done.stderr
  # Each part runs its own stages only; all of them, in order, make the report's input.
  curve, ran = cifar10_pretraining_curve, []
  stub = type('Stages', (), {'tuned': {'t': 1}, 'results': {'r': 2}, 'evaluations': lambda s: ran.append('e'),
                             'students': lambda s: ran.append('s'), 'baseline': lambda s: ran.append('b') or {}})()
  assert curve.Stages.all(stub, curve.PARTS['students']) == {'tuning': {'t': 1}, 'results': {'r': 2}}
  assert ran == ['s']
  assert curve.Stages.all(stub, curve.PARTS['all']) is not None and ran == ['s', 'e', 's', 'b']
  stub.baseline = lambda: None  # waiting for the pretraining's clock: no report yet
  assert curve.Stages.all(stub, curve.PARTS['baseline']) is None


def test_the_baselines_epochs_grow_threefold_within_the_clock():
  curve = cifar10_pretraining_curve
  listed = (20, 60, 180, 540)
  assert curve.extended_epochs(listed, 5.0, 30_000) == (20, 60, 180, 540, 1620, 6000)
  # A cut run barely longer than the extension before it: that extension goes to the clock instead.
  assert curve.extended_epochs(listed, 5.0, 10_000) == (20, 60, 180, 540, 2000)
  # The curve's own numbers: the 540-epoch run's seconds per epoch, the pretraining's clock plus its fine-tuning.
  assert curve.extended_epochs(listed, 5.128, 26_362) == (20, 60, 180, 540, 1620, 5140)
  # The chain's own runs are never changed.
  assert curve.extended_epochs(listed, 5.0, 3_000) == (20, 60, 180, 540, 600)
  assert curve.extended_epochs(listed, 5.0, 2_000) == listed
  assert curve.extended_epochs(listed, 5.0, 0) == listed


FAKE_RUN = '''import json, os, sys
args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
model_dir, steps = args['model_dir'], int(args['train_steps'])
state = os.path.join(model_dir, 'checkpoint')
start = int(open(state).readline().split('"')[1].split('-')[1]) if os.path.exists(state) else 0
with open(os.path.join(model_dir, 'started_at'), 'a') as f:
  f.write(f'{start}:{args.get("num_threads", "-")}\\n')
stop = min(steps, start + 2)  # two steps per session: then "the session ends" (SIGTERM's exit code)
for name in ('index', 'data-00000-of-00001'):
  open(os.path.join(model_dir, f'ckpt-{stop}.{name}'), 'w').write(str(stop))
open(state, 'w').write(f'model_checkpoint_path: "ckpt-{stop}"\\nall_model_checkpoint_paths: "ckpt-{stop}"\\n')
json.dump({'top1': 0.5, 'step': stop}, open(os.path.join(model_dir, 'eval_val.json'), 'w'))
json.dump({'train_batch_size': 1}, open(os.path.join(model_dir, 'config.json'), 'w'))
with open(os.path.join(model_dir, 'metrics.jsonl'), 'a') as f:
  f.write(json.dumps({'step': stop, 'images_per_second': 1.0}) + '\\n')
sys.exit(0 if stop == steps else 143)
'''


def test_a_resumable_stage_goes_on_from_the_ledger_on_a_new_machine(tmp_path, monkeypatch):
  """A stage longer than a session keeps its newest checkpoint in LEDGER/in_progress/NAME; cut short, it resumes
  from there on a new machine (a new --out), and once finished it is recorded and its in-progress copy removed.
  (run.py's own resume is proven in tests/modes; here a stand-in run.py saves two steps per session.)"""
  fake_root = tmp_path / 'root'
  fake_root.mkdir()
  (fake_root / 'run.py').write_text(FAKE_RUN)
  monkeypatch.setattr(stages, 'ROOT', str(fake_root))
  monkeypatch.setattr(stages.Chain, 'POLL_SECONDS', 0.1)
  ledger = tmp_path / 'ledger'
  args = ['--train_steps=5', '--checkpoint_epochs=1']
  for session in range(2):
    chain = stages.Chain(str(tmp_path / f'machine{session}'), 'test', str(ledger))
    with pytest.raises(SystemExit) as stopped:
      chain.run('long', args, 'eval_val.json', resumable=True)
    assert stopped.value.code == 143  # the run's own: stopped by SIGTERM, the driver too
    assert stages.listed_checkpoints(ledger / 'in_progress' / 'long') == [2 * (session + 1)]
  # The checkpoint cadence is not part of the settings: a different one still continues the run; nor is how a
  # machine runs it (its threads).
  chain = stages.Chain(str(tmp_path / 'machine2'), 'test', str(ledger), run_flags=['--num_threads=1'])
  assert chain.run('long', args[:1] + ['--checkpoint_epochs=5'], 'eval_val.json', resumable=True)['step'] == 5
  assert [(tmp_path / f'machine{m}' / 'long' / 'started_at').read_text().split() for m in range(3)] == [
      ['0:-'], ['2:-'], ['4:1']]
  assert not (ledger / 'in_progress' / 'long').exists() and (ledger / 'long' / 'stage.json').exists()
  assert json.load(open(ledger / 'long' / 'stage.json'))['seconds'] == 5.0  # over the three sessions
  assert not any('num_threads' in a for a in json.load(open(ledger / 'long' / 'stage.json'))['args'])
  # Other settings: the kept checkpoint is not resumed.
  with pytest.raises(SystemExit):
    stages.Chain(str(tmp_path / 'machine3'), 'test', str(ledger)).run('other', args, resumable=True)
  with pytest.raises(SystemExit):
    stages.Chain(str(tmp_path / 'machine4'), 'test', str(ledger)).run('other', ['--train_steps=9'], resumable=True)
  assert (tmp_path / 'machine4' / 'other' / 'started_at').read_text().split() == ['0:-']


WAITING_RUN = '''import os, signal, sys, time
args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
model_dir = args['model_dir']
def save(step):
  for name in ('index', 'data-00000-of-00001'):
    open(os.path.join(model_dir, f'ckpt-{step}.{name}'), 'w').write(str(step))
  with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
    f.write(f'model_checkpoint_path: "ckpt-{step}"\\nall_model_checkpoint_paths: "ckpt-{step}"\\n')
save(1)
stops = []
signal.signal(signal.SIGTERM, lambda signum, frame: stops.append(signum))
open(os.path.join(model_dir, 'pid'), 'w').write(str(os.getpid()))
deadline = time.time() + 30
while not stops and time.time() < deadline:
  time.sleep(0.05)
save(2)  # as run.py does when told to stop: a checkpoint of the step reached, exit code 128 + the signal
sys.exit(128 + stops[0] if stops and args['train_steps'] != '2' else 0)  # or it had just reached its last step
'''

DRIVER = '''import sys
from experiments import stages as chain
chain.ROOT, chain.Chain.POLL_SECONDS = sys.argv[1], 0.1
chain.Chain(sys.argv[2], 'test', sys.argv[3]).run('long', sys.argv[4:], 'eval_val.json', resumable=True)
print('went on')
'''


@pytest.mark.parametrize('steps', [9, 2])
def test_stopping_the_driver_stops_its_run_at_a_checkpoint_kept_in_the_ledger(tmp_path, steps):
  """SIGTERM to the driver (a session's end, `kill`) goes on to its run.py, which saves and ends; the driver keeps
  that checkpoint in the ledger and ends in one line with the run's exit code, leaving no run behind it. A run that
  finished as the signal came (2 steps) is recorded first, and the driver ends before the next stage. (A stand-in
  run.py waits for the signal; run.py's own stop and exact resume are proven in tests/modes.)"""
  fake_root, out, ledger = tmp_path / 'root', tmp_path / 'out', tmp_path / 'ledger'
  fake_root.mkdir()
  (fake_root / 'run.py').write_text(WAITING_RUN)
  (tmp_path / 'driver.py').write_text(DRIVER)
  process = subprocess.Popen([sys.executable, str(tmp_path / 'driver.py'), str(fake_root), str(out), str(ledger),
                              f'--train_steps={steps}'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
  pid = out / 'long' / 'pid'
  for _ in range(600):
    if pid.exists() or process.poll() is not None:
      break
    time.sleep(0.05)
  assert pid.exists(), process.communicate()
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=30)
  assert process.returncode == 143, stderr
  assert 'Traceback' not in stderr and 'went on' not in stdout
  with pytest.raises(ProcessLookupError):  # the run ended (and was waited for) before the driver did
    os.kill(int(pid.read_text()), 0)
  if steps == 9:
    assert stderr.strip().splitlines()[-1] == ('long: stopped by SIGTERM after its run saved a checkpoint; the same '
                                               'command continues it.')
    assert stages.listed_checkpoints(ledger / 'in_progress' / 'long') == [2]
    assert not (ledger / 'long').exists()
  else:
    assert stderr.strip().splitlines()[-1] == ('long: finished and recorded as SIGTERM came; the same command goes '
                                               'on with the next stage.')
    assert (ledger / 'long' / 'stage.json').exists() and not (ledger / 'in_progress').exists()


def test_the_curves_report_has_the_curve_the_seeds_and_the_students(tmp_path):
  curve = cifar10_pretraining_curve
  p = curve.PRESETS['full']
  results = {'supervised_1pct': {'top1': 0.42}, 'supervised_1pct_seed1': {'top1': 0.40},
             'supervised_1pct_seed2': {'top1': 0.44}, 'supervised_10pct': {'top1': 0.76},
             'supervised_10pct_seed1': {'top1': 0.76}, 'supervised_10pct_seed2': {'top1': 0.76},
             'distill_e100_10pct_self': {'top1': 0.81, 'teacher_top1': 0.8},
             'distill_e100_10pct_half': {'top1': 0.78, 'teacher_top1': 0.8}}
  for e in p['kept_epochs']:
    results.update({f'finetune_e{e}_1pct': {'top1': 0.5 + e / 1000}, f'finetune_e{e}_10pct': {'top1': 0.7 + e / 1000},
                    f'linear_e{e}': {'top1': 0.6}, f'knn_e{e}': {'top1': 0.55}})
  results.update({'finetune_e100_1pct_seed1': {'top1': 0.58}, 'finetune_e100_1pct_seed2': {'top1': 0.62},
                  'finetune_e100_10pct_seed1': {'top1': 0.8}, 'finetune_e100_10pct_seed2': {'top1': 0.8}})
  results['linear_e100_crop0.08'] = {'top1': 0.57}
  tuning = {'supervised_1pct': {'scores': {curve.chain_lib.tag_of(0.8, 0.7, 900): 0.42}, 'learning_rate': 0.8,
                                'crop_min_area': 0.7, 'epochs': 900, 'val_top1': 0.42},
            'linear': {'scores': {curve.chain_lib.tag_of(0.4, 0.7, 90): 0.6}, 'learning_rate': 0.4,
                       'crop_min_area': 0.7, 'epochs': 90, 'val_top1': 0.6}}
  curve.write_report(str(tmp_path), p, {'results': results, 'tuning': tuning}, {'x': 3600}, 'abc')
  summary = json.load(open(tmp_path / 'results.json'))
  assert summary['curve']['12'] == {'finetune_1pct': 0.512, 'finetune_10pct': 0.712, 'linear': 0.6, 'knn': 0.55}
  assert summary['seeds']['finetune_e100_1pct'] == {'top1': [0.6, 0.58, 0.62], 'mean': 0.6, 'std': 0.02}
  assert summary['results']['distill_e100_10pct_half']['teacher_top1'] == 0.8
  lines = (tmp_path / 'results.md').read_text().splitlines()
  assert '| 100 | 60.0 | 80.0 | 60.0 | 55.0 |' in lines
  assert '| SimCLRv2 fine-tuned | 60.0 ± 2.0 | 80.0 ± 0.0 |' in lines
  assert '| into width 0.125 (from scratch) | 78.0 | 80.0 |' in lines
  assert ("Linear evaluation at 100 epochs with the reference's crop (minimum area 0.08, its learning rate and length "
          "tuned at that crop): 57.0%; with the crop tuned too (minimum area 0.7): 60.0%.") in lines
  assert (tmp_path / 'results.png').stat().st_size > 10000
  # The goals, measured: 1% +18.0 (sd 2.8: not a tie), 10% +4.0 with no spread (short of +5), the students.
  assert [(g['measured'], g['met']) for g in summary['goals']] == [
      ('+18.0 ± 2.8 points (by seed, on the same labelled images: +18.0, +18.0, +18.0)', True),
      ('+4.0 ± 0.0 points (by seed, on the same labelled images: +4.0, +4.0, +4.0)', False),
      ('+1.0 points on its teacher', True),
      ('-2.0 points on its teacher', True)]
  assert summary['crossing_10pct'] == 100  # 0.7 + e/1000 reaches 0.76 only at e = 100 (0.712, 0.725, 0.75 before)
  assert ('| fine-tuning at 10% labels ≥ the tuned baseline + 5 points | +4.0 ± 0.0 points (by seed, on the same '
          'labelled images: +4.0, +4.0, +4.0) | no |') in lines
  assert any('first reaches the tuned baseline after 100 epochs' in line for line in lines)
  # Seeds that disagree more than the gap: a tie; and a curve that never reaches the baseline says so.
  results['finetune_e100_1pct_seed1'] = {'top1': 0.30}
  results['supervised_10pct'] = {'top1': 0.9}
  curve.write_report(str(tmp_path), p, {'results': results, 'tuning': tuning}, {'x': 3600}, 'abc')
  summary = json.load(open(tmp_path / 'results.json'))
  assert summary['goals'][0]['measured'] == ('+8.7 ± 18.0 points (by seed, on the same labelled images: +18.0, '
                                             '-10.0, +18.0) (a tie: under two standard deviations)')
  assert summary['crossing_10pct'] is None
  assert any('stays under the tuned baseline at every kept checkpoint up to 100' in line
             for line in (tmp_path / 'results.md').read_text().splitlines())


def table_cells(lines, label):
  """The cells (bold marks dropped) after the first of the one table row among `lines` that starts with `label`."""
  rows = [line for line in lines if line.startswith(f'| {label}')]
  assert len(rows) == 1, label
  return [cell.strip().replace('**', '') for cell in rows[0].split('|')[2:-1]]


def test_the_readme_shows_the_committed_curve():
  """The README's headline and curve tables (its Results section, above the 12-epoch chain) are the committed
  report's numbers (the curve's results.json): a new report, or an edit of the README, cannot leave them apart."""
  folder = os.path.join(ROOT, 'experiments', 'results', 'cifar10_pretraining_curve')
  report = json.load(open(os.path.join(folder, 'results.json')))
  readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  section = readme[readme.index('## Results\n'):readme.index('The first chain, with **12 epochs**')].splitlines()
  pct = lambda v: f'{100 * v:.1f}'

  cells = lambda label: table_cells(section, label)

  epochs = sorted(report['curve'], key=int)
  assert cells('pretraining epochs') == epochs
  for key, label in (('finetune_1pct', 'fine-tuned, 1% labels'), ('finetune_10pct', 'fine-tuned, 10% labels'),
                     ('linear', 'linear evaluation'), ('knn', 'kNN')):
    assert cells(label) == [pct(report['curve'][e][key]) for e in epochs], label
  longest, seeds = epochs[-1], report['seeds']
  spread = lambda key: f'{pct(seeds[key]["mean"])} ± {pct(seeds[key]["std"])}'
  assert cells('Supervised only, tuned') == [spread('supervised_1pct'), spread('supervised_10pct')]
  gaps = [100 * (seeds[f'finetune_e{longest}_{frac}']['mean'] - seeds[f'supervised_{frac}']['mean'])
          for frac in ('1pct', '10pct')]
  assert cells('SimCLRv2: pretrain → fine-tune') == [
      f'{spread(f"finetune_e{longest}_{frac}")} ({gap:+.1f})' for frac, gap in zip(('1pct', '10pct'), gaps)]
  for kind, label in (('self', 'SimCLRv2: + self-distillation'), ('half', 'SimCLRv2: + distillation into half')):
    student = report['results'][f'distill_e{longest}_10pct_{kind}']
    diff = 100 * (student['top1'] - student['teacher_top1'])
    assert cells(label)[1] == f'{pct(student["top1"])} ({diff:+.1f} on its teacher\'s {pct(student["teacher_top1"])})'


def readme_commands(readme):
  """The run.py arguments of every `python run.py ...` command in the README's code blocks (continuation lines
  joined)."""
  import shlex
  commands, blocks = [], readme.split('```')[1::2]
  for block in blocks:
    for command in block.replace('\\\n', ' ').splitlines():
      if command.strip().startswith('python run.py'):
        commands.append(shlex.split(command.split('#')[0])[2:])
  return commands


def test_the_readme_shows_the_three_steps_as_committed():
  """The README's fine-tune, distill, baseline and probe commands are the ones experiments/quickstart_steps.py ran
  (its results.json), and the figures beside them are that run's."""
  folder = os.path.join(ROOT, 'experiments', 'results', 'quickstart_steps')
  report = json.load(open(os.path.join(folder, 'results.json')))
  readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  written = [sorted(args) for args in readme_commands(readme)]
  for name, command in report['commands'].items():
    assert sorted(command.split()) in written, f'{name}: the README lacks {command}'
  section = readme[readme.index('## The three steps'):readme.index('On real data:')].splitlines()
  pct = lambda v: f'{100 * v:.1f}%'

  cells = lambda label: table_cells(section, label)

  top1 = report['top1']
  for key, label in (('probe', 'linear probe'), ('knn', 'kNN'), ('supervised', 'supervised only'),
                     ('finetune', 'fine-tuned')):
    assert cells(label) == [pct(top1[f'{key}_10pct']), pct(top1[f'{key}_1pct'])], label
  assert cells('distilled')[0] == pct(top1['distill'])
