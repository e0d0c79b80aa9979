"""The one immutable configuration of a simclr-tf run.

Every hyperparameter is a field of `Config` with its default and help text. run.py declares one absl flag per
field from this table; Python users and tests build a `Config(...)` directly (or `Config().replace(...)`).
Config is flat, one field per flag, but its fields are declared by their owners (simclr_tf.settings): those common
to every run here (CommonSettings), each encoder family's and each method's in the settings module beside it
(simclr_tf/models/resnet_settings.py, simclr_tf/methods/byol_settings.py, ...), with their checks and whether a
resumed run may change them (RESUMABLE_CHANGES is read from the fields).
`Config.check_fields()` rejects bad values and combinations with a `UserError` that names the flag; the rules of
each mode live with the mode (simclr_tf.modes.<mode>.validate, run by simclr_tf.modes.validate).

The flags are flat; what each builder reads is a section of them (frozen dataclasses made from the same fields):
`config.architecture` (ModelSettings: the network, for simclr_tf.models.build_model), `config.data` (DataSettings:
where the images come from, for simclr_tf.data.inputs), `config.augmentation` (AugmentationSettings: what each
example becomes, for simclr_tf.data.views) and `config.optim` (OptimizerSettings: the schedule and the optimizer,
for simclr_tf.optim.build).
"""

import dataclasses
import json
import math

from simclr_tf.errors import UserError  # noqa: F401  (importable from here too, as it was before errors.py)

from simclr_tf.methods import METHODS
from simclr_tf.models.registry import ENCODER_FIELDS, ENCODERS
from simclr_tf.settings import setting as _field

STRATEGIES = ('auto', 'default', 'mirrored', 'multi_worker', 'tpu')
OPTIMIZERS = ('lars', 'momentum', 'adam')
LR_SCALINGS = ('linear', 'sqrt')
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')

# What a model is, defined once (simclr_tf.record carries these with every model; readers adopt them): the encoder
# family and its fields, the projection head (its depth and width) and which of its layers feeds the supervised
# head, the input size (a ResNet's stem, a ViT's positions), and batch norm's settings. SHAPE_FIELDS decide the
# variables (which checkpoints fit); the others what the network computes with them.
PROJECTION_FIELDS = ('num_proj_layers', 'proj_out_dim')
HEAD_FIELDS = PROJECTION_FIELDS + ('ft_proj_selector',)
INPUT_FIELDS = ('image_size',)
SHAPE_FIELDS = (('encoder',) + tuple(f for fields in ENCODER_FIELDS.values() for f in fields) + HEAD_FIELDS +
                INPUT_FIELDS)
NORMALIZATION_FIELDS = ('global_bn', 'batch_norm_decay')
ARCHITECTURE_FIELDS = SHAPE_FIELDS + NORMALIZATION_FIELDS


def architecture_flags(encoder: str = 'resnet') -> str:
  """The flags to check when a file does not fit a model of the `encoder` family, for error messages."""
  return ', '.join(f'--{name}' for name in ENCODER_FIELDS[encoder] + HEAD_FIELDS + INPUT_FIELDS)


