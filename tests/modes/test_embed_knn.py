"""--mode=embed and --mode=knn on a pretrained model, and the kNN monitor while pretraining."""

import os

import numpy as np
import pytest

import run as run_py
from conftest import run_cli, tiny_config, tiny_flags
from simclr_tf import weights
from simclr_tf.data import inputs
from simclr_tf.runtime import monitor


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, shapes_dir):
  model_dir = str(tmp_path_factory.mktemp('pretrained'))
  run_py.run(tiny_config(dataset='image_folder', data_dir=shapes_dir, model_dir=model_dir, train_steps=2,
                         lineareval_while_pretraining=False))
  return model_dir


def embed(tmp_path, data_dir, checkpoint, split, **overrides):
  config = tiny_config(mode='embed', dataset='image_folder', data_dir=data_dir, checkpoint=checkpoint,
                       model_dir=str(tmp_path), embed_split=split, **overrides)
  result = run_py.run(config)
  return result, dict(np.load(result['embeddings']))


def test_embed_a_labelled_folder(tmp_path, shapes_dir, pretrained):
  result, found = embed(tmp_path, shapes_dir, pretrained, 'test')
  paths, labels, class_names = inputs.list_image_folder(shapes_dir, 'test')
  assert result['num_examples'] == len(paths) == 40 and result['skipped'] == 0
  assert list(found['ids']) == paths  # every image once, in the folder's order
  np.testing.assert_array_equal(found['labels'], labels)
  assert found['vectors'].shape == (40, 64) and found['vectors'].dtype == np.float32  # R18 at 1/8: 512/8
  assert str(found['output']) == 'final_avg_pool'
  # The vectors are the model's: an image's vector equals the loaded model's output on that image.
  model, _ = weights.load_model(tiny_config(), pretrained)
  from simclr_tf.data import augment
  import tensorflow as tf
  image = augment.eval_view(augment.to_float(tf.io.decode_png(tf.io.read_file(paths[7]), channels=3)), 32)
  expected = model(image[None], training=False)['final_avg_pool'].numpy()[0]
  np.testing.assert_allclose(found['vectors'][7], expected, rtol=1e-5, atol=1e-6)
  with open(result['plot'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_embed_an_unlabeled_folder_and_other_outputs(tmp_path, unlabeled_dir, pretrained):
  result, found = embed(tmp_path, unlabeled_dir, pretrained, 'train', embed_output='proj_head_output')
  names = sorted(os.listdir(os.path.join(unlabeled_dir, 'train')))
  assert [os.path.basename(p) for p in found['ids']] == names
  assert np.all(found['labels'] == -1) and found['vectors'].shape == (40, 16)
  assert os.path.exists(result['plot'])
  _, spatial = embed(tmp_path / 'spatial', unlabeled_dir, pretrained, 'train', embed_output='block_group1')
  assert spatial['vectors'].shape == (40, 8)  # 64/8 channels, averaged over height and width


def direct_knn(train, train_labels, test, test_labels, k, temperature, num_classes):
  """kNN as InstDisc defines it, one query at a time: classes ranked by their summed votes."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  top1 = top5 = 0
  for query, label in zip(test, test_labels):
    similarity = train @ query
    nearest = np.argsort(-similarity)[:k]
    votes = [0.0] * num_classes
    for i in nearest:
      votes[train_labels[i]] += np.exp(similarity[i] / temperature)
    ranked = sorted(range(num_classes), key=lambda c: -votes[c])  # every class; ties: the lower class first
    top1 += ranked[0] == label
    top5 += label in ranked[:5]
  return top1 / len(test), top5 / len(test)


@pytest.mark.parametrize('k,temperature', [(5, 0.1), (200, 0.5)])
def test_knn_mode_against_a_direct_implementation(tmp_path, shapes_dir, pretrained, k, temperature):
  _, train = embed(tmp_path / 'train', shapes_dir, pretrained, 'train')
  _, test = embed(tmp_path / 'test', shapes_dir, pretrained, 'test')
  result = run_py.run(tiny_config(mode='knn', dataset='image_folder', data_dir=shapes_dir, checkpoint=pretrained,
                                  model_dir=str(tmp_path / 'knn'), knn_k=k, knn_temperature=temperature))
  top1, top5 = direct_knn(train['vectors'], train['labels'], test['vectors'], test['labels'], k, temperature, 5)
  assert result['top1'] == pytest.approx(top1, abs=1e-9) and result['top5'] == pytest.approx(top5, abs=1e-9)
  assert result['num_examples'] == 40 and result['memory_examples'] == 40 and result['split'] == 'test'
  assert 0 <= result['linear_probe_top1'] <= 1
  assert os.path.exists(tmp_path / 'knn' / 'knn_test.json')


def test_linear_probe_separates_what_is_separable_and_nothing_else():
  from simclr_tf.evaluation import linear_probe
  rng = np.random.default_rng(0)
  centres = rng.normal(size=[5, 32]) * 2
  train_labels, test_labels = rng.integers(0, 5, 2000), rng.integers(0, 5, 500)
  train, test = centres[train_labels] + rng.normal(size=[2000, 32]), centres[test_labels] + rng.normal(size=[500, 32])
  assert linear_probe(train, train_labels, test, test_labels) >= 0.99
  # Labels that have nothing to do with the features: the test set is at chance (20%), whatever the fit did.
  assert abs(linear_probe(rng.normal(size=[2000, 32]), train_labels, rng.normal(size=[500, 32]), test_labels)
             - 0.2) < 0.06
  # Shifted and scaled features give the same classifier (standardised with the training set's statistics).
  assert linear_probe(train * 50 + 7, train_labels, test * 50 + 7, test_labels) >= 0.99


def test_knn_monitor_is_logged_and_leaves_training_unchanged(tmp_path, shapes_dir):
  # 40 training images at batch 8: 5 steps per epoch; the monitor runs at steps 5 and 10.
  base = tiny_config(dataset='image_folder', data_dir=shapes_dir, train_steps=10, eval_split='test',
                     log_every_steps=3, knn_k=10)
  run_py.run(base.replace(model_dir=str(tmp_path / 'plain')))
  run_py.run(base.replace(model_dir=str(tmp_path / 'monitored'), knn_every_epochs=1))
  plain = weights.WeightFile(str(tmp_path / 'plain')).model_values()
  monitored = weights.WeightFile(str(tmp_path / 'monitored')).model_values()
  assert plain.keys() == monitored.keys()
  for key in plain:
    np.testing.assert_array_equal(plain[key], monitored[key], err_msg=key)
  records = monitor.read_metrics(str(tmp_path / 'monitored'))
  knn_steps = [r['step'] for r in records if 'knn_top1' in r]
  assert knn_steps == [5, 10]  # every epoch, and the last step (here the same)
  assert all(0 <= r['knn_top1'] <= r['knn_top5'] <= 1 and 0 <= r['probe_top1'] <= 1
             for r in records if 'knn_top1' in r)
  assert [r['step'] for r in records] == [3, 5, 6, 9, 10]
  assert not any('knn_top1' in r for r in monitor.read_metrics(str(tmp_path / 'plain')))


@pytest.mark.parametrize('args,expected', [
    (['--mode=embed', '--embed_output=nope'], '--embed_output=nope is not an output of the model'),
    (['--mode=embed', '--embed_output=logits_sup', '--data_dir={unlabeled}'], 'has no supervised head'),
    (['--mode=embed', '--data_dir={empty}'], 'holds no images'),
    (['--mode=knn', '--data_dir={unlabeled}'], 'needs labels'),
    (['--mode=pretrain', '--knn_every_epochs=1', '--data_dir={shapes}'], '--knn_every_epochs=1 needs --eval_split'),
])
def test_bad_input_is_one_line(tmp_path, shapes_dir, unlabeled_dir, pretrained, args, expected):
  os.makedirs(tmp_path / 'empty' / 'train')
  values = dict(unlabeled=unlabeled_dir, empty=tmp_path / 'empty', shapes=shapes_dir)
  args = [a.format(**values) for a in args]
  data = [] if any(a.startswith('--data_dir') for a in args) else [f'--data_dir={shapes_dir}']
  proc = run_cli(*tiny_flags(dataset='image_folder'), f'--checkpoint={pretrained}', f'--model_dir={tmp_path / "out"}',
                 *data, *args, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr


def test_the_tsne_picture_shows_the_classes_that_the_variance_hides():
  """Five classes apart in five directions, and two binary directions of larger variance that ignore the classes
  (as a background colour can in a contrastive embedding): PCA's picture shows four clusters that mix every class,
  t-SNE's the classes inside them."""
  from simclr_tf.modes import embed as embed_mode
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(5), 60)
  vectors = np.concatenate([np.eye(5)[labels] * 2.0 + rng.normal(0, 0.2, (300, 5)),
                            rng.choice([-4.0, 4.0], (300, 2)) + rng.normal(0, 0.5, (300, 2))], axis=1)

  def neighbours_agree(points):  # leave-one-out 1-NN accuracy in the picture
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(points)) * 1e9
    return np.mean(labels[distances.argmin(axis=1)] == labels)

  assert neighbours_agree(embed_mode.tsne_points(vectors)) > 0.95
  assert neighbours_agree(embed_mode.pca_points(vectors)) < 0.6
  drawn = embed_mode.pictures(vectors, labels, [str(c) for c in range(5)], 'test')
  assert all(png[:8] == b'\x89PNG\r\n\x1a\n' for png in drawn.values())
