"""The paper's reference code's layouts: its training checkpoints and published SavedModels, mapped onto our model
by structure.

Each variable of a reference file gets a scope (stem, block group g / block b, projection layer i, supervised head)
and its position among that scope's trainable or non-trainable variables in the file's structural order; our
model's variables of the same scope, in their creation order (the same order the reference creates them in), are
paired with them one by one and every pair must agree in kind (kernel, gamma, beta, bias, moving_mean,
moving_variance) and shape. The global numeric suffixes of reference names are never used. A file carries no
config: its architecture is read from its variables (reference_architecture).
"""

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from simclr_tf.config import architecture_flags
from simclr_tf.errors import UserError
from simclr_tf.models.resnet import BLOCKS_PER_GROUP
from simclr_tf.weights.ours import variable_paths


def reference_scopes(weights) -> Dict[Tuple, List[Tuple[str, str]]]:
  """The file's variables grouped by structural scope (stem, ('block', g, b), ('proj', i), sup) and
  trainability, each group in the reference code's order of creation.

  Training checkpoints and SavedModels of the reference code hold the same attribute paths
  (`model/resnet_model/block_groups/0/layers/0/...`); in a SavedModel every variable is also reachable through
  aliases (`trainable_variables_list/<i>`, `.../keras_api/layers/<i>/...`), which WeightFile's walk of the object
  graph leaves out."""
  scoped = defaultdict(list)
  for object_path in weights.keys:
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


def assignments(model, variables, weights) -> Tuple[List[Tuple], List[str]]:
  """([(our variable, object path in the file)], unused): within each scope, the k-th variable of each kind
  (kernel, bias, gamma, beta, moving_mean, moving_variance) in the file's structural order goes to our k-th of that
  kind. `unused`: when the encoder is restored, the file's encoder variables in scopes the model lacks (a deeper
  ResNet's extra blocks)."""
  paths = variable_paths(model)
  ours = defaultdict(list)
  for v in model.weights:
    ours[(_our_scope(paths[id(v)]), _kind(paths[id(v)]))].append(v)
  theirs = defaultdict(list)
  for (scope, _), items in reference_scopes(weights).items():
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
                      f'{architecture_flags()}.')
    for v, object_path in zip(our_vars, their):
      found = weights.shape(object_path)
      if found != list(v.shape):
        raise UserError(f'{weights.path} ({weights.layout}) does not fit the model: {object_path} {found} falls '
                        f'on {paths[id(v)]} {list(v.shape)} in {where}; check {architecture_flags()}.')
      if id(v) in wanted:
        pairs.append((v, object_path))
  encoder = any(scope[0] in ('stem', 'block') and any(id(v) in wanted for v in our_vars)
                for (scope, _), our_vars in ours.items())
  our_scopes = {scope for scope, _ in ours}
  unused = sorted(p for (scope, _), their in theirs.items()
                  if encoder and scope[0] in ('stem', 'block') and scope not in our_scopes for p in their)
  return pairs, unused


def _describe_scope(scope: Tuple) -> str:
  if scope[0] == 'block':
    return f'block group {scope[1]}, block {scope[2]}'
  if scope[0] == 'proj':
    return f'projection-head layer {scope[1] + 1}'
  return {'stem': 'the stem', 'sup': 'the supervised head'}[scope[0]]


def describe_head(weights) -> Tuple[int, int]:
  """(classes of the supervised head (0 = none), projection-head layers) of a reference file."""
  scopes = reference_scopes(weights)
  sup = scopes.get((('sup',), True), [])
  bias = [p for kind, p in sup if kind == 'bias']
  layers = {scope[1] for scope, _ in scopes if scope[0] == 'proj'}
  return (weights.shape(bias[0])[0] if bias else 0), len(layers)


PUBLISHED_SK_RATIO = 0.0625


def reference_architecture(weights, ft_proj_selector: int = 0) -> dict:
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
  # Batch norm as the reference code runs it (its flags' defaults: synchronised, decay 0.9).
  return dict(resnet_depth=depths[0], width_multiplier=width, sk_ratio=PUBLISHED_SK_RATIO if resnet_d else 0.0,
              se_ratio=se_ratio, image_size=32 if cifar_stem else 224, num_proj_layers=max(proj_layers, 1),
              proj_out_dim=proj_out_dim, ft_proj_selector=min(ft_proj_selector, proj_layers), global_bn=True,
              batch_norm_decay=0.9)