@dataclasses.dataclass(frozen=True)
class CommonSettings:
  """The settings of every run, and what a Config does (Config adds the encoder families' and methods' fields).
  Field names are the flag names (those of the paper's reference code where it has one)."""
  # What to do and where.
  mode: str = _field('pretrain', 'What to run: one of simclr_tf.modes.MODES.')
  model_dir: str = _field('', 'Directory for checkpoints, summaries, logs and results. Required for training.',
                          resumable=True)
  seed: int = _field(0, 'Seed of data order, augmentation and initialisation.')

  # Data.
  dataset: str = _field('cifar10', 'A tfds dataset name (e.g. cifar10, imagenet2012), `image_folder` '
                        '(--data_dir=ROOT with ROOT/<split>/<class>/*.jpg|png, or ROOT/<split>/*.jpg|png unlabeled) '
                        'or `shapes` (a small dataset of drawn shapes that is generated into --data_dir on first use).')
  data_dir: str = _field('', 'tfds data directory (empty = tfds default), or the root of an image folder.',
                         resumable=True)
  train_split: str = _field('train', 'Split to train on.')
  eval_split: str = _field('', 'Split to evaluate on at the end of training (empty = no evaluation).', resumable=True)
  image_size: int = _field(224, 'Input resolution. 32 or less selects the CIFAR stem (3x3 conv, no max-pool).')
  color_jitter_strength: float = _field(1.0, 'Strength s of the colour jitter (0.5 for CIFAR-10).')
  crop_min_area: float = _field(0.08, 'Smallest area (fraction of the image) of the random crops of pretraining '
                                'views (SimCLR: 0.08).')
  finetune_crop_min_area: float = _field(0.08, 'Smallest area (fraction of the image) of the random crops of '
                                         'fine-tuning and distillation (0.08, the ImageNet recipe; on small images '
                                         'with few labels a larger one, e.g. 0.35, can be better: tune it on a '
                                         'validation split).')
  use_blur: bool = _field(True, 'Apply Gaussian blur in the pretraining augmentation.')
  augment_on: str = _field('host', 'Where the augmentation after the crops (flip, colour jitter, greyscale, blur, '
                           'conversion to float) runs: in the input pipeline, per example (host), or inside the '
                           'training step, over the batch (device; the pipeline then ships uint8 crops). The views '
                           'are the same, bit for bit.', ('host', 'device'), resumable=True)
  cache_dataset: bool = _field(False, 'Cache the decoded dataset in memory.', resumable=True)
  shuffle_buffer: int = _field(10000, 'Shuffle block size (examples) of tfds training input; image folders are '
                               'shuffled whole.')
  strict_data: bool = _field(False, 'Stop at the first unreadable image instead of skipping it (skips are counted '
                             'in the log).', resumable=True)

  # Schedule.
  train_batch_size: int = _field(512, 'Global batch size (all replicas together).')
  eval_batch_size: int = _field(256, 'Global batch size of evaluation.', resumable=True)
  eval_steps: int = _field(0, 'Evaluate this many batches of --eval_split (0 = all of it).', resumable=True)
  eval_name: str = _field('', 'Name of an evaluation\'s result file and TensorBoard folder in model_dir '
                          '(eval_<name>.json, eval_<name>/; default: the split).', resumable=True)
  eval_wait_secs: int = _field(0, '--mode=eval of a run\'s model_dir: after evaluating its checkpoints, keep '
                               'evaluating new ones as they appear (another process training), until the run\'s '
                               'final step is evaluated or none came for this many seconds (0 = evaluate what is '
                               'there and stop).', resumable=True)
  eval_poll_secs: int = _field(15, 'How often --eval_wait_secs looks for a new checkpoint, in seconds.', resumable=True)
  train_epochs: int = _field(100, 'Number of epochs to train for (ignored when --train_steps > 0).', resumable=True)
  train_steps: int = _field(0, 'Number of steps to train for (overrides --train_epochs when > 0).', resumable=True)
  warmup_epochs: float = _field(10.0, 'Epochs of linear learning-rate warmup.')
  learning_rate: float = _field(0.3, 'Base learning rate, scaled by --learning_rate_scaling.')
  learning_rate_scaling: str = _field('linear', 'lr = base * B/256 (linear) or base * sqrt(B) (sqrt).', LR_SCALINGS)
  weight_decay: float = _field(1e-6, 'Weight decay.')
  optimizer: str = _field('lars', 'Optimizer.', OPTIMIZERS)
  momentum: float = _field(0.9, 'Momentum of LARS and momentum SGD.')
  lars_eta: float = _field(0.001, 'LARS trust coefficient eta.')

  # The self-supervised method, its loss and heads.
  method: str = _field('simclr', 'What --mode=pretrain trains (simclr_tf.methods): simclr (NT-Xent of two views '
                       'against the other images of the batch, SimCLR v1/v2) or byol (the online network predicts a '
                       'momentum network\'s projection of the other view, Grill et al. 2020).', tuple(METHODS))
  export_momentum_network: bool = _field(False, 'Export the momentum network (the memory\'s, or BYOL\'s target) '
                                         'instead of the trained (online) one: at the end of pretraining with '
                                         '--memory_size or --method=byol, or with --mode=export from such a '
                                         'checkpoint.', resumable=True)
  proj_out_dim: int = _field(128, 'Output dimension of the projection head.')
  num_proj_layers: int = _field(3, 'Number of layers of the projection head (3 in SimCLRv2, 1 = linear, 0 = none: '
                                'the contrastive loss on the encoder\'s output).')
  ft_proj_selector: int = _field(0, 'Which projection-head layer feeds the supervised head: 0 = its input, '
                                 'k = the output of its k-th layer (SimCLRv2 fine-tunes from 1).')
  lineareval_while_pretraining: bool = _field(True, 'Train the supervised head on a stop-gradient of the selected '
                                               'projection-head layer while pretraining (needs labels).')
  lineareval_lr_scale: float = _field(1.0, 'Scale of the learning rate of the linear head trained while '
                                      'pretraining (its cross-entropy gradient is multiplied by it). The reference '
                                      'trains it at the pretraining learning rate (1.0), which on small datasets '
                                      'can be far too large for a linear classifier of unnormalised features.')
  num_classes: int = _field(0, 'Classes of the supervised head (0 = take it from the dataset).')

  # Fine-tuning and evaluation.
  checkpoint: str = _field('', 'Weights to start from (finetune, distill student) or to evaluate/export: a '
                           'model_dir (its latest checkpoint), a checkpoint prefix, or a SavedModel directory.',
                           resumable=True)
  zero_init_logits_layer: bool = _field(False, 'Start the new supervised head at zero (finetune, distill).')
  partial_checkpoint: bool = _field(False, 'Start from a --checkpoint that holds encoder or projection-head '
                                    'variables this model has no place for (e.g. the extra blocks of a deeper '
                                    'ResNet): they are left out, and listed in the log. Without it such a '
                                    'checkpoint is refused (it usually means a wrong --resnet_depth, '
                                    '--width_multiplier or --sk_ratio).', resumable=True)
  fine_tune_after_block: int = _field(-1, 'Freeze the stem (0) and block groups 1..k, weights and BN statistics '
                                      '(-1 = train everything, 4 = linear evaluation).')
  label_fraction: float = _field(1.0, 'Train on a class-balanced, seeded subset of this fraction of the labelled '
                                 'split (e.g. 0.01, 0.1); the chosen example ids go to model_dir/label_subset.json.')

  # Export.
  export_dir: str = _field('', 'Where --mode=export (and every training mode at its end) writes the SavedModel '
                           '(default: model_dir/saved_model).', resumable=True)
  export_at_end: bool = _field(True, 'Training modes export a SavedModel when they finish.', resumable=True)
  keep_export_versions: int = _field(0, '0: the SavedModel at the export path is replaced whole by each export. '
                                     'N > 0: the export path is a base folder of versions, <path>/<step>/, the '
                                     'layout TF Serving polls (the reference\'s, --keep_hub_module_max=N): each '
                                     'export is a new version beside the others, never changed after; the oldest '
                                     'are removed beyond N.', resumable=True)

  # Embeddings and kNN.
  embed_split: str = _field('train', 'Split that --mode=embed writes the vectors of (to model_dir/embeddings.npz).',
                            resumable=True)
  embed_output: str = _field('final_avg_pool', 'Output of the model that --mode=embed writes: final_avg_pool, '
                             'proj_head_input, proj_head_output, logits_sup, initial_conv, block_group1..4 (spatial '
                             'outputs are averaged over height and width).', resumable=True)
  knn_k: int = _field(200, 'Neighbours of the weighted kNN classifier (--mode=knn and --knn_every_epochs).',
                      resumable=True)
  knn_temperature: float = _field(0.1, 'Temperature T of the kNN votes exp(cosine similarity / T).', resumable=True)
  knn_every_epochs: int = _field(0, 'While pretraining, measure kNN top-1/top-5 of --eval_split against the '
                                 '(labelled) --train_split every this many epochs, in inference mode; logged with '
                                 'the other metrics (0 = off). Training is unchanged by it.', resumable=True)

  # Distillation.
  teacher: str = _field('', 'The fine-tuned teacher for --mode=distill: a model_dir of this project (its latest '
                        'checkpoint and config.json), a checkpoint prefix beside a config.json, or a SavedModel.',
                        resumable=True)
  distill_temperature: float = _field(1.0, 'Distillation temperature T (0.1 for self-distillation, 1.0 big->small).')
  distill_label_weight: float = _field(0.0, 'Weight alpha of the supervised loss on labelled examples added to the '
                                       'distillation loss (0 = labels unused).')

  # Architecture.
  encoder: str = _field('resnet', 'The encoder\'s family (simclr_tf.models.ENCODERS): resnet (--resnet_depth, '
                        '--width_multiplier, --sk_ratio, --se_ratio) or vit (a Vision Transformer: --vit_depth, '
                        '--vit_width, --vit_heads, --vit_patch_size, ...).', tuple(ENCODERS))
  global_bn: bool = _field(True, 'Synchronise batch-norm statistics across replicas.')
  batch_norm_decay: float = _field(0.9, 'Batch-norm moving-average momentum.')

  # Checkpoints, logging.
  checkpoint_steps: int = _field(0, 'Save a checkpoint every this many steps (0 = use --checkpoint_epochs).',
                                 resumable=True)
  checkpoint_epochs: int = _field(1, 'Save a checkpoint every this many epochs (used when --checkpoint_steps=0).',
                                  resumable=True)
  keep_checkpoint_max: int = _field(5, 'Number of checkpoints to keep.', resumable=True)
  log_every_steps: int = _field(10, 'Print a progress line and write summaries every this many steps.', resumable=True)
  steps_per_loop: int = _field(10, 'Training steps per call into the graph (a loop on the device, metrics '
                               'accumulated there): saves the host dispatch between steps that starves TPUs. Loops '
                               'also end at logging and checkpoint steps, where the host looks at the run.',
                               resumable=True)

  # Distribution and hardware.
  strategy: str = _field('auto', 'Distribution strategy. auto: tpu if --tpu, mirrored with several GPUs or '
                         '--cpu_replicas > 1, else default.', STRATEGIES, resumable=True)
  tpu: str = _field('', 'TPU name or address for --strategy=tpu (or auto).', resumable=True)
  tpu_zone: str = _field('', 'GCE zone of --tpu (default: found from the metadata server on Cloud).', resumable=True)
  gcp_project: str = _field('', 'GCP project of --tpu (default: found from the metadata server on Cloud).',
                            resumable=True)
  cpu_replicas: int = _field(1, 'Split the CPU into this many logical devices and mirror over them (to exercise '
                             'multi-replica code without accelerators).', resumable=True)
  num_threads: int = _field(0, 'TF intra- and inter-op threads (0 = TF default).', resumable=True)
  worker_timeout: int = _field(600, 'Seconds a multi-worker collective may wait for the other workers (a dead or '
                               'stuck worker), or a TPU connection for an answer, before the run stops with an '
                               'error; 0 = wait forever.', resumable=True)
  precision: str = _field('float32', 'Compute precision. mixed_bfloat16 (TPU, recent CPUs/GPUs) and mixed_float16 '
                          '(GPU, with dynamic loss scaling) compute in 16 bits and keep float32 weights; losses, '
                          'softmax and batch-norm statistics stay in float32.', PRECISIONS)
  jit_compile: bool = _field(False, 'Compile the training step with XLA (always on for TPUs).', resumable=True)

  def replace(self, **changes) -> 'Config':
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @property
  def cifar_stem(self) -> bool:
    return self.image_size <= 32

  def validate(self) -> 'Config':
    """check_fields (the mode's own rules are checked when it runs: simclr_tf.modes.validate); returns self so
    calls chain."""
    return self.check_fields()

  def section(self, cls):
    """The fields of section `cls` (ModelSettings, DataSettings, ...) with this config's values."""
    return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

  @property
  def architecture(self) -> 'ModelSettings':
    return self.section(ModelSettings)

  @property
  def data(self) -> 'DataSettings':
    return self.section(DataSettings)

  @property
  def augmentation(self) -> 'AugmentationSettings':
    return self.section(AugmentationSettings)

  @property
  def optim(self) -> 'OptimizerSettings':
    return self.section(OptimizerSettings)

  def check_fields(self) -> 'Config':
    """The rules of the fields and of their combinations that hold in every mode (no TensorFlow needed)."""
    for f in dataclasses.fields(self):
      choices = f.metadata.get('choices')
      value = getattr(self, f.name)
      if choices and value not in choices:
        raise UserError(f'--{f.name}={value} is not one of {", ".join(map(str, choices))}.')
      if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f'--{f.name}={value} is {"not a number" if math.isnan(value) else "infinite"}; give a '
                        f'finite value.')
    checks = self._owner_checks() + [
        (self.train_batch_size > 0, f'--train_batch_size must be positive, got {self.train_batch_size}.'),
        (self.eval_batch_size > 0, f'--eval_batch_size must be positive, got {self.eval_batch_size}.'),
        (self.train_epochs > 0 or self.train_steps > 0, '--train_epochs or --train_steps must be positive.'),
        (self.train_steps >= 0, f'--train_steps must not be negative, got {self.train_steps}.'),
        (self.warmup_epochs >= 0, f'--warmup_epochs must not be negative, got {self.warmup_epochs}.'),
        (self.learning_rate > 0, f'--learning_rate must be positive, got {self.learning_rate}'
                                 f'{" (at 0 nothing would train)" if self.learning_rate == 0 else ""}.'),
        (self.weight_decay >= 0, f'--weight_decay must not be negative, got {self.weight_decay}.'),
        (0 <= self.momentum < 1, f'--momentum must be in [0, 1), got {self.momentum}.'),
        (self.num_proj_layers >= 0, f'--num_proj_layers must not be negative, got {self.num_proj_layers}.'),
        (self.eval_steps >= 0, f'--eval_steps must not be negative, got {self.eval_steps}.'),
        (self.eval_wait_secs >= 0, f'--eval_wait_secs must not be negative, got {self.eval_wait_secs}.'),
        (self.eval_poll_secs > 0, f'--eval_poll_secs must be positive, got {self.eval_poll_secs}.'),
        (self.proj_out_dim >= 1, f'--proj_out_dim must be at least 1, got {self.proj_out_dim}.'),
        (0 <= self.ft_proj_selector <= self.num_proj_layers,
         f'--ft_proj_selector={self.ft_proj_selector} must be between 0 and --num_proj_layers={self.num_proj_layers}.'),
        (self.num_classes >= 0, f'--num_classes must not be negative, got {self.num_classes}.'),
        (0 < self.label_fraction <= 1, f'--label_fraction must be in (0, 1], got {self.label_fraction}.'),

        (0 <= self.color_jitter_strength, '--color_jitter_strength must not be negative.'),
        (0 < self.crop_min_area <= 1, f'--crop_min_area must be in (0, 1], got {self.crop_min_area}.'),
        (0 < self.finetune_crop_min_area <= 1,
         f'--finetune_crop_min_area must be in (0, 1], got {self.finetune_crop_min_area}.'),
        (0 < self.batch_norm_decay < 1, f'--batch_norm_decay must be in (0, 1), got {self.batch_norm_decay}.'),
        (self.cpu_replicas >= 1, f'--cpu_replicas must be at least 1, got {self.cpu_replicas}.'),
        (self.checkpoint_steps >= 0 and self.checkpoint_epochs >= 0,
         '--checkpoint_steps and --checkpoint_epochs must not be negative.'),
        (self.keep_export_versions >= 0,
         f'--keep_export_versions must not be negative, got {self.keep_export_versions}.'),
        (self.keep_checkpoint_max >= 1, f'--keep_checkpoint_max must be at least 1, got {self.keep_checkpoint_max}.'),
        (self.log_every_steps >= 1, f'--log_every_steps must be at least 1, got {self.log_every_steps}.'),
        (self.steps_per_loop >= 1, f'--steps_per_loop must be at least 1, got {self.steps_per_loop}.'),
        (self.shuffle_buffer >= 1, f'--shuffle_buffer must be at least 1, got {self.shuffle_buffer}.'),
        (self.num_threads >= 0, f'--num_threads must not be negative, got {self.num_threads}.'),
        (self.worker_timeout >= 0, f'--worker_timeout must not be negative, got {self.worker_timeout}.'),
        (self.strategy != 'tpu' or self.tpu, '--strategy=tpu needs --tpu=NAME.'),
        (self.lineareval_lr_scale > 0,
         f'--lineareval_lr_scale must be positive, got {self.lineareval_lr_scale}.'),
        (self.knn_k >= 1, f'--knn_k must be at least 1, got {self.knn_k}.'),
        (self.knn_temperature > 0, f'--knn_temperature must be positive, got {self.knn_temperature}.'),
        (self.knn_every_epochs >= 0, f'--knn_every_epochs must not be negative, got {self.knn_every_epochs}.'),
        (self.distill_temperature > 0, f'--distill_temperature must be positive, got {self.distill_temperature}.'),
        (self.distill_label_weight >= 0,
         f'--distill_label_weight must not be negative, got {self.distill_label_weight}.'),
    ]
    for ok, message in checks:
      if not ok:
        raise UserError(message)
    return self

  def _owner_checks(self):
    """(ok, message) of the selected encoder family's and method's fields (their settings modules' checks), and of
    --fine_tune_after_block, whose range is the family's number of stages."""
    family = ENCODERS.settings(self.encoder)
    stages, what = family.stages(self)
    return family.checks(self) + METHODS.settings(self.method).checks(self) + [
        (-1 <= self.fine_tune_after_block <= stages,
         f'--fine_tune_after_block must be between -1 and {stages} ({what}), got {self.fine_tune_after_block}.')]


