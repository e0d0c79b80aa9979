"""Writing SavedModels in the TF-Hub style of the published SimCLRv2 models: `m(images, trainable=False|True)` returns
a dict of named outputs; variable lists for fine-tuning; the model under attribute `model`, so its variables keep
the object paths of our checkpoints (simclr_tf.weights reads them back)."""

import os
from typing import Optional

import tensorflow as tf

from simclr_tf import files
from simclr_tf.models.resnet import OUTPUT_KEYS

SAVED_OUTPUTS = OUTPUT_KEYS + ('proj_head_input', 'proj_head_output')


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
