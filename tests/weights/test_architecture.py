"""A model knows its own architecture: every mode that reads one (--checkpoint) takes it from the run's config.json,
the SavedModel's, or the reference file's variables, unless the flags say otherwise; a flag that contradicts the
file is one line naming both values."""

import os

import numpy as np
import pytest

import run as run_py
from conftest import SHARED, needs_shared, run_cli, tiny_config
from simclr_tf.errors import UserError
from simclr_tf.weights import architecture

# Where the data is and how much of it to read: no architecture flag. Without adoption these runs would build a
# ResNet-50 1x with a 128-wide head at 224 pixels, the defaults.
DATA = ['--dataset=image_folder', '--eval_batch_size=8', '--train_batch_size=8']


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, shapes_dir):
  model_dir = str(tmp_path_factory.mktemp('arch') / 'run')
  run_py.run(tiny_config(dataset='image_folder', data_dir=shapes_dir, model_dir=model_dir, train_steps=1,
                         export_at_end=True, proj_out_dim=8))
  return model_dir


def test_modes_read_the_architecture_of_the_run_and_of_its_saved_model(tmp_path, shapes_dir, pretrained):
  proc = run_cli(*DATA, f'--data_dir={shapes_dir}', '--mode=knn', f'--checkpoint={pretrained}',
                 f'--model_dir={tmp_path / "knn"}', '--knn_k=3')
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = [l for l in proc.stderr.splitlines() + proc.stdout.splitlines() if 'architecture of --checkpoint' in l]
  assert line and 'ckpt-1 (its own record)' in line[0], proc.stderr[-2000:]
  for name, value in (('resnet_depth', 18), ('width_multiplier', 0.125), ('proj_out_dim', 8), ('image_size', 32)):
    assert f'{name}={value}' in line[0]
  proc = run_cli(*DATA, f'--data_dir={shapes_dir}', '--mode=embed', f'--checkpoint={pretrained}/saved_model',
                 f'--model_dir={tmp_path / "embed"}', '--embed_output=proj_head_output')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert np.load(tmp_path / 'embed' / 'embeddings.npz')['vectors'].shape == (40, 8)


def test_a_flag_that_contradicts_the_file_is_one_line_naming_both(tmp_path, shapes_dir, pretrained):
  proc = run_cli(*DATA, f'--data_dir={shapes_dir}', '--mode=knn', f'--checkpoint={pretrained}',
                 f'--model_dir={tmp_path}', '--resnet_depth=34')
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert '--resnet_depth=34' in lines[0] and 'resnet_depth=18' in lines[0] and 'ckpt-1 (its own record)' in lines[0]


def test_flags_that_agree_a_given_image_size_and_partial_starts_keep_the_flags(pretrained):
  config = tiny_config(mode='knn', checkpoint=pretrained, proj_out_dim=8)
  given = frozenset({'resnet_depth', 'width_multiplier', 'proj_out_dim'})
  assert architecture.adopt(config, given) == config
  bigger = config.replace(image_size=64)
  assert architecture.adopt(bigger, given | {'image_size'}).image_size == 64
  assert architecture.adopt(bigger, given).image_size == 32  # not given: the run's
  wider = config.replace(width_multiplier=0.25)
  with pytest.raises(UserError, match='width_multiplier=0.125'):
    architecture.adopt(wider, given)
  assert architecture.adopt(wider.replace(partial_checkpoint=True), given).width_multiplier == 0.25
  assert architecture.adopt(config.replace(checkpoint=''), frozenset()) == config.replace(checkpoint='')


def test_a_checkpoint_knows_its_architecture_without_config_json_unless_an_earlier_version_wrote_it(tmp_path,
                                                                                                  pretrained):
  import shutil
  shutil.copytree(pretrained, tmp_path / 'copy', ignore=shutil.ignore_patterns('config.json', 'saved_model'))
  adopted = architecture.adopt(tiny_config(mode='knn', checkpoint=str(tmp_path / 'copy'), proj_out_dim=128),
                               frozenset())
  assert (adopted.width_multiplier, adopted.proj_out_dim) == (0.125, 8)  # from the checkpoint's own record
  before = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'resources', 'written_before_layout_change')
  shutil.copytree(before, tmp_path / 'before', ignore=shutil.ignore_patterns('config.json', 'saved_model'))
  with pytest.raises(UserError, match='no config.json'):
    architecture.adopt(tiny_config(mode='knn', checkpoint=str(tmp_path / 'before')), frozenset())


@needs_shared('reference/golden/r50_sk_w0.125', 'Reading a reference file\'s architecture from its variables')
def test_a_reference_file_tells_its_architecture_by_its_variables():
  path = os.path.join(SHARED, 'reference', 'golden', 'r50_sk_w0.125', 'saved_model')
  adopted = architecture.adopt(tiny_config(mode='export', checkpoint=path), frozenset())
  assert (adopted.resnet_depth, adopted.width_multiplier, adopted.sk_ratio) == (50, 0.125, 0.0625)