def _compose_config():
  """Config: CommonSettings and the fields of every registered encoder family's and method's Settings."""
  owners = ([(f'encoder {name}', ENCODERS.settings(name).Settings) for name in ENCODERS] +
            [(f'method {name}', METHODS.settings(name).Settings) for name in METHODS])
  declared = {f.name: 'config.py' for f in dataclasses.fields(CommonSettings)}
  fields = []
  for owner, settings in owners:
    for f in dataclasses.fields(settings):
      if f.name in declared:
        raise TypeError(f'the setting {f.name} of {owner} is declared by {declared[f.name]} too')
      declared[f.name] = owner
      fields.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
  config = dataclasses.make_dataclass('Config', fields, bases=(CommonSettings,), frozen=True)
  config.__module__ = __name__
  config.__doc__ = ('All settings of a run, one field per flag: CommonSettings and those each encoder family and '
                    'method declares (simclr_tf.settings).')
  return config


Config = _compose_config()


def _section(name: str, names, doc: str):
  """A frozen dataclass of the Config fields `names` (their types, defaults and help), named `name`."""
  by_name = {f.name: f for f in dataclasses.fields(Config)}
  section = dataclasses.make_dataclass(
      name, [(n, by_name[n].type, dataclasses.field(default=by_name[n].default, metadata=by_name[n].metadata))
             for n in names], frozen=True)
  section.__doc__ = doc
  section.__module__ = __name__
  return section


