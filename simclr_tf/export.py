"""SavedModel export, and reading weights from every layout users bring:

- this project's checkpoints (model_dir or ckpt prefix) and SavedModels (export_dir);
- the paper's reference code: its training checkpoints and the published SimCLRv2 SavedModels. Both hold the same
  attribute paths in their object graphs (`model/resnet_model/block_groups/0/layers/2/...`); a SavedModel's
  variables/ index keys each variable once, under an alias (`trainable_variables_list/<i>`,
  `model/resnet_model/variables/<i>`), and its graph adds more aliases (`keras_api/...`), which are not followed.

Reference files are mapped by structure: each variable gets a scope (stem, block group g / block b, projection layer
i, supervised head) and its position among that scope's trainable or non-trainable variables in the file's
structural order; our model's variables of the same scope, in their creation order (the same order the reference
creates them in), are paired with them one by one and every pair must agree in kind (kernel, gamma, beta, bias,
moving_mean, moving_variance) and shape. The global numeric suffixes of reference names are never used.
"""

import os
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from simclr_tf import checkpoints, files
from simclr_tf.config import UserError
from simclr_tf.models.resnet import BLOCKS_PER_GROUP, OUTPUT_KEYS

OURS, OURS_SAVEDMODEL, REFERENCE_CHECKPOINT, REFERENCE_SAVEDMODEL = (
    'simclr-tf checkpoint', 'simclr-tf SavedModel', 'reference checkpoint', 'reference SavedModel')
SAVED_OUTPUTS = OUTPUT_KEYS + ('proj_head_input', 'proj_head_output')


# ---- export ----------------------------------------------------------------------------------------------------

class ExportModule(tf.Module):
  """What a SavedModel holds: the Keras model (attribute `model`, so its variables keep the object paths of our
  checkpoints), the lists of its variables, and a call `m(images, trainable=False|True)` -> dict of outputs."""

  def __init__(self, model):
    super().__init__(name='simclr_export')
    self.model = model
    self.all_variables = list(model.weights)
    self.trainable_variables_list = list(model.trainable_weights)
    self._has_logits = getattr(model, 'supervised_head', None) is not None

  @tf.function
  def __call__(self, images, trainable=False):
    outputs = self.model(images, training=trainable)
    keys = SAVED_OUTPUTS + (('logits_sup',) if self._has_logits else ())
    return {k: outputs[k] for k in keys}


def export_saved_model(model, export_dir: str, config_json: Optional[str] = None) -> str:
  """Writes a SavedModel to export_dir (any filesystem TF knows). A reader never sees half of one: on local disks
  it is written to a temporary directory renamed into place; elsewhere the old one is removed first, and TF writes
  saved_model.pb (what makes a directory a SavedModel) after the variables."""
  module = ExportModule(model)
  spec = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
  serving = module.__call__.get_concrete_function(spec, False)
  module.__call__.get_concrete_function(spec, True)
  export_dir = export_dir.rstrip('/')
  local = files.is_local(export_dir)
  target = f'{export_dir}.tmp' if local else export_dir
  files.remove_tree(target)
  if files.parent(target):
    tf.io.gfile.makedirs(files.parent(target))
  if config_json:  # first, so that it is in place before saved_model.pb
    files.write_atomically(os.path.join(target, 'config.json'), config_json)
  tf.saved_model.save(module, target, signatures={'serving_default': serving})
  if local:
    files.remove_tree(export_dir)
    tf.io.gfile.rename(target, export_dir)
  return export_dir


# ---- reading any layout ----------------------------------------------------------------------------------------

def is_saved_model(path: str) -> bool:
  return tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, 'saved_model.pb'))


