"""What several modes share: the rules for paths, the lock of a training mode, the labelled training split, the
classifier of fine-tuning and distillation and its starting weights, the end of every training mode (fit, then the
SavedModel), the evaluation at the end."""

import functools
import logging
import os
from typing import Callable, Dict, Optional

import tensorflow as tf

from simclr_tf import export, record, weights
from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.errors import UserError
from simclr_tf.evaluation import evaluate, write_result
from simclr_tf.models.registry import ENCODERS
from simclr_tf.models.simclr import HEAD_OUTPUTS, build_model
from simclr_tf.optim.build import learning_rate_schedule, make_optimizer
from simclr_tf.runtime import checkpoints, distribute, files, runlock
from simclr_tf.training.loop import Task, fit

log = logging.getLogger('simclr_tf')


# ---- rules for validate() --------------------------------------------------------------------------------------

def require(ok: bool, message: str) -> None:
  if not ok:
    raise UserError(message)


def require_data(config: Config) -> None:
  """The dataset of a mode that reads images can be found."""
  require(config.dataset != 'image_folder' or config.data_dir,
          '--dataset=image_folder needs --data_dir=ROOT (ROOT/<split>/<class>/*.jpg).')
  require(config.dataset != 'shapes' or config.data_dir,
          '--dataset=shapes needs --data_dir, where the generated images are written on first use.')


def require_model_dir(config: Config) -> None:
  require(config.model_dir, f'--mode={config.mode} needs --model_dir for its checkpoints and results.')


def validate_encoder_use(config: Config) -> None:
  """The rules of the modes that run a trained model over a split (embed, knn)."""
  require(config.checkpoint, f'--mode={config.mode} needs --checkpoint (a model_dir, checkpoint or SavedModel).')
  outputs = ENCODERS[config.encoder].output_keys(config.architecture) + HEAD_OUTPUTS + ('logits_sup',)
  require(config.embed_output in outputs, f'--embed_output={config.embed_output} is not an output of the model; '
                                          f'use one of {", ".join(outputs)}.')
  require_data(config)


def validate_training(config: Config) -> None:
  """The rules every training mode shares."""
  require_data(config)
  require_model_dir(config)


# ---- training modes --------------------------------------------------------------------------------------------

def training_mode(run: Callable) -> Callable:
  """A training mode's run(config, strategy): refuses a batch the replicas cannot share before reading any data,
  and holds model_dir/run.lock (on the chief) from before its first write to after its last: one run per
  model_dir. Holding it, it removes what a killed run left half-written (files.remove_leftovers)."""

  @functools.wraps(run)
  def locked(config: Config, strategy: tf.distribute.Strategy):
    distribute.check_batch_divides(config.train_batch_size, strategy, 'train_batch_size')
    with runlock.held(config.model_dir, enabled=distribute.is_chief(strategy)) as lock:
      if lock is not None:  # the writer of model_dir: what a killed run left half-written goes first
        files.remove_leftovers(config.model_dir)
      return run(config, strategy)

  locked.training = True
  return locked


# ---- where results go ------------------------------------------------------------------------------------------

def export_path(config: Config) -> str:
  """Where a mode's SavedModel goes: --export_dir, or model_dir/saved_model."""
  return config.export_dir or os.path.join(config.model_dir, 'saved_model')


def protected_paths(config: Config):
  """(flag, folder) of what an export must never replace: the run's model_dir, the folders of --checkpoint and
  --teacher, the data."""
  pairs = [('model_dir', config.model_dir), ('data_dir', config.data_dir)]
  pairs += [(flag, checkpoints.directory_of(getattr(config, flag))) for flag in ('checkpoint', 'teacher')
            if getattr(config, flag)]
  return [(flag, path) for flag, path in pairs if path]


def read_splits(config: Config):
  """The splits of --data_dir the mode reads."""
  if config.mode == 'export':
    return []
  if config.mode == 'embed':
    return [config.embed_split]
  evaluated = config.eval_split or ('test' if config.mode in ('eval', 'knn') else '')
  return [s for s in ([] if config.mode == 'eval' else [config.train_split]) + [evaluated] if s]


