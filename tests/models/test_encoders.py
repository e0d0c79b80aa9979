"""The encoder registry and its second family, a small Vision Transformer: built from the registry, trained by every
mode through run.py at tiny size (a ViT student of a ResNet teacher included), exported with working signatures,
in mixed precision, under XLA and on two replicas; LARS leaves its norms and embeddings alone."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli, tiny_config, tiny_flags
from simclr_tf import models
from simclr_tf.models.simclr import build_model
from simclr_tf.optim.build import make_optimizer

VIT = dict(encoder='vit', vit_depth=2, vit_width=32, vit_heads=2, vit_patch_size=8)
VIT_FLAGS = [f'--{k}={v}' for k, v in VIT.items()]


def test_the_registry_names_each_family_and_the_model_holds_an_encoder():
  assert sorted(models.ENCODERS) == ['resnet', 'vit']
  for name, extra in (('resnet', {}), ('vit', VIT)):
    model = build_model(tiny_config(**extra), pretraining=True, num_classes=3)
    family = models.ENCODERS[name]
    assert model.encoder is getattr(model, family.ATTRIBUTE)
    outputs = model(tf.zeros([2, 32, 32, 3]))
    assert tuple(outputs) == model.output_keys
    assert model.output_keys[:len(family.output_keys(model.settings))] == family.output_keys(model.settings)
  # A ResNet keeps the published models' keys.
  assert models.ENCODERS['resnet'].output_keys(None) == (
      'initial_conv', 'initial_max_pool', 'block_group1', 'block_group2', 'block_group3', 'block_group4',
      'final_avg_pool')


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_vit_outputs(pooling):
  model = build_model(tiny_config(vit_pooling=pooling, **VIT), pretraining=False, num_classes=4)
  outputs = model(tf.random.uniform([3, 32, 32, 3]))
  tokens = 16 + (1 if pooling == 'cls' else 0)  # (32 / 8)^2 patches
  assert outputs['patch_embedding'].shape == (3, tokens, 32) and outputs['block2'].shape == (3, tokens, 32)
  assert outputs['final_avg_pool'].shape == (3, 32) and outputs['logits_sup'].shape == (3, 4)
  names = {v.path.split('/')[-1] for v in model.encoder.weights}
  assert ('class_token' in names) == (pooling == 'cls') and 'position_embedding' in names


def test_lars_excludes_the_vits_norms_biases_and_embeddings():
  model = build_model(tiny_config(**VIT), pretraining=True, num_classes=3)
  optimizer = make_optimizer(tiny_config(optimizer='lars'), 0.1)
  variables = model.trainable_variables
  optimizer.build(variables)
  adapted = {v.path: adapt for v, adapt in zip(variables, optimizer._adapt)}
  encoder = [v.path for v in model.encoder.trainable_variables]
  excluded = [p for p in encoder if not adapted[p]]
  assert {p.split('/')[-1] for p in excluded} == {'gamma', 'beta', 'bias', 'class_token', 'position_embedding'}
  assert all(adapted[p] for p in encoder if p.endswith('kernel'))
  assert any('norm1' in p for p in excluded) and any('/norm/' in p for p in excluded)


def test_a_frozen_patch_embedding_does_not_train():
  model = build_model(tiny_config(vit_frozen_patch_embedding=True, **VIT), pretraining=True)
  trainable = {v.path for v in model.trainable_variables}
  projection = [v.path for v in model.encoder.patch_embedding.projection.weights]
  assert projection and not trainable & set(projection)
  assert any('position_embedding' in p for p in trainable)
  model = build_model(tiny_config(mode='finetune', fine_tune_after_block=1, vit_frozen_patch_embedding=True, **VIT),
                      pretraining=False)
  assert not [v for v in model.trainable_variables if '/block1/' in v.path or 'patch_embedding' in v.path]
  assert [v for v in model.trainable_variables if '/block2/' in v.path]


def test_a_keras_file_of_a_vit(tmp_path):
  ours = build_model(tiny_config(mode='finetune', ft_proj_selector=1, **VIT), pretraining=False, num_classes=3)
  inputs = keras.Input((32, 32, 3))
  classifier = keras.Model(inputs, ours(inputs)['logits_sup'])
  images = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
  classifier.save(tmp_path / 'vit.keras')
  np.testing.assert_array_equal(keras.models.load_model(tmp_path / 'vit.keras')(images).numpy(),
                                classifier(images).numpy())


def test_every_mode_trains_and_reads_a_vit(tmp_path, shapes_dir):
  """pretrain -> finetune -> distill (a ViT student from a ResNet teacher) -> eval, export, embed, knn."""
  data = ['--dataset=image_folder', f'--data_dir={shapes_dir}', '--eval_split=test', '--eval_batch_size=8']
  tiny = tiny_flags(train_steps=2, log_every_steps=1)
  proc = run_cli(*tiny, *data, *VIT_FLAGS, f'--model_dir={tmp_path / "pre"}', '--export_at_end=true', timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  proc = run_cli(*tiny, *data, *VIT_FLAGS, '--mode=finetune', f'--checkpoint={tmp_path / "pre"}',
                 '--ft_proj_selector=1', f'--model_dir={tmp_path / "ft"}', timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'initialised' in proc.stdout and json.load(open(tmp_path / 'ft' / 'eval_test.json'))['num_examples'] == 40
  # A ResNet teacher, fine-tuned; the ViT student starts from the ViT pretraining.
  proc = run_cli(*tiny, *data, '--mode=finetune', f'--model_dir={tmp_path / "teacher"}', timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  proc = run_cli(*tiny, *data, *VIT_FLAGS, '--mode=distill', f'--teacher={tmp_path / "teacher"}',
                 f'--checkpoint={tmp_path / "pre"}', f'--model_dir={tmp_path / "student"}', timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'into ViT 2x32' in proc.stdout
  result = json.load(open(tmp_path / 'student' / 'eval_test.json'))
  assert 'teacher_top1' in result and result['num_examples'] == 40
  proc = run_cli(*tiny_flags(), *data, *VIT_FLAGS, '--mode=eval', f'--checkpoint={tmp_path / "student"}',
                 timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  proc = run_cli(*tiny_flags(), *VIT_FLAGS, '--mode=export', f'--checkpoint={tmp_path / "student"}',
                 f'--export_dir={tmp_path / "exported"}', timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  loaded = tf.saved_model.load(str(tmp_path / 'exported'))
  served = loaded.signatures['serving_bytes'](image_bytes=tf.constant(
      [tf.io.encode_png(tf.zeros([40, 40, 3], tf.uint8)).numpy()]))
  # 16 patches and the class token
  assert served['final_avg_pool'].shape == (1, 32) and served['block2'].shape == (1, 17, 32)
  for mode, extra in (('embed', ['--embed_output=block1']), ('knn', ['--knn_k=3'])):
    proc = run_cli(*tiny_flags(), *data, *VIT_FLAGS, f'--mode={mode}', f'--checkpoint={tmp_path / "pre"}',
                   f'--model_dir={tmp_path / mode}', *extra, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
  vectors = np.load(tmp_path / 'embed' / 'embeddings.npz')['vectors']
  assert vectors.shape == (40, 32)  # block1's tokens averaged
  assert 0 <= json.load(open(tmp_path / 'knn' / 'knn_test.json'))['top1'] <= 1


@pytest.mark.parametrize('extra', [['--precision=mixed_bfloat16', '--jit_compile=true'], ['--cpu_replicas=2']],
                         ids=['bfloat16_under_xla', 'two_replicas'])
def test_vit_pretraining_in_mixed_precision_under_xla_and_on_two_replicas(tmp_path, shapes_dir, extra):
  proc = run_cli(*tiny_flags(train_steps=2, log_every_steps=1), '--dataset=image_folder',
                 f'--data_dir={shapes_dir}', *VIT_FLAGS, f'--model_dir={tmp_path}', *extra, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in records] == [1, 2] and all(np.isfinite(r['loss']) for r in records)