class WeightFile:
  """Variables of a checkpoint or SavedModel of any supported layout, addressable by object path.

  Everything is read from the file's own checkpoint (a SavedModel's variables/ index is one): its keys, which name
  each variable once, and its object graph, which gives each variable its attribute path. A SavedModel is never
  executed.
  """

  def __init__(self, path: str, flag: str = 'checkpoint'):
    self.path = path
    self.saved_model = is_saved_model(path)
    if self.saved_model:
      self.prefix = os.path.join(path, 'variables', 'variables')
      if not tf.io.gfile.exists(self.prefix + '.index'):
        raise UserError(f'--{flag}={path} is a SavedModel without variables (no variables/variables.index).')
    else:
      self.prefix = checkpoints.resolve_checkpoint(path, flag)
    self.shapes_by_key = checkpoints.checkpoint_shapes(self.prefix)
    self.keys = checkpoints.object_paths(self.prefix, root=None)  # full object path -> key
    self.reader = checkpoints.read_checkpoint(self.prefix)
    self.layout = self._detect()

  def _detect(self) -> str:
    paths = self.keys
    if any(p.startswith('model/resnet/') for p in paths):
      return OURS_SAVEDMODEL if self.saved_model else OURS
    if any(p.startswith('model/resnet_model/') for p in paths):
      return REFERENCE_SAVEDMODEL if self.saved_model else REFERENCE_CHECKPOINT
    raise UserError(f'{self.path} holds neither a simclr-tf model nor a SimCLRv2 reference model (no '
                    f'model/resnet or model/resnet_model variables).')

  def value(self, object_path: str):
    return self.reader.get_tensor(self.keys[object_path])

  def shape(self, object_path: str) -> List[int]:
    return list(self.shapes_by_key[self.keys[object_path]])

  # Our layouts: paths below the model.
  def model_paths(self) -> Dict[str, str]:
    """{path below the model: object path} for our layouts."""
    return {p[len('model/'):]: p for p in self.keys if p.startswith('model/')}

  # Reference layouts: (scope, trainable) -> ordered [(kind, object path)].
  def reference_scopes(self) -> Dict[Tuple, List[Tuple[str, str]]]:
    """The file's variables grouped by structural scope (stem, ('block', g, b), ('proj', i), sup) and
    trainability, each group in the reference code's order of creation.

    Training checkpoints and SavedModels of the reference code hold the same attribute paths
    (`model/resnet_model/block_groups/0/layers/0/...`); in a SavedModel every variable is also reachable through
    aliases (`trainable_variables_list/<i>`, `.../keras_api/layers/<i>/...`), which the walk of the object graph
    leaves out (checkpoints.structural_paths)."""
    scoped = defaultdict(list)
    for object_path in self.keys:
      scope = _checkpoint_scope(object_path)
      if scope is not None:
        kind = object_path.rsplit('/', 1)[1]
        scoped[(scope, kind not in ('moving_mean', 'moving_variance'))].append(
            (_checkpoint_order(object_path), kind, object_path))
    return {k: [(kind, p) for _, kind, p in sorted(v)] for k, v in scoped.items()}


_SK_ORDER = {'conv2d_fixed_padding': 0, 'batch_norm_relu': 1, 'conv2d_0': 2, 'batch_norm_relu_1': 3, 'conv2d_1': 4}
_LEAF_ORDER = {'kernel': 0, 'bias': 1, 'gamma': 0, 'beta': 1, 'moving_mean': 0, 'moving_variance': 1}
_PART_ORDER = {'projection_layers': 0, 'shortcut_layers': 0, 'conv_relu_dropblock_layers': 1, 'conv2d_bn_layers': 1,
               'dense': 0, 'bn_relu': 1, 'se_reduce': 0, 'se_expand': 1}


def _checkpoint_scope(object_path: str) -> Optional[Tuple]:
  parts = object_path.split('/')
  if parts[:2] == ['model', 'resnet_model']:
    if parts[2] == 'block_groups':
      return ('block', int(parts[3]) + 1, int(parts[5]))
    return ('stem',)
  if parts[:2] == ['model', '_projection_head']:
    return ('proj', int(parts[3]))
  if parts[:2] == ['model', 'supervised_head']:
    return ('sup',)
  return None


def _checkpoint_order(object_path: str) -> tuple:
  """Structural order of a reference checkpoint variable within its scope."""
  key = []
  for part in object_path.split('/'):
    if part.isdigit():
      key.append((0, int(part)))
    elif part in _SK_ORDER:
      key.append((1, _SK_ORDER[part]))
    elif part in _PART_ORDER:
      key.append((2, _PART_ORDER[part]))
    elif part in _LEAF_ORDER:
      key.append((3, _LEAF_ORDER[part]))
    else:
      key.append((4, 0))
  return tuple(key)


def _our_scope(path: str) -> Optional[Tuple]:
  parts = path.split('/')
  if parts[0] == 'resnet':
    if parts[1] == 'stem':
      return ('stem',)
    return ('block', int(parts[1][len('block_group'):]), int(parts[2][len('block'):]))
  if parts[0] == 'projection_head':
    return ('proj', int(parts[1][len('layer'):]) - 1)
  if parts[0] == 'supervised_head':
    return ('sup',)
  return None


def _kind(path: str) -> str:
  return path.rsplit('/', 1)[1].lstrip('_')


def _reference_assignments(model, variables, weights: WeightFile) -> List[Tuple]:
  """[(our variable, object path in the file)]: within each scope, the k-th variable of each kind (kernel, bias,
  gamma, beta, moving_mean, moving_variance) in the file's structural order goes to our k-th of that kind."""
  paths = checkpoints.variable_paths(model)
  ours = defaultdict(list)
  for v in model.weights:
    ours[(_our_scope(paths[id(v)]), _kind(paths[id(v)]))].append(v)
  theirs = defaultdict(list)
  for (scope, _), items in weights.reference_scopes().items():
    for kind, object_path in items:
      theirs[(scope, kind)].append(object_path)
  wanted = {id(v) for v in variables}
  pairs = []
  for (scope, kind), our_vars in ours.items():
    if not any(id(v) in wanted for v in our_vars):
      continue
    their = theirs.get((scope, kind), [])
    where = _describe_scope(scope)
    if len(their) != len(our_vars):
      raise UserError(f'{weights.path} ({weights.layout}) does not fit the model: {where} has {len(their)} '
                      f'{kind} variables in the file, the model has {len(our_vars)}; check '
                      f'{checkpoints.ARCHITECTURE_FLAGS}.')
    for v, object_path in zip(our_vars, their):
      found = weights.shape(object_path)
      if found != list(v.shape):
        raise UserError(f'{weights.path} ({weights.layout}) does not fit the model: {object_path} {found} falls '
                        f'on {paths[id(v)]} {list(v.shape)} in {where}; check {checkpoints.ARCHITECTURE_FLAGS}.')
      if id(v) in wanted:
        pairs.append((v, object_path))
  return pairs


