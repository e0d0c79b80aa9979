"""A file of weights, whatever wrote it: its layout, its variables addressed by object path, their shapes and values.

Four layouts are read: this project's training checkpoints (a model_dir, or a ckpt-N prefix) and SavedModels, and
the paper's reference code's training checkpoints and published SavedModels. Everything comes from the file's own
checkpoint (a SavedModel's variables/ index is one): its keys, which name each variable once, and its object graph,
which gives each variable its attribute path (`model/resnet/stem/...` in ours, `model/resnet_model/...` in the
reference code's). A SavedModel is never executed.
"""

import os
from typing import Dict, List, Optional

import tensorflow as tf

from simclr_tf.errors import UserError, first_line
from simclr_tf.runtime import checkpoints

OURS, OURS_SAVEDMODEL, REFERENCE_CHECKPOINT, REFERENCE_SAVEDMODEL = (
    'simclr-tf checkpoint', 'simclr-tf SavedModel', 'reference checkpoint', 'reference SavedModel')

# Object-graph edges that only alias objects reachable through attributes: a Keras 2 SavedModel's `keras_api/...`
# and `variables/<i>`, our export's variable lists.
ALIAS_EDGES = frozenset({'keras_api', 'variables', 'trainable_variables', 'non_trainable_variables', 'weights',
                         'trainable_weights', 'non_trainable_weights', 'trainable_variables_list', 'all_variables'})


def is_saved_model(path: str) -> bool:
  return tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, 'saved_model.pb'))


def saved_model_in(path: str) -> Optional[str]:
  """The SavedModel a run's folder holds when it holds no checkpoint: PATH/saved_model (ours), or the highest
  PATH/saved_model/<step>/ or PATH/<step>/ (the reference code's export layout); None if none."""
  for base in (os.path.join(path, 'saved_model'), path):
    if not tf.io.gfile.isdir(base):
      continue
    if base != path and is_saved_model(base):
      return base
    steps = [int(n.rstrip('/')) for n in tf.io.gfile.listdir(base) if n.rstrip('/').isdigit()]
    steps = [step for step in steps if is_saved_model(os.path.join(base, str(step)))]
    if steps:
      return os.path.join(base, str(max(steps)))
  return None


def object_paths(reader, root: Optional[str] = None) -> Dict[str, str]:
  """{attribute path below `root` (None: below the graph's root): checkpoint key} of every variable in the object
  graph of a checkpoint (`reader`: checkpoints.read_checkpoint).

  TF stores a variable once, under the shortest path to it (a trainable variable is often stored under the
  optimizer's list of variables), so keys are found by walking the object graph along attribute names, leaving out
  the ALIAS_EDGES."""
  from tensorflow.core.protobuf import trackable_object_graph_pb2
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  starts = [0] if root is None else [c.node_id for c in graph.nodes[0].children if c.local_name == root]
  paths = {}
  stack = [(node, '', (node,)) for node in starts]
  while stack:
    node_id, path, on_path = stack.pop()
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name == 'VARIABLE_VALUE':
        paths[path] = attribute.checkpoint_key
    for child in node.children:
      if child.node_id not in on_path and child.local_name not in ALIAS_EDGES:
        stack.append((child.node_id, f'{path}/{child.local_name}' if path else child.local_name,
                      on_path + (child.node_id,)))
  return paths


class WeightFile:
  """The variables of a checkpoint or SavedModel of any supported layout, addressable by object path (the file's
  index is opened once)."""

  def __init__(self, path: str, flag: str = 'checkpoint', network: str = 'model'):
    """network: which network of the file is 'the model' (model_paths): 'model', or 'momentum_network', the momentum
    copy in a checkpoint of pretraining with --memory_size (the memory of negatives') or --method=byol (the target)."""
    if not is_saved_model(path) and checkpoints.latest_checkpoint(path) is None and saved_model_in(path):
      path = saved_model_in(path)
    self.path = path
    self.flag = flag
    self.network = network
    self.saved_model = is_saved_model(path)
    if self.saved_model:
      self.prefix = os.path.join(path, 'variables', 'variables')
      if not tf.io.gfile.exists(self.prefix + '.index'):
        raise UserError(f'--{flag}={path} is a SavedModel without variables (no variables/variables.index).')
    else:
      self.prefix = checkpoints.resolve_checkpoint(path, flag)
    try:
      self.reader = checkpoints.read_checkpoint(self.prefix)
      self.shapes_by_key = self.reader.get_variable_to_shape_map()
      self.keys = object_paths(self.reader)  # full object path -> key
    except (tf.errors.OpError, ValueError) as e:
      raise UserError(f'{self.prefix} cannot be read as a checkpoint ({first_line(e)}).') from None
    self.layout = self._detect()
    if network != 'model' and not (self.ours and any(p.startswith(network + '/') for p in self.keys)):
      raise UserError(f'--{flag}={path} holds no {network} (a momentum network is in checkpoints of pretraining '
                      f'with --memory_size or --method=byol only).')

  def _detect(self) -> str:
    from simclr_tf.models.registry import ENCODERS
    ours = tuple(f'model/{ENCODERS[name].ATTRIBUTE}/' for name in ENCODERS)  # an encoder of any family
    if any(p.startswith(ours) for p in self.keys):
      return OURS_SAVEDMODEL if self.saved_model else OURS
    if any(p.startswith('model/resnet_model/') for p in self.keys):
      return REFERENCE_SAVEDMODEL if self.saved_model else REFERENCE_CHECKPOINT
    raise UserError(f'{self.path} holds neither a simclr-tf model nor a SimCLRv2 reference model (no '
                    f'{", ".join(p.rstrip("/") for p in ours)} or model/resnet_model variables).')

  @property
  def ours(self) -> bool:
    return self.layout in (OURS, OURS_SAVEDMODEL)

  def value(self, object_path: str):
    return self.reader.get_tensor(self.keys[object_path])

  def shape(self, object_path: str) -> List[int]:
    return list(self.shapes_by_key[self.keys[object_path]])

  def model_paths(self) -> Dict[str, str]:
    """{path below the model (e.g. 'resnet/stem/conv0/conv/conv/_kernel'): object path in the file}."""
    root = self.network + '/'
    return {p[len(root):]: p for p in self.keys if p.startswith(root)}

  def model_values(self) -> Dict[str, object]:
    """{path below the model: numpy value} of every model variable in the file."""
    return {p: self.value(o) for p, o in self.model_paths().items()}