ModelSettings = _section('ModelSettings', ARCHITECTURE_FIELDS + (
    'precision', 'seed', 'fine_tune_after_block', 'zero_init_logits_layer'),
    'What build_model reads: the network (encoder family and its settings, heads, batch norm, input size), its '
    'precision and seed, and how fine-tuning starts it (frozen stages, a zeroed supervised head).')
DataSettings = _section('DataSettings', (
    'dataset', 'data_dir', 'image_size', 'cache_dataset', 'shuffle_buffer', 'strict_data', 'seed'),
    'What the input pipeline reads: where the images come from, how a split is read and shuffled.')
AugmentationSettings = _section('AugmentationSettings', (
    'image_size', 'color_jitter_strength', 'use_blur', 'crop_min_area', 'finetune_crop_min_area', 'augment_on'),
    'What each training example becomes (simclr_tf.data.views).')
OptimizerSettings = _section('OptimizerSettings', (
    'optimizer', 'learning_rate', 'learning_rate_scaling', 'warmup_epochs', 'weight_decay', 'momentum', 'lars_eta',
    'train_batch_size', 'train_epochs', 'train_steps', 'precision'),
    'What the optimizer and its schedule read (simclr_tf.optim.build): the length of the run is part of the '
    'schedule.')


def section_of(settings, cls):
  """`settings` as section `cls`: a Config gives its section; a section is returned as it is."""
  return settings.section(cls) if isinstance(settings, Config) else settings


