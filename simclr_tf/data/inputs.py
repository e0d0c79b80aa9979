"""Data sources (a tfds name, an image folder, the generated shapes) and the per-replica training/eval datasets.

A source yields encoded records {'image': encoded bytes or path, 'label': int64 (-1 when unlabeled)} in a fixed
order; decoding and augmentation come after shuffling and skipping, so resuming at step k skips cheap records.
The training stream is: epochs (each shuffled with a seed derived from the run seed and the epoch), enumerated;
element i of pipeline p gets the stateless augmentation seed (run seed, i * num_pipelines + p).
"""

import dataclasses
import logging
import os
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf.config import DataSettings, section_of
from simclr_tf.errors import UserError
from simclr_tf.data import augment
from simclr_tf.data.views import Views

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def as_written(fn: Callable) -> Callable:
  """`fn` for tf.data to trace as written. tf.data rewrites every function it maps with AutoGraph (Python control
  flow on tensors into graph ops), which took seconds of every run's start; ours branch on Python values only, and
  use tf.cond where a tensor decides."""
  return tf.autograph.experimental.do_not_convert(fn)


@dataclasses.dataclass
class Source:
  """A split of a dataset: how many examples, whether labelled, and a function making its record dataset."""
  name: str
  split: str
  num_examples: int
  num_classes: int  # 0 when unlabeled
  records: Callable[[int, int], tf.data.Dataset]  # (pipeline_id, num_pipelines) -> records in a fixed order
  read: Callable[[tf.Tensor], tf.Tensor]  # record['image'] -> the encoded image (bytes)
  records_are_paths: bool = False  # small records: the whole split can be permuted at once
  ids: Optional[Callable[[], list]] = None  # -> a name of each record, in record order (file paths; default: positions)
  class_names: tuple = ()

  def example_ids(self) -> list:
    """A name of each example, in record order: its file path for image folders, `split[i]` otherwise."""
    if self.ids is not None:
      return list(self.ids())
    return [f'{self.split}[{i}]' for i in range(self.num_examples)]

  @property
  def labeled(self) -> bool:
    return self.num_classes > 0


# ---- image folder ----------------------------------------------------------------------------------------------

def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
  """Names starting with '.' are never classes or images: .ipynb_checkpoints/ (Jupyter leaves one in every folder
  it opens), .DS_Store, macOS's ._* files beside each image on some drives."""
  return name.startswith('.')


def list_image_folder(root: str, split: str):
  """(paths, labels, class_names) of ROOT/split: labelled from class sub-folders (numbered in name order), or
  unlabeled (labels -1). Hidden entries (a name starting with '.') are left out."""
  split_dir = os.path.join(root, split)
  if not tf.io.gfile.isdir(root):
    raise UserError(f'--data_dir={root} does not exist; point it at the root of an image folder.')
  if not tf.io.gfile.isdir(split_dir):
    splits = sorted(d.rstrip('/') for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(os.path.join(root, d)))
    raise UserError(f'split {split!r} not found: {split_dir} is not a directory '
                    f'(splits in --data_dir: {", ".join(splits) or "none"}).')
  # Images are told by their names (one listing per folder, no call per file: cheap on object stores).
  entries = sorted(e.rstrip('/') for e in tf.io.gfile.listdir(split_dir) if not _is_hidden(e.rstrip('/')))
  loose = [e for e in entries if _is_image(e)]
  class_names = [e for e in entries if not _is_image(e) and tf.io.gfile.isdir(os.path.join(split_dir, e))]
  if class_names and loose:
    raise UserError(f'{split_dir} mixes class folders and loose images; use ROOT/{split}/<class>/*.jpg for '
                    f'labelled or ROOT/{split}/*.jpg for unlabeled data.')
  paths, labels = [], []
  if class_names:
    for label, name in enumerate(class_names):
      files = sorted(f for f in tf.io.gfile.listdir(os.path.join(split_dir, name)) if _is_image(f) and
                     not _is_hidden(f))
      paths += [os.path.join(split_dir, name, f) for f in files]
      labels += [label] * len(files)
  else:
    paths = [os.path.join(split_dir, f) for f in loose]
    labels = [-1] * len(paths)
  if not paths:
    raise UserError(f'{split_dir} holds no images ({", ".join(IMAGE_EXTENSIONS)}).')
  return paths, labels, class_names


