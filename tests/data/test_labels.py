"""Labels by name: a model records its classes in label order (simclr_tf.record), and every mode that reads labels
for a model maps a split's folder names through them; hidden folders are never classes; a run's folders never sit
inside the data; a resumed run keeps its classes."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_here, tiny_flags
from simclr_tf import weights
from simclr_tf.config import Config
from simclr_tf.data import inputs

TINY = tiny_flags(proj_out_dim=8, dataset='image_folder', eval_batch_size=8, checkpoint_epochs=0)


def folder(root, layout: dict, shapes_dir):
  """ROOT/<split>/<class>/ with the shapes' images of the classes `layout` names ({split: [class, ...]})."""
  for split, classes in layout.items():
    for name in classes:
      shutil.copytree(os.path.join(shapes_dir, split, name), os.path.join(root, split, name))
  return str(root)


@pytest.fixture(scope='module')
def three_classes(tmp_path_factory, shapes_dir):
  """A supervised model of circle, cross and ring (two steps from scratch), and its data."""
  root = tmp_path_factory.mktemp('three')
  data = folder(root / 'data', {'train': ['circle', 'cross', 'ring'], 'test': ['circle', 'cross', 'ring']},
                shapes_dir)
  model_dir = root / 'run'
  result = run_here(*TINY, f'--data_dir={data}', '--mode=finetune', f'--model_dir={model_dir}', '--train_steps=2')
  assert result[0] == 0, result
  return data, str(model_dir)


def test_an_eval_split_lacking_a_class_keeps_the_models_ids(three_classes, tmp_path, shapes_dir, simclr_log):
  data, model_dir = three_classes
  assert json.loads(open(os.path.join(model_dir, 'config.json')).read())['class_names'] == ['circle', 'cross',
                                                                                             'ring']
  lacking = folder(tmp_path / 'data', {'test': ['circle', 'ring']}, shapes_dir)
  code, result = run_here(*TINY, f'--data_dir={lacking}', '--mode=eval', f'--checkpoint={model_dir}',
                          f'--model_dir={tmp_path / "eval"}')
  assert code == 0, result
  assert any('lacks 1 of the 3 classes' in m and 'cross' in m for m in simclr_log), simclr_log
  # What the model says of those images against their true ids (ring is 2, not 1 as the split's own listing says).
  model, _ = weights.load_model(model_dir)
  source = inputs.make_source(Config(dataset='image_folder', data_dir=lacking), 'test')
  images = tf.concat([b['image'] for b in inputs.eval_dataset(source, Config(image_size=32), 64)], 0)[:16]
  logits = model(images, training=False)['logits_sup'].numpy()
  truth = np.array([0] * 8 + [2] * 8)
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(truth, logits)).numpy()
  assert result['num_examples'] == 16
  np.testing.assert_allclose(result['loss'], loss, rtol=1e-5)
  assert result['top1'] == np.mean(logits.argmax(1) == truth)


def test_a_class_the_model_does_not_know_is_one_line_before_any_work(three_classes, tmp_path, shapes_dir):
  _, model_dir = three_classes
  other = folder(tmp_path / 'data', {'test': ['circle', 'square']}, shapes_dir)
  code, message = run_here(*TINY, f'--data_dir={other}', '--mode=eval', f'--checkpoint={model_dir}',
                           f'--model_dir={tmp_path / "eval"}')
  assert code == 2 and 'square' in message and 'circle, cross, ring' in message, message
  assert not os.path.exists(tmp_path / 'eval' / 'eval_test.json')


def test_hidden_folders_are_never_classes_nor_images(tmp_path, shapes_dir):
  data = folder(tmp_path / 'data', {'train': ['circle', 'cross']}, shapes_dir)
  circle = os.path.join(data, 'train', 'circle')
  shutil.copy(os.path.join(circle, sorted(os.listdir(circle))[0]), os.path.join(circle, '._resource_fork.png'))
  for hidden in ('.ipynb_checkpoints', os.path.join('circle', '.ipynb_checkpoints')):
    os.makedirs(os.path.join(data, 'train', hidden))
  source = inputs.make_source(Config(dataset='image_folder', data_dir=data), 'train')
  assert source.class_names == ('circle', 'cross') and source.num_examples == 16


def test_a_model_dir_inside_a_data_split_is_refused_before_any_work(tmp_path, shapes_dir):
  data = folder(tmp_path / 'data', {'train': ['circle', 'cross']}, shapes_dir)
  inside = os.path.join(data, 'train', 'runs', 'first')
  code, message = run_here(*TINY, f'--data_dir={data}', '--mode=finetune', f'--model_dir={inside}',
                           '--train_steps=1')
  assert code == 2 and '--model_dir' in message and 'inside the data split' in message, message
  assert not os.path.exists(os.path.join(data, 'train', 'runs'))
  code, message = run_here(*TINY, f'--data_dir={data}', '--mode=finetune', f'--model_dir={tmp_path / "run"}',
                           f'--export_dir={os.path.join(data, "train", "exported")}', '--train_steps=1')
  assert code == 2 and '--export_dir' in message, message


def test_a_class_added_or_removed_before_a_resume_is_named(three_classes, tmp_path, shapes_dir):
  data, model_dir = three_classes
  run = tmp_path / 'run'
  shutil.copytree(model_dir, run)
  changed = folder(tmp_path / 'data', {'train': ['circle', 'ring', 'square']}, shapes_dir)
  code, message = run_here(*TINY, f'--data_dir={changed}', '--mode=finetune', f'--model_dir={run}',
                           '--train_steps=3')
  assert code == 2 and 'added square' in message and 'removed cross' in message, message
