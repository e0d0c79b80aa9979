"""tfds datasets offline: one that is not prepared fails at once with the whole cause and leaves nothing behind; one
prepared elsewhere (written here by tfds's own builder) trains offline."""

import os
import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import run_cli, tiny_flags


def online():
  try:
    socket.create_connection(('storage.googleapis.com', 443), timeout=3).close()
    return True
  except OSError:
    return False


@pytest.mark.skipif(online(), reason='this machine can reach storage.googleapis.com: tfds would download cifar10')
def test_an_unprepared_tfds_dataset_offline_fails_at_once_and_leaves_nothing(tmp_path):
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  (data_dir / 'other_dataset').mkdir()  # what the user has there stays
  start = time.time()
  proc = run_cli(*tiny_flags(train_steps=1), '--dataset=cifar10', f'--data_dir={data_dir}',
                 f'--model_dir={tmp_path / "run"}', timeout=300)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f'error: --dataset=cifar10 is not prepared in --data_dir={data_dir}, and this machine '
                             f'cannot download it (storage.googleapis.com: ')
  assert lines[0].endswith('or use --dataset=image_folder.')
  assert time.time() - start < 120  # TF's import and start-up included; tfds alone would retry for minutes
  assert sorted(os.listdir(data_dir)) == ['other_dataset']


class SimclrTfTestImages(tfds.core.GeneratorBasedBuilder):
  """A small labelled image dataset written by tfds itself."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(32, 32, 3)), 'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(24, 0), 'test': self._generate_examples(9, 1)}

  def _generate_examples(self, count, seed):
    rng = np.random.RandomState(seed)
    for i in range(count):
      yield i, {'image': (rng.rand(32, 32, 3) * 255).astype(np.uint8), 'label': i % 3}


def test_a_tfds_dataset_prepared_elsewhere_trains_offline(tmp_path):
  data_dir = tmp_path / 'tfds'
  SimclrTfTestImages(data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  # run.py does not know the builder's code: tfds reads the dataset from its files.
  proc = run_cli(*tiny_flags(train_steps=2), '--dataset=simclr_tf_test_images', f'--data_dir={data_dir}',
                 f'--model_dir={tmp_path / "run"}', '--eval_split=test', '--eval_batch_size=3', timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'tfds:simclr_tf_test_images' in proc.stdout and '(9 examples)' in proc.stdout