def _describe_scope(scope: Tuple) -> str:
  if scope[0] == 'block':
    return f'block group {scope[1]}, block {scope[2]}'
  if scope[0] == 'proj':
    return f'projection-head layer {scope[1] + 1}'
  return {'stem': 'the stem', 'sup': 'the supervised head'}[scope[0]]


def describe_head(weights: WeightFile) -> Tuple[int, int]:
  """(number of classes of the supervised head (0 = none), number of projection-head layers) in the file."""
  if weights.layout in (OURS, OURS_SAVEDMODEL):
    shapes = {p: weights.shape(o) for p, o in weights.model_paths().items()}
    bias = shapes.get('supervised_head/dense/bias')
    layers = {int(p.split('/')[1][len('layer'):]) for p in shapes if p.startswith('projection_head/layer')}
    return (bias[0] if bias else 0), max(layers, default=0)
  scopes = weights.reference_scopes()
  sup = scopes.get((('sup',), True), [])
  bias = [p for kind, p in sup if kind == 'bias']
  layers = {scope[1] for scope, _ in scopes if scope[0] == 'proj'}
  return (weights.shape(bias[0])[0] if bias else 0), len(layers)


PUBLISHED_SK_RATIO = 0.0625


def reference_architecture(weights: WeightFile, ft_proj_selector: int = 0) -> dict:
  """Config fields of the network in a reference-code file, read from its variable paths and shapes (such files
  carry no config.json). SK networks get the published sk_ratio 0.0625 (the shape check of restore() catches
  another); which projection-head layer feeds the supervised head cannot be told from shapes when several have
  its width, so `ft_proj_selector` is taken when the shapes allow it."""
  paths = weights.keys
  stem = 'model/resnet_model/initial_conv_relu_max_pool/'
  resnet_d = f'{stem}4/conv2d/kernel' in paths
  first_conv = weights.shape(f'{stem}0/conv2d/kernel')
  width = first_conv[-1] * (2 if resnet_d else 1) / 64
  cifar_stem = not resnet_d and first_conv[0] == 3
  blocks = defaultdict(set)
  for p in paths:
    parts = p.split('/')
    if parts[2:3] == ['block_groups']:
      blocks[int(parts[3])].add(int(parts[5]))
  bottleneck = any('/conv_relu_dropblock_layers/' in p for p in paths)
  counts = tuple(len(blocks[g]) for g in range(4))
  depths = [d for d, c in BLOCKS_PER_GROUP.items() if c == counts and (d >= 50) == bottleneck]
  if not depths:
    raise UserError(f'{weights.path}: blocks per group {counts} are not those of a ResNet-18/34/50/101/152/200.')
  se_kernels = sorted(p for p in paths if p.startswith('model/resnet_model/block_groups/0/layers/0/') and
                      p.endswith('se_reduce/kernel'))
  se_ratio = weights.shape(se_kernels[0])[-1] / int(64 * width) if se_kernels else 0.0
  num_classes, proj_layers = describe_head(weights)
  head = 'model/_projection_head/linear_layers/'
  proj_out_dim = weights.shape(f'{head}{proj_layers - 1}/dense/kernel')[-1] if proj_layers else 128
  if num_classes:
    sup_in = weights.shape('model/supervised_head/linear_layer/dense/kernel')[0]
    widths = [weights.shape(f'{head}{i}/dense/kernel')[0] for i in range(proj_layers)] + [proj_out_dim]
    if widths[min(ft_proj_selector, proj_layers)] != sup_in:
      ft_proj_selector = widths.index(sup_in)
  return dict(resnet_depth=depths[0], width_multiplier=width, sk_ratio=PUBLISHED_SK_RATIO if resnet_d else 0.0,
              se_ratio=se_ratio, image_size=32 if cifar_stem else 224, num_proj_layers=max(proj_layers, 1),
              proj_out_dim=proj_out_dim, ft_proj_selector=min(ft_proj_selector, proj_layers))


def restore(model, variables, path: str, flag: str = 'checkpoint') -> Tuple[int, str]:
  """Assigns `variables` of `model` from `path` (any supported layout). Returns (count, layout)."""
  weights = WeightFile(path, flag)
  if weights.layout in (OURS, OURS_SAVEDMODEL):
    return checkpoints.restore_variables(model, variables, weights.prefix), weights.layout
  pairs = _reference_assignments(model, variables, weights)
  for v, object_path in pairs:
    v.assign(weights.value(object_path))
  return len(pairs), weights.layout