def check_outside_data(config: Config) -> None:
  """A model_dir or export_dir inside a split of an image folder it reads would be read as a class (its files as
  images, its curves.png trained on): refused in one line."""
  if config.dataset not in ('image_folder', 'shapes') or not config.data_dir:
    return
  for flag in ('model_dir', 'export_dir'):
    path = getattr(config, flag)
    for split in read_splits(config):
      folder = os.path.join(config.data_dir, split)
      if path and files.same_or_inside(path, folder):
        raise UserError(f'--{flag}={path} lies inside the data split {folder}: its files would be read as images of '
                        f'a class. Put it outside --data_dir\'s splits.')


def check_places(config: Config, is_training: bool) -> None:
  """Before any work: model_dir can be created and written, and the export target (training modes with
  --export_at_end, --mode=export) may be written without destroying what simclr-tf did not write there, and neither
  lies inside a split of the data (check_outside_data). Each failure is one UserError naming the flag and path. An
  --export_dir is checked first, so that a refused export creates nothing, not even the model_dir; the default one
  (model_dir/saved_model) after its model_dir."""
  check_outside_data(config)
  exports = config.mode == 'export' or (is_training and config.export_at_end)
  if exports and config.export_dir:
    export.check_export_place(config.export_dir, protected_paths(config), config.keep_export_versions)
  if config.model_dir:
    files.check_writable_dir(config.model_dir, 'model_dir')
  if exports and not config.export_dir:
    export.check_export_place(export_path(config), protected_paths(config), config.keep_export_versions)


def labelled_train_source(config: Config, strategy) -> inputs.Source:
  """The training split, reduced to --label_fraction (ids written to model_dir/label_subset.json)."""
  source = inputs.make_source(config.data, config.train_split)
  if not source.labeled:
    raise UserError(f'--mode={config.mode} needs labels, and split {config.train_split!r} of {source.name} has '
                    f'none (use ROOT/<split>/<class>/*.jpg).')
  if source.num_classes == 1:
    log.warning('split %r of %s has one class (%s): a classifier learns nothing from it; a labelled split needs '
                'a sub-folder per class, two or more.', config.train_split, source.name,
                ', '.join(source.class_names) or '?')
  if config.label_fraction < 1:
    source, description = inputs.label_fraction_source(source, config.label_fraction, config.seed)
    if distribute.is_chief(strategy):
      files.write_json(os.path.join(config.model_dir, 'label_subset.json'), description)
    log.info('label fraction %g: %d examples (%s per class)', config.label_fraction, source.num_examples,
             description['per_class'])
  return source


def results_dir(config: Config) -> str:
  """Where a mode that reads a model writes its results: --model_dir, or (checked here, before any work) the
  folder of --checkpoint."""
  if config.model_dir:
    return config.model_dir  # checked with the other places
  folder = checkpoints.directory_of(config.checkpoint)
  try:
    files.check_writable_dir(folder, 'model_dir')
  except UserError as e:
    raise UserError(f'{e} (Without --model_dir, results go to the folder of --checkpoint.)') from None
  return folder


def load_encoder(config: Config, strategy):
  """The model of --checkpoint, and model_dir (default: the checkpoint's directory)."""
  model_dir = results_dir(config)
  model, found = weights.load_model(config, config.checkpoint, strategy, adopt=False)  # adopted: modes.prepare
  if config.embed_output == 'logits_sup' and model.supervised_head is None:
    raise UserError(f'--embed_output=logits_sup: {config.checkpoint} has no supervised head; use final_avg_pool '
                    f'or a fine-tuned model.')
  return model, found, model_dir


class Pooled(tf.Module):
  """The model's output `key` as one vector per image: averaged over its positions (a ResNet's height and width,
  a transformer's tokens) when it has any."""

  def __init__(self, model, key: str):
    super().__init__()
    self.model, self.key = model, key

  def __call__(self, images, training=False):
    value = self.model(images, training=training)[self.key]
    rank = value.shape.rank
    return {self.key: tf.reduce_mean(value, axis=list(range(1, rank - 1))) if rank > 2 else value}


def knn_source(config: Config, split: str, role: str, class_names=None) -> inputs.Source:
  """The source of `split`, which kNN needs labelled (`role` names the flag it comes from), labelled by
  `class_names` (those of the memory split, for its queries) when given."""
  source = inputs.make_source(config.data, split, class_names, 'the memory split (--train_split)')
  if not source.labeled:
    raise UserError(f'kNN needs labels in its {role} split, and {split!r} of {source.name} has none.')
  return source


