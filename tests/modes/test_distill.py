"""Distillation through run.py: a fine-tuned tiny teacher -> a narrower student on an unlabeled image folder."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import run as run_py
from conftest import run_cli, tiny_config
from simclr_tf import weights
from simclr_tf.data import inputs


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory, shapes_dir):
  model_dir = str(tmp_path_factory.mktemp('teacher'))
  run_py.run(tiny_config(mode='finetune', dataset='image_folder', data_dir=shapes_dir, model_dir=model_dir,
                         train_steps=60, optimizer='momentum', learning_rate=4.0, log_every_steps=20))
  return model_dir


def all_values(model_dir):
  path = tf.train.latest_checkpoint(model_dir)
  reader = tf.train.load_checkpoint(path)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}, path


def predictions(model, images):
  return np.argmax(model(images, training=False)['logits_sup'].numpy(), -1)


def test_student_of_another_width_learns_the_teacher(tmp_path, shapes_dir, unlabeled_dir, teacher_dir):
  before, teacher_prefix = all_values(teacher_dir)
  config = tiny_config(mode='distill', teacher=teacher_dir, dataset='image_folder', data_dir=unlabeled_dir,
                       model_dir=str(tmp_path), width_multiplier=0.0625, train_steps=200, optimizer='momentum',
                       learning_rate=4.0, distill_temperature=1.0, log_every_steps=50)
  run_py.run(config.validate())

  # The teacher's files are untouched (every variable, bit for bit) and it is not part of the student.
  after, _ = all_values(teacher_dir)
  assert tf.train.latest_checkpoint(teacher_dir) == teacher_prefix
  for k in before:
    np.testing.assert_array_equal(before[k], after[k], err_msg=k)
  student_paths = weights.WeightFile(str(tmp_path)).model_paths()
  assert student_paths['resnet/stem/conv0/conv/conv/_kernel']
  assert not any('teacher' in p for p in student_paths)

  # On held-out images the student agrees with the teacher's argmax far above what chance would give.
  strategy = tf.distribute.get_strategy()
  teacher, _ = weights.load_model(tiny_config(), teacher_dir, strategy)
  student, _ = weights.load_model(config, str(tmp_path), strategy)
  assert student.resnet.output_dim == teacher.resnet.output_dim // 2
  test = inputs.eval_dataset(inputs.image_folder_source(shapes_dir, 'test'), config, 40)
  images = next(iter(test))['image']
  pt, ps = predictions(teacher, images), predictions(student, images)
  chance = sum(np.mean(pt == c) * np.mean(ps == c) for c in range(5))
  agreement = np.mean(pt == ps)
  assert agreement > max(0.5, chance + 0.25), (agreement, chance, np.bincount(pt), np.bincount(ps))


def test_distill_eval_json_names_the_teacher(tmp_path, shapes_dir, teacher_dir):
  """Labelled data with alpha > 0 (the labels are used); the eval JSON records teacher, its accuracy and the
  agreement."""
  config = tiny_config(mode='distill', teacher=teacher_dir, dataset='image_folder', data_dir=shapes_dir,
                       model_dir=str(tmp_path), train_steps=2, distill_label_weight=0.5, eval_split='test')
  result = run_py.run(config)
  written = json.loads((tmp_path / 'eval_test.json').read_text())
  assert written['teacher'].startswith(teacher_dir) and written['mode'] == 'distill'
  assert 0 <= written['teacher_agreement'] <= 1 and 0 <= written['teacher_top1'] <= 1
  assert result['num_examples'] == 40
  assert 'sup_loss' in open(os.path.join(tmp_path, 'metrics.jsonl')).readline()


def test_label_weight_without_labels_is_a_clear_error(tmp_path, unlabeled_dir, teacher_dir):
  proc = run_cli('--mode=distill', f'--teacher={teacher_dir}', '--dataset=image_folder',
                 f'--data_dir={unlabeled_dir}', f'--model_dir={tmp_path}', '--image_size=32', '--resnet_depth=18',
                 '--width_multiplier=0.125', '--train_batch_size=8', '--distill_label_weight=0.5', timeout=120)
  assert proc.returncode == 2
  line = proc.stderr.strip()
  assert len(line.splitlines()) == 1 and '--distill_label_weight=0.5 needs labels' in line, proc.stderr


def test_distill_without_teacher_is_a_clear_error(tmp_path):
  proc = run_cli('--mode=distill', f'--model_dir={tmp_path}', timeout=60)
  assert proc.returncode == 2 and proc.stderr.strip() == 'error: --mode=distill needs --teacher=FINETUNED_MODEL_DIR.'