def image_folder_source(root: str, split: str) -> Source:
  paths, labels, class_names = list_image_folder(root, split)

  def records(pipeline_id, num_pipelines):
    ds = tf.data.Dataset.from_tensor_slices({'image': paths, 'label': tf.constant(labels, tf.int64)})
    return ds.shard(num_pipelines, pipeline_id) if num_pipelines > 1 else ds

  return Source(f'image_folder:{root}', split, len(paths), len(class_names), records, tf.io.read_file,
                records_are_paths=True, ids=lambda: paths, class_names=tuple(class_names))


# ---- tfds ------------------------------------------------------------------------------------------------------

def tfds_source(name: str, split: str, data_dir: str) -> Source:
  import tensorflow_datasets as tfds  # imported here: slow to import and not needed for image folders
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'--dataset={name} is not a tfds dataset (nor image_folder or shapes).') from None
  if not builder.is_prepared():
    prepare_tfds(builder, name, data_dir)
  splits = builder.info.splits
  if splits and split.split('[')[0] not in splits:
    raise UserError(f'split {split!r} not found in {name} (splits: {", ".join(sorted(splits))}).')
  features = builder.info.features
  label_feature = features['label'] if 'label' in features else None
  num_classes = getattr(label_feature, 'num_classes', 0) or 0

  def records(pipeline_id, num_pipelines):
    sub = tfds.even_splits(split, num_pipelines)[pipeline_id] if num_pipelines > 1 else split
    ds = builder.as_dataset(split=sub, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return ds.map(as_written(lambda x: {
        'image': x['image'], 'label': tf.cast(x['label'], tf.int64) if num_classes else tf.constant(-1, tf.int64)}))

  if splits:
    num_examples = splits[split].num_examples
  else:  # only datasets without metadata (tfds.testing.mock_data) get here: count once
    num_examples = int(records(0, 1).reduce(0, as_written(lambda n, _: n + 1)))
  names = tuple(getattr(label_feature, 'names', None) or ()) if num_classes else ()
  return Source(f'tfds:{name}', split, num_examples, num_classes, records, tf.identity, class_names=names)


TFDS_HOST = ('storage.googleapis.com', 443)  # where tfds looks first for a prepared copy of a dataset


def _unreachable(host: Tuple[str, int], timeout: float = 5.0) -> Optional[str]:
  """Why `host` cannot be reached (None if it can): offline machines answer in well under a second."""
  import socket
  try:
    socket.create_connection(host, timeout=timeout).close()
    return None
  except OSError as e:
    return f'{host[0]}: {e.strerror or e}'


def prepare_tfds(builder, name: str, data_dir: str) -> None:
  """Downloads and prepares a tfds dataset; a machine that is offline is told at once (tfds would retry for
  minutes), and a failure leaves none of the folders it created behind."""
  where = f'--data_dir={data_dir}' if data_dir else 'the tfds data folder (~/tensorflow_datasets)'
  advice = (f'prepare it on a machine that is online (tfds.builder({name!r}).download_and_prepare()) and copy its '
            f'data folder here, or use --dataset=image_folder')
  reason = _unreachable(TFDS_HOST)
  if reason:
    raise UserError(f'--dataset={name} is not prepared in {where}, and this machine cannot download it ({reason}); '
                    f'{advice}.')
  root = str(builder.data_dir_root)
  created = [p for p in (os.path.join(root, name.split('/')[0]), os.path.join(root, 'downloads'))
             if not tf.io.gfile.exists(p)]
  try:
    builder.download_and_prepare()
  except Exception as e:  # noqa: BLE001  (network, disk, manual-download datasets: all end the same way)
    for path in created:
      if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    cause = ' '.join(str(e).split())
    raise UserError(f'--dataset={name}: tfds cannot prepare it in {where} ({type(e).__name__}: '
                    f'{cause[:600]}); {advice}.') from None


def make_source(settings, split: str, class_names=None, role: str = 'the model') -> Source:
  """The split of --dataset (DataSettings, or a Config: its `data`). With `class_names` (a model's classes in
  label order), its labels are those of the classes' names there (by_name); without, the split's own."""
  config = section_of(settings, DataSettings)
  if config.dataset == 'image_folder':
    source = image_folder_source(config.data_dir, split)
  elif config.dataset == 'shapes':
    from simclr_tf.data import shapes
    shapes.ensure(config.data_dir)
    source = image_folder_source(config.data_dir, split)
  else:
    source = tfds_source(config.dataset, split, config.data_dir)
  return by_name(source, class_names, role) if class_names else source


def by_name(source: Source, class_names, role: str = 'the model') -> Source:
  """`source` with each example labelled by its class's position in `class_names` (the classes of `role`, e.g. a
  model's, in label order) instead of the split's own numbering, so that a split lacking some classes, or listing
  them in another order, keeps the model's label ids. A class `role` does not know is one UserError naming it; the
  classes the split lacks are said in one line. A source without class names (tfds data without label names) keeps
  its numbers."""
  class_names = tuple(class_names)
  if not source.labeled or not source.class_names or tuple(source.class_names) == class_names:
    return source
  unknown = [name for name in source.class_names if name not in class_names]
  if unknown:
    shown = ', '.join(class_names[:10]) + (', ...' if len(class_names) > 10 else '')
    raise UserError(f'split {source.split!r} of {source.name} has {len(unknown)} class(es) that {role} does not '
                    f'know: {", ".join(unknown[:5])}{", ..." if len(unknown) > 5 else ""} ({role} has '
                    f'{len(class_names)}: {shown}); leave those folders out of the split.')
  missing = [name for name in class_names if name not in source.class_names]
  if missing:
    log.warning('split %r of %s lacks %d of the %d classes of %s (%s%s): its labels keep their ids', source.split,
                source.name, len(missing), len(class_names), role, ', '.join(missing[:5]),
                ', ...' if len(missing) > 5 else '')
  mapping = tf.constant([class_names.index(name) for name in source.class_names], tf.int64)
  base = source.records

  def records(pipeline_id, num_pipelines):
    return base(pipeline_id, num_pipelines).map(as_written(
        lambda r: dict(r, label=tf.gather(mapping, r['label']))))

  return dataclasses.replace(source, records=records, num_classes=len(class_names), class_names=class_names)


# ---- label fractions ------------------------------------------------------------------------------------------

def labels_of(source: Source) -> np.ndarray:
  """The label of every record of the split, in record order (one pass that decodes no image)."""
  labels = source.records(0, 1).map(as_written(lambda r: r['label'])).batch(8192)
  return np.concatenate([b.numpy() for b in labels] or [np.zeros([0], np.int64)])


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted record indices: round(fraction * n_c) (at least 1) examples of each class c, chosen by `seed`."""
  rng = np.random.default_rng([seed, 7919])
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    count = max(1, int(round(fraction * len(members))))
    chosen.append(np.sort(rng.permutation(members)[:count]))
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros([0], np.int64)


SUBSET_BLOCK = 256  # records masked at a time by subset()


def subset(source: Source, indices: np.ndarray) -> Source:
  """The source restricted to the records at `indices` (in record order)."""
  keep = np.zeros([source.num_examples], bool)
  keep[indices] = True
  keep = tf.constant(keep)
  base = source.records

  def chosen_in_block(block_index, block):
    count = tf.shape(tf.nest.flatten(block)[0])[0]
    mask = keep[block_index * SUBSET_BLOCK:block_index * SUBSET_BLOCK + tf.cast(count, tf.int64)]
    return tf.nest.map_structure(lambda t: tf.boolean_mask(t, mask), block)

  def records(pipeline_id, num_pipelines):
    # Masked a block of records at a time: a predicate per record costs about 20 µs, and every epoch scans the
    # whole split, which made an epoch of 1% of CIFAR-10 (7 batches) take a second.
    ds = base(0, 1).batch(SUBSET_BLOCK).enumerate().map(as_written(chosen_in_block)).unbatch()
    return ds.shard(num_pipelines, pipeline_id) if num_pipelines > 1 else ds

  chosen = np.flatnonzero(keep.numpy())

  def ids():
    every = source.example_ids()
    return [every[i] for i in chosen]

  return dataclasses.replace(source, split=f'{source.split} ({len(indices)} chosen)', num_examples=len(indices),
                             records=records, ids=ids)


def label_fraction_source(source: Source, fraction: float, seed: int):
  """(subset source, description) of a class-balanced seeded fraction of a labelled split."""
  if not source.labeled:
    raise UserError(f'--label_fraction needs labels, and split {source.split!r} of {source.name} has none.')
  labels = labels_of(source)
  indices = class_balanced_subset(labels, fraction, seed)
  counts = {int(c): int(np.sum(labels[indices] == c)) for c in np.unique(labels)}
  description = dict(dataset=source.name, split=source.split, fraction=fraction, seed=seed,
                     num_examples=int(len(indices)), per_class=counts, ids=[int(i) for i in indices])
  chosen = subset(source, indices)
  if source.records_are_paths:  # image folders: the files themselves, for auditing
    description['files'] = [r['image'].decode() for r in chosen.records(0, 1).as_numpy_iterator()]
  return chosen, description


# ---- datasets --------------------------------------------------------------------------------------------------

def shuffled_epoch(records: tf.data.Dataset, block: int, seed, epoch) -> tf.data.Dataset:
  """The records of one epoch, permuted within blocks of `block` records by a stateless permutation keyed by
  (seed, epoch, block index): the same for the same arguments, different for every epoch."""
  epoch_seed = tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)

  def permute(block_index, batch):
    n = tf.shape(batch['label'])[0]
    order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([epoch_seed, block_index])))
    return tf.nest.map_structure(lambda t: tf.gather(t, order), batch)

  return records.batch(block).enumerate().map(as_written(permute)).unbatch()


def _epoch_stream(source: Source, config: DataSettings, pipeline_id: int, num_pipelines: int, start_element: int):
  """(index, record) of endless shuffled epochs of this pipeline's shard, starting at `start_element`."""
  records = source.records(pipeline_id, num_pipelines)
  if config.cache_dataset:
    records = records.cache()
  per_pipeline = max(1, source.num_examples // num_pipelines)
  start_epoch = start_element // per_pipeline
  # Records that are only paths shuffle as one block (a full permutation); encoded images use bounded blocks.
  block = source.num_examples if source.records_are_paths else config.shuffle_buffer
  stream = tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(as_written(
      lambda e: shuffled_epoch(records, block, config.seed, e).take(per_pipeline)))
  stream = tf.data.Dataset.zip(tf.data.Dataset.range(start_epoch * per_pipeline, 2 ** 62), stream)
  return stream.skip(start_element - start_epoch * per_pipeline)


def train_dataset(source: Source, settings, views: Views, per_replica_batch: int,
                  input_context: Optional[tf.distribute.InputContext] = None, start_step: int = 0):
  """Per-replica batches of {'image': [B,H,W,C'], 'label': [B], 'index': [B]} for one input pipeline ('index'
  is the element's position in this pipeline's stream; unreadable images are skipped unless --strict_data).

  views.example(encoded image, seed [2]) makes each example; views.in_pipeline finishes each batch (unless
  --augment_on=device leaves that to the training step's views.in_step). Starts at global step `start_step`.
  `settings`: DataSettings (or a Config: its `data`).
  """
  config = section_of(settings, DataSettings)
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  replicas_per_pipeline = (input_context.num_replicas_in_sync // num_pipelines) if input_context else 1
  start_element = start_step * per_replica_batch * replicas_per_pipeline
  stream = _epoch_stream(source, config, pipeline_id, num_pipelines, start_element)

  def prepare(index, record):
    seed = tf.stack([tf.constant(config.seed, tf.int64), index * num_pipelines + pipeline_id])
    return dict(views.example(source.read(record['image']), seed), label=record['label'], index=index)

  ds = stream.map(as_written(prepare), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if not config.strict_data:
    ds = ds.ignore_errors()  # an unreadable image is skipped; the loop counts the gaps in 'index'
  ds = ds.batch(per_replica_batch, drop_remainder=True)
  ds = ds.map(as_written(views.in_pipeline), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_image(source: Source, image_size: int, record: dict) -> tf.Tensor:
  """A record's image with evaluation preprocessing (decoded, float, centre crop and resize to `image_size`)."""
  return augment.eval_view(augment.to_float(augment.decode_image(source.read(record['image']))), image_size)


def eval_dataset(source: Source, settings, batch_size: int,
                 input_context: Optional[tf.distribute.InputContext] = None):
  """One pass over the split with eval preprocessing, in per-replica batches of `batch_size` (`settings`:
  DataSettings, or a Config: its `data`).

  Padding examples (mask 0) fill the last batches so that every replica runs the same number of steps.
  """
  config = section_of(settings, DataSettings)
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  replicas_per_pipeline = (input_context.num_replicas_in_sync // num_pipelines) if input_context else 1
  records = source.records(pipeline_id, num_pipelines)
  most_per_pipeline = -(-source.num_examples // num_pipelines)
  step_examples = batch_size * replicas_per_pipeline
  num_batches = -(-most_per_pipeline // step_examples) * replicas_per_pipeline

  def prepare(record):
    return {'image': eval_image(source, config.image_size, record), 'label': record['label'],
            'mask': tf.constant(1.0)}

  ds = records.map(as_written(prepare), num_parallel_calls=tf.data.AUTOTUNE)
  if not config.strict_data:
    ds = ds.ignore_errors()  # evaluate() reports how many examples were evaluated
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([config.image_size, config.image_size, 3]), 'label': tf.constant(0, tf.int64),
      'mask': tf.constant(0.0)}).repeat()
  ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True).take(num_batches)
  return ds.prefetch(tf.data.AUTOTUNE)