def flag_fields():
  """(name, type, default, help, choices) of every Config field, for declaring flags."""
  hints = {'int': int, 'float': float, 'str': str, 'bool': bool}
  for f in dataclasses.fields(Config):
    kind = f.type if isinstance(f.type, type) else hints[str(f.type)]
    yield f.name, kind, f.default, f.metadata['help'], f.metadata.get('choices')


def from_dict(values: dict) -> Config:
  known = {f.name for f in dataclasses.fields(Config)}
  return Config(**{k: v for k, v in values.items() if k in known})


# Fields that may change when a run in an existing model_dir is resumed, as their owners declare them
# (resumable=True): they do not change what is being trained (paths, logging, evaluation, hardware) or only extend
# it (the length of the run).
RESUMABLE_CHANGES = frozenset(f.name for f in dataclasses.fields(Config) if f.metadata.get('resumable'))
# Precisions whose checkpoints are interchangeable (same weights, same optimizer state); float16 adds a loss scale.
INTERCHANGEABLE_PRECISIONS = frozenset({'float32', 'mixed_bfloat16'})


def resume_conflicts(recorded: dict, config: Config):
  """[(field, recorded value, new value)] of the differences that make resuming `recorded` with `config` wrong.
  A field the recorded config lacks (it was written before the field existed) had its default: new settings are
  off by default, so the old run trained with them off (e.g. --memory_size=0)."""
  current = dataclasses.asdict(config)
  recorded = dict(dataclasses.asdict(Config()), **recorded)
  return [(k, recorded[k], current[k]) for k in sorted(current)
          if k not in RESUMABLE_CHANGES and recorded[k] != current[k]
          and not (k == 'precision' and {recorded[k], current[k]} <= INTERCHANGEABLE_PRECISIONS)]
