"""Fine-tuning and evaluation: pretrain -> finetune (other classes, zero-init, frozen) -> eval, label fractions."""

import json

import numpy as np
import pytest
import tensorflow as tf

import run as run_py
from conftest import model_values, run_cli, tiny_config
from simclr_tf.data import inputs
from simclr_tf.models.simclr import build_model


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, shapes_dir):
  model_dir = str(tmp_path_factory.mktemp('pretrained'))
  run_py.run(tiny_config(dataset='image_folder', data_dir=shapes_dir, model_dir=model_dir, train_steps=2))
  return model_dir


def test_finetune_other_classes_frozen_then_eval(tmp_path, shapes_dir, pretrained):
  """Linear evaluation (encoder frozen) with 7 classes on a 5-class checkpoint: encoder weights and BN
  statistics stay bit-identical, the new head trains, and --mode=eval reproduces the written result."""
  model_dir = tmp_path / 'ft'
  config = tiny_config(mode='finetune', dataset='image_folder', data_dir=shapes_dir, model_dir=str(model_dir),
                       checkpoint=pretrained, num_classes=7, zero_init_logits_layer=True, ft_proj_selector=1,
                       fine_tune_after_block=4, train_steps=3, eval_split='test', optimizer='momentum',
                       learning_rate=0.5)
  result = run_py.run(config.validate())
  assert result['num_examples'] == 40 and result['initialised_from'] == pretrained
  before, after = model_values(pretrained), model_values(model_dir)
  encoder = [k for k in after if k.startswith('resnet/')]
  assert any('moving_mean' in k for k in encoder)
  for k in encoder:
    np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  # Projection layer 1 is restored and then trained; layers 2, 3 and the old 5-class head are not in the model.
  assert not any(k.startswith('projection_head/layer2') for k in after)
  assert after['supervised_head/dense/_kernel'].shape == (64 // 8 * 8, 7)
  assert np.abs(after['supervised_head/dense/_kernel']).sum() > 0

  written = json.loads((model_dir / 'eval_test.json').read_text())
  proc = run_cli('--mode=eval', f'--checkpoint={model_dir}', '--dataset=image_folder', f'--data_dir={shapes_dir}',
                 '--image_size=32', '--resnet_depth=18', '--width_multiplier=0.125', '--proj_out_dim=16',
                 '--ft_proj_selector=1', '--eval_split=test', '--eval_batch_size=8', timeout=120)
  assert proc.returncode == 0, proc.stderr
  again = json.loads((model_dir / 'eval_test.json').read_text())
  assert set(again) >= {'top1', 'top5', 'loss', 'step', 'num_examples'}
  assert again['step'] == 3 and again['num_examples'] == 40
  np.testing.assert_allclose(again['top1'], written['top1'])
  np.testing.assert_allclose(again['loss'], written['loss'], rtol=1e-4)
  assert 'top1' in proc.stdout


def test_full_finetune_changes_encoder_and_resumes(tmp_path, shapes_dir, pretrained):
  config = tiny_config(mode='finetune', dataset='image_folder', data_dir=shapes_dir, model_dir=str(tmp_path),
                       checkpoint=pretrained, ft_proj_selector=0, train_steps=2)
  run_py.run(config)
  before, after = model_values(pretrained), model_values(tmp_path)
  assert not np.array_equal(after['resnet/stem/conv0/conv/conv/_kernel'],
                            before['resnet/stem/conv0/conv/conv/_kernel'])
  assert not any(k.startswith('projection_head/') for k in after)  # selector 0: the head input
  # A rerun with more steps resumes from model_dir's own checkpoint, not from --checkpoint.
  run_py.run(config.replace(train_steps=3))
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-3')


def test_zero_init_logits_layer_really_zeroes():
  config = tiny_config(mode='finetune', zero_init_logits_layer=True)
  model = build_model(config, pretraining=False, num_classes=3)
  assert np.all(model.supervised_head.dense.kernel.numpy() == 0)
  assert np.any(build_model(config.replace(zero_init_logits_layer=False), pretraining=False, num_classes=3)
                .supervised_head.dense.kernel.numpy() != 0)


@pytest.mark.parametrize('selector,width,layers', [(0, 64, 0), (1, 64, 1), (2, 64, 2), (3, 16, 3)])
def test_finetune_model_keeps_head_layers_up_to_selector(selector, width, layers):
  model = build_model(tiny_config(mode='finetune', ft_proj_selector=selector), pretraining=False, num_classes=4)
  assert model.supervised_head.dense.kernel.shape == (width, 4)
  assert model.projection_head.keep_layers == layers


def test_class_balanced_subset_counts_and_seed():
  labels = np.repeat(np.arange(4), [100, 50, 10, 1])
  chosen = inputs.class_balanced_subset(labels, 0.1, seed=3)
  assert [int(np.sum(labels[chosen] == c)) for c in range(4)] == [10, 5, 1, 1]
  np.testing.assert_array_equal(chosen, inputs.class_balanced_subset(labels, 0.1, seed=3))
  assert not np.array_equal(chosen, inputs.class_balanced_subset(labels, 0.1, seed=4))


@pytest.mark.parametrize('paths', [True, False])
def test_a_subset_keeps_its_records_in_order_across_blocks_and_shards(paths):
  """subset() masks the split a block of records at a time: the chosen records, in record order, for any split
  size (here not a multiple of the block) and for each of several input pipelines."""
  n = 2 * inputs.SUBSET_BLOCK + 37
  records = tf.data.Dataset.from_tensor_slices({'image': tf.strings.as_string(tf.range(n)), 'label': tf.range(n) % 3})
  source = inputs.Source('test', 'train', n, 3, lambda pipeline, pipelines: records, tf.identity,
                         records_are_paths=paths)
  chosen = np.sort(np.random.default_rng(0).choice(n, 90, replace=False))
  chosen[-1] = n - 1  # the last record of the last, partial block
  sub = inputs.subset(source, chosen)
  got = [int(r['image']) for r in sub.records(0, 1).as_numpy_iterator()]
  assert got == chosen.tolist() and sub.num_examples == 90
  shards = [[int(r['image']) for r in sub.records(p, 2).as_numpy_iterator()] for p in (0, 1)]
  assert shards == [got[0::2], got[1::2]]


def test_label_fraction_writes_ids_and_trains_on_them(tmp_path, shapes_dir):
  config = tiny_config(mode='finetune', dataset='image_folder', data_dir=shapes_dir, model_dir=str(tmp_path),
                       label_fraction=0.25, train_steps=1, seed=5)
  run_py.run(config)
  subset = json.loads((tmp_path / 'label_subset.json').read_text())
  assert subset['per_class'] == {str(c): 2 for c in range(5)} and subset['num_examples'] == 10
  assert len(subset['ids']) == 10 and len(subset['files']) == 10
  source = inputs.image_folder_source(shapes_dir, 'train')
  again, description = inputs.label_fraction_source(source, 0.25, 5)
  assert description['ids'] == subset['ids'] and again.num_examples == 10


def test_checkpoint_that_does_not_fit_is_one_line(tmp_path, shapes_dir, pretrained):
  proc = run_cli('--mode=finetune', f'--checkpoint={pretrained}', '--dataset=image_folder',
                 f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}', '--image_size=32', '--resnet_depth=34',
                 '--width_multiplier=0.125', '--train_batch_size=8', '--train_steps=1', timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()  # the run's config.json says otherwise: both values named
  assert len(lines) == 1 and '--resnet_depth=34 contradicts' in lines[0] and 'resnet_depth=18' in lines[0], \
      proc.stderr
  # Asked for anyway (--partial_checkpoint): the first variable that does not fit, by its shapes.
  proc = run_cli('--mode=finetune', f'--checkpoint={pretrained}', '--dataset=image_folder',
                 f'--data_dir={shapes_dir}', f'--model_dir={tmp_path}/b', '--image_size=32', '--resnet_depth=18',
                 '--width_multiplier=0.25', '--train_batch_size=8', '--train_steps=1', '--partial_checkpoint',
                 timeout=120)
  assert proc.returncode == 2
  line = proc.stderr.strip()
  assert len(line.splitlines()) == 1 and 'does not fit' in line, line
  assert 'resnet/stem/conv0/conv/conv/_kernel has shape [3, 3, 3, 8] in the checkpoint, the model ' \
         'expects [3, 3, 3, 16]' in line, line
