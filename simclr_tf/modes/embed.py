"""--mode=embed: the vectors of one output of a model (--embed_output, default final_avg_pool) for every image of a
split (--embed_split of an image folder, labelled or not, or of a tfds dataset), in one pass with a progress line:
model_dir/embeddings.npz (ids: file paths or `split[i]`; labels, -1 without, and the class_names they number;
vectors [N, D]) and two pictures of
them coloured by label: model_dir/embeddings_tsne.png (t-SNE, neighbourhoods: the class structure kNN sees) and
model_dir/embeddings_pca.png (the two directions of largest variance)."""

import io
import logging
import os
from typing import Dict

import numpy as np
import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.errors import UserError
from simclr_tf.evaluation import embed
from simclr_tf.modes import common
from simclr_tf.runtime import distribute, files

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_encoder_use(config)


TSNE_MAX_POINTS = 3000  # more is a minute on two cores; the picture of a seeded sample shows the same
TSNE_ITERATIONS = 500  # scikit-learn's default is 1,000; 500 draws the same clusters in half the time


def pca_points(vectors: np.ndarray) -> np.ndarray:
  """[N, 2]: the vectors' first two principal components."""
  centred = vectors - vectors.mean(axis=0, keepdims=True)
  if len(centred) < 2 or centred.shape[1] < 2:
    return np.zeros([len(centred), 2])
  _, _, components = np.linalg.svd(centred, full_matrices=False)
  return centred @ components[:2].T


def tsne_points(vectors: np.ndarray, seed: int = 0, iterations: int = TSNE_ITERATIONS,
                threads: int = 1) -> np.ndarray:
  """[N, 2]: t-SNE (scikit-learn, PCA-initialised, seeded) of the L2-normalised vectors, the geometry the
  contrastive loss and kNN use. On one OpenMP thread: beside TensorFlow's thread pools (and on a busy machine) its
  threads wait on each other: 500 points took 28 s on two threads and 3.8 s on one (1,000 iterations each, two
  busy cores; bench/tsne.py measures it)."""
  from sklearn.manifold import TSNE
  from threadpoolctl import threadpool_limits
  if len(vectors) < 4:
    return pca_points(vectors)
  unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
  perplexity = float(min(30.0, (len(unit) - 1) / 3))
  with threadpool_limits(threads):
    return TSNE(2, perplexity=perplexity, init='pca', random_state=seed,
                max_iter=iterations).fit_transform(unit.astype(np.float64))


def scatter(points: np.ndarray, labels: np.ndarray, class_names, title: str, axis_name: str) -> bytes:
  """PNG of 2-D points coloured by label (grey: unlabeled)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  if np.all(labels < 0):
    ax.scatter(points[:, 0], points[:, 1], s=6, c='grey', alpha=0.6)
  else:
    cmap = plt.get_cmap('tab10' if labels.max() < 10 else 'tab20')
    for label in np.unique(labels):
      chosen = labels == label
      name = class_names[label] if 0 <= label < len(class_names) else str(label)
      ax.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.7, color=cmap(int(label) % cmap.N), label=name)
    if len(np.unique(labels)) <= 20:
      ax.legend(markerscale=3, fontsize=8, loc='best')
  ax.set_title(title, fontsize=10)
  ax.set_xlabel(f'{axis_name} 1')
  ax.set_ylabel(f'{axis_name} 2')
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=90)
  plt.close(fig)
  return png.getvalue()


def pictures(vectors: np.ndarray, labels: np.ndarray, class_names, title: str, seed: int = 0) -> Dict[str, bytes]:
  """{'tsne': PNG, 'pca': PNG}. t-SNE keeps neighbourhoods: it shows the clusters of classes that kNN sees (the
  picture to look at). PCA is linear and shows the directions of largest variance, which in a contrastive
  embedding are often nuisances (colour, size) that mix every class: kept beside it because it is exact and
  fast, and tells that story."""
  chosen = np.arange(len(vectors))
  if len(vectors) > TSNE_MAX_POINTS:
    chosen = np.sort(np.random.default_rng(seed).choice(len(vectors), TSNE_MAX_POINTS, replace=False))
  sampled = f', {len(chosen)} of {len(vectors)} sampled' if len(chosen) < len(vectors) else ''
  return {'tsne': scatter(tsne_points(vectors[chosen], seed), labels[chosen], class_names,
                          f'{title}, t-SNE{sampled}', 't-SNE'),
          'pca': scatter(pca_points(vectors), labels, class_names, f'{title}, PCA', 'PC')}


def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, object]:
  model, found, model_dir = common.load_encoder(config, strategy)
  source = inputs.make_source(config.data, config.embed_split)  # its own classes (named in the file): any split
  result = embed(common.Pooled(model, config.embed_output), source, config, config.embed_output,
                 progress=f'embedding {source.name} ({config.embed_split})')
  if not len(result['ids']):
    raise UserError(f'no image of {source.name} ({config.embed_split}) could be read.')
  if result['skipped']:
    log.warning('skipped %d unreadable image(s)', result['skipped'])
  path = os.path.join(model_dir, 'embeddings.npz')
  plots = {kind: os.path.join(model_dir, f'embeddings_{kind}.png') for kind in ('tsne', 'pca')}
  if distribute.is_chief(strategy):
    buffer = io.BytesIO()
    np.savez(buffer, ids=result['ids'], labels=result['labels'], vectors=result['vectors'].astype(np.float32),
             output=config.embed_output, checkpoint=found.prefix, split=config.embed_split,
             class_names=np.array(source.class_names, dtype=str))
    files.write_atomically(path, buffer.getvalue())
    drawn = pictures(result['vectors'], result['labels'], source.class_names,
                     f'{config.embed_output} of {os.path.basename(source.name)} ({config.embed_split})', config.seed)
    for kind, png in drawn.items():
      files.write_atomically(plots[kind], png)
  log.info('wrote %d vectors of %s (%d dimensions) to %s, pictures %s', len(result['ids']), config.embed_output,
           result['vectors'].shape[1], path, ' and '.join(plots.values()))
  return {'embeddings': path, 'plot': plots['tsne'], 'plots': plots, 'num_examples': len(result['ids']),
          'dimensions': int(result['vectors'].shape[1]), 'skipped': result['skipped']}
