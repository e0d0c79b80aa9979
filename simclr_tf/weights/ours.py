"""This project's own layout: a variable's object path below the model (as tf.train.Checkpoint names it) is its
address in every checkpoint and SavedModel we write."""

from typing import Dict, List, Tuple

import tensorflow as tf

from simclr_tf.config import architecture_flags
from simclr_tf.errors import UserError


def variable_paths(model) -> Dict[int, str]:
  """{id(variable): its object path below `model`} as tf.train.Checkpoint names it (attribute names, e.g.
  'resnet/stem/conv0/conv/conv/_kernel'), found by TF's own traversal of the model's trackable children."""
  import keras
  view = tf.train.TrackableView(model)
  paths = {}
  stack = [(model, '', (id(model),))]
  while stack:
    obj, path, on_path = stack.pop()
    for name, child in view.children(obj).items():
      child_path = f'{path}/{name}' if path else name
      if isinstance(child, (keras.Variable, tf.Variable)):
        paths.setdefault(id(child), child_path)
      elif id(child) not in on_path:
        stack.append((child, child_path, on_path + (id(child),)))
  return paths


def scope_of(path: str) -> str:
  """The part of the model a variable path belongs to: 'resnet' (the encoder), 'projection_head/layerK' or
  'supervised_head'."""
  parts = path.split('/')
  return '/'.join(parts[:2]) if parts[0] == 'projection_head' else parts[0]


def restore_variables(model, variables, weights) -> Tuple[int, List[str]]:
  """Assigns each of `variables` (of `model`) the value stored at its object path in `weights` (a WeightFile of
  our layout). Every variable must be present with its shape; the first that is not is reported as one line
  (expected vs found). Returns (the number restored, the file's variables in the scopes restored (scope_of) that
  the model has no place for, e.g. a deeper ResNet's extra blocks)."""
  found = weights.model_paths()
  paths = variable_paths(model)
  restored_scopes = {scope_of(paths[id(v)]) for v in variables}
  model_paths = set(paths.values())
  unused = sorted(p for p in found if scope_of(p) in restored_scopes and p not in model_paths)
  for v in variables:
    name = paths[id(v)]
    if name not in found:
      raise UserError(f'checkpoint {weights.prefix} does not fit the model: it has no {name} (expected shape '
                      f'{list(v.shape)}); check {architecture_flags()}.')
    shape = weights.shape(found[name])
    if shape != list(v.shape):
      raise UserError(f'checkpoint {weights.prefix} does not fit the model: {name} has shape {shape} in the '
                      f'checkpoint, the model expects {list(v.shape)}; check {architecture_flags()}.')
  for v in variables:
    v.assign(weights.value(found[paths[id(v)]]))
  return len(variables), unused


def describe_head(weights):
  """(classes of the supervised head (0 = none), projection-head layers) of a file of our layout."""
  shapes = {p: weights.shape(o) for p, o in weights.model_paths().items()}
  bias = shapes.get('supervised_head/dense/bias')
  layers = {int(p.split('/')[1][len('layer'):]) for p in shapes if p.startswith('projection_head/layer')}
  return (bias[0] if bias else 0), max(layers, default=0)