def initialise_from_checkpoint(config: Config, model, without_checkpoint: str) -> None:
  """Loads the encoder and the projection-head layers the model has (up to --ft_proj_selector) from
  --checkpoint; the checkpoint's other layers and its supervised head are ignored. Nothing happens when model_dir
  already has a checkpoint (the run resumes from it); without --checkpoint, logs `without_checkpoint`."""
  if checkpoints.latest_checkpoint(config.model_dir):
    return
  if not config.checkpoint:
    log.info('no --checkpoint: %s', without_checkpoint)
    return
  count, layout = weights.restore(model, model.encoder.weights + model.projection_head.weights, config.checkpoint,
                                  allow_partial=config.partial_checkpoint)
  log.info('initialised %d encoder and projection-head variables from %s (%s)', count, config.checkpoint, layout)


def build_classifier(config: Config, strategy, source: inputs.Source, num_classes: int, class_names,
                     without_checkpoint: str):
  """(model, optimizer) of the modes that train a classifier (fine-tuning, distillation's student): built in the
  strategy's scope with a supervised head of `num_classes` named by `class_names`, the optimizer's schedule over
  `source`, the starting weights from --checkpoint (initialise_from_checkpoint; `without_checkpoint` is logged
  when there is none)."""
  with strategy.scope():
    model = build_model(config.architecture, num_classes=num_classes, pretraining=False, class_names=class_names)
    optimizer = make_optimizer(config.optim, learning_rate_schedule(config.optim, source.num_examples))
  initialise_from_checkpoint(config, model, without_checkpoint)
  return model, optimizer


def fit_and_export(config: Config, strategy, task: Task, measurements=(), exported=None) -> int:
  """The end every training mode shares: fit `task` (resuming from model_dir's latest checkpoint; `measurements`
  logged along), then export `exported` (default: the task's model) as export_at_end says. Returns the final
  step."""
  step = fit(config, strategy, task, measurements)
  export_at_end(config, strategy, task.model if exported is None else exported, step)
  return step


def export_at_end(config: Config, strategy, model, step: int) -> Optional[str]:
  """Writes the trained model as a SavedModel (model_dir/saved_model unless --export_dir; with
  --keep_export_versions, as its version <step>) on the chief."""
  if not (config.export_at_end and distribute.is_chief(strategy)):
    return None
  path = export.export_saved_model(model, export_path(config), record.to_json(config, model.class_names),
                                   protected_paths(config), config.keep_export_versions, step)
  log.info('exported SavedModel to %s', path)
  return path


def model_labelled_source(config: Config, split: str, model) -> inputs.Source:
  """`split` labelled as `model`'s supervised head numbers its classes (its recorded class names); a model that
  records none (written by an earlier version, or trained with --num_classes other than its data's) takes the
  split's own numbering, said in one line."""
  if model.class_names:
    return inputs.make_source(config.data, split, model.class_names)
  source = inputs.make_source(config.data, split)
  if source.class_names:
    log.info('the model records no class names: the labels of split %r are numbered from its own classes in '
             'name order (%s%s)', split, ', '.join(source.class_names[:10]), ', ...' if source.num_classes > 10 else '')
  return source


def evaluate_and_record(config: Config, strategy, model, step: int, teacher_model=None, keep_later: bool = False,
                        **extra) -> Optional[Dict[str, float]]:
  """Evaluates on --eval_split (if set) and writes model_dir/eval_<split>.json on the chief (simclr_tf.evaluation.
  write_result; `keep_later` as there). With a teacher, the result also holds the teacher's accuracy and the
  student's top-1 agreement with it. `extra`: more entries of the result."""
  if not config.eval_split:
    return None
  source = model_labelled_source(config, config.eval_split, model)
  result = evaluate(model, source, config, strategy, teacher_model)
  result.update(split=config.eval_split, step=step, mode=config.mode, **extra)
  log.info('eval on %s: top1 %.4f  top5 %.4f  loss %.4f  (%d examples)', config.eval_split, result['top1'],
           result['top5'], result['loss'], result['num_examples'])
  if distribute.is_chief(strategy):
    write_result(config.model_dir, config.eval_name or config.eval_split, result, keep_later=keep_later)
  return result
