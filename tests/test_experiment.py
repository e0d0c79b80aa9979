"""The CIFAR-10 semi-supervised chain (experiments/cifar10_semisup.py) end to end on a few real images."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

CIFAR = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10')


@pytest.mark.skipif(not os.path.isdir(os.path.join(CIFAR, 'train')), reason='../shared/data/cifar10 not present')
def test_fast_chain_runs_every_stage(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'cifar10_semisup.py'), '--preset=fast',
                         f'--out={tmp_path}'], capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / 'results.json'))
  stages = {'supervised_1pct', 'supervised_10pct', 'pretrain', 'finetune_1pct', 'finetune_10pct', 'distill_10pct',
            'linear_eval', 'knn'}
  assert stages <= set(summary['results'])
  for stage in stages - {'knn'}:
    assert 0 <= summary['results'][stage]['top1'] <= 1 and summary['results'][stage]['num_examples'] == 100
  assert summary['results']['distill_10pct']['teacher'].startswith(str(tmp_path / 'finetune_10pct'))
  assert json.load(open(tmp_path / 'finetune_1pct' / 'label_subset.json'))['num_examples'] == 10  # 1% of 400
  assert (tmp_path / 'results.png').stat().st_size > 10000
  assert '| SimCLRv2 pretrain → fine-tune' in (tmp_path / 'results.md').read_text()
  # Nothing of the data is copied: the fast preset links into the shared folder.
  assert all(os.path.islink(os.path.join(dirpath, f)) for dirpath, _, names in os.walk(tmp_path / 'data')
             for f in names)
