"""--mode=embed: the vectors of one output of a model (--embed_output, default final_avg_pool) for every image of a
split (--embed_split of an image folder, labelled or not, or of a tfds dataset), in one pass with a progress line:
model_dir/embeddings.npz (ids: file paths or `split[i]`; labels, -1 without; vectors [N, D]) and a 2-D PCA scatter
of them coloured by label, model_dir/embeddings_pca.png."""

import io
import logging
import os
from typing import Dict

import numpy as np
import tensorflow as tf

from simclr_tf import distribute, files
from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.errors import UserError
from simclr_tf.evaluation import embed
from simclr_tf.modes import common

log = logging.getLogger('simclr_tf')


def validate(config: Config) -> None:
  common.validate_encoder_use(config)


def pca_scatter(vectors: np.ndarray, labels: np.ndarray, class_names, title: str) -> bytes:
  """PNG of the vectors' first two principal components, coloured by label (grey: unlabeled)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  centred = vectors - vectors.mean(axis=0, keepdims=True)
  if len(centred) >= 2 and centred.shape[1] >= 2:
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
  else:
    points = np.zeros([len(centred), 2])
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
  ax.set_xlabel('PC 1')
  ax.set_ylabel('PC 2')
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=90)
  plt.close(fig)
  return png.getvalue()


def run(config: Config, strategy: tf.distribute.Strategy) -> Dict[str, object]:
  model, found, model_dir = common.load_encoder(config, strategy)
  source = inputs.make_source(config.data, config.embed_split)
  result = embed(common.Pooled(model, config.embed_output), source, config, config.embed_output,
                 progress=f'embedding {source.name} ({config.embed_split})')
  if not len(result['ids']):
    raise UserError(f'no image of {source.name} ({config.embed_split}) could be read.')
  if result['skipped']:
    log.warning('skipped %d unreadable image(s)', result['skipped'])
  path = os.path.join(model_dir, 'embeddings.npz')
  plot = os.path.join(model_dir, 'embeddings_pca.png')
  if distribute.is_chief(strategy):
    buffer = io.BytesIO()
    np.savez(buffer, ids=result['ids'], labels=result['labels'], vectors=result['vectors'].astype(np.float32),
             output=config.embed_output, checkpoint=found.prefix, split=config.embed_split)
    files.write_atomically(path, buffer.getvalue())
    files.write_atomically(plot, pca_scatter(result['vectors'], result['labels'], source.class_names,
                                             f'{config.embed_output} of {os.path.basename(source.name)} '
                                             f'({config.embed_split}), PCA'))
  log.info('wrote %d vectors of %s (%d dimensions) to %s and %s', len(result['ids']), config.embed_output,
           result['vectors'].shape[1], path, plot)
  return {'embeddings': path, 'plot': plot, 'num_examples': len(result['ids']), 'dimensions':
          int(result['vectors'].shape[1]), 'skipped': result['skipped']}
