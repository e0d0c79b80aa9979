"""Writing SavedModels that the tools people deploy and reuse models with load, and that keep the paper's API.

What a SavedModel of ours holds (ExportModule), and who reads what:
- `m(images, trainable=False|True)` -> dict of named outputs, as the published SimCLRv2 models (the paper's API);
  the same call takes `training=` (TF-Hub's Reusable SavedModel API: `hub.KerasLayer(path, trainable=True,
  output_key=K)` fine-tunes it, batch norm following the layer's training flag);
- `variables`, `trainable_variables`, `regularization_losses` (the run's weight decay, as a function without
  arguments) for TF-Hub; `all_variables` and `trainable_variables_list` as the paper's models name them;
- signatures for TF Serving and `saved_model_cli run` (a session over the graph, the way TF Serving's C++ server
  loads): `serving_default` (float images in [0, 1], NHWC) and `serving_bytes` (a batch of encoded JPEG/PNG/BMP/GIF
  images; decoded and evaluation-preprocessed to the run's image size inside);
- the variables under `model/<their object path>` (a tree of plain nodes mirroring the Keras model's attributes),
  so that our weight loader (simclr_tf.weights) reads a SavedModel as it reads a checkpoint, without running it.

The functions and the tree hold the Keras variables' underlying tf.Variables, once each: tracking the Keras model
itself would save every variable twice (a Keras 3 variable exports a copy of itself beside the tf.Variable the
functions capture), and a session-based loader would find the captured ones uninitialised. (Batch norm on one
replica computes its statistics without all-reduces, see models.layers.BatchNormalization: a SavedModel holds no
custom gradients it cannot save.)
"""

import contextlib
import json
import logging
import os
import re
import signal
from typing import Optional

import keras
import tensorflow as tf

from simclr_tf.data import augment
from simclr_tf.errors import Interrupted, UserError
from simclr_tf.models.resnet import OUTPUT_KEYS
from simclr_tf.models.simclr import HEAD_OUTPUTS
from simclr_tf.optim.lars import excluded_from_decay
from simclr_tf.runtime import files, preemption, runlock
from simclr_tf.weights.ours import variable_paths

log = logging.getLogger('simclr_tf')

SAVED_OUTPUTS = OUTPUT_KEYS + HEAD_OUTPUTS  # a ResNet's: the published SimCLRv2 models' keys (and logits_sup)
SIGNATURES = ('serving_default', 'serve', 'serving_bytes')


def _tf_variable(v):
  """The tf.Variable a Keras variable keeps its value in (what traced functions capture)."""
  return v.value if isinstance(v, keras.Variable) else v


class _Node(tf.__internal__.tracking.AutoTrackable):
  """A plain node of the variable tree (one per attribute on the path to a variable)."""


def _variable_tree(model) -> _Node:
  """Plain nodes holding the model's tf.Variables at the Keras model's attribute paths."""
  root = _Node()
  paths = variable_paths(model)
  for v in model.weights:
    node = root
    *parents, leaf = paths[id(v)].split('/')
    for name in parents:
      if name not in node.__dict__:
        setattr(node, name, _Node())
      node = getattr(node, name)
    setattr(node, leaf, _tf_variable(v))
  return root


def _decayed(model) -> list:
  """The variables weight decay applies to (as LARS applies it): every trainable one but norm parameters, biases
  and a ViT's embeddings."""
  return [_tf_variable(v) for v in model.trainable_weights if not excluded_from_decay(v)]


def _network_passes(model):
  """forward(images, training) for the saved functions: the network traced once per batch norm mode, as a function
  of its own that every saved function with that mode calls (the four `__call__` variants and `serve_bytes` would
  otherwise trace it five times). A plain function (not tracked): what the traced functions capture are the
  module's variables."""
  keys = model.output_keys
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  passes = {training: tf.function(lambda images, training=training: {
      k: v for k, v in model(images, training=training).items() if k in keys}, input_signature=[spec], autograph=False)
      for training in (False, True)}
  return lambda images, training: passes[bool(training)](images)


class ExportModule(tf.__internal__.tracking.AutoTrackable):
  """The object a SavedModel of ours restores to (see the module's docstring)."""

  def __init__(self, model, image_size: int, weight_decay: float = 0.0):
    super().__init__()
    self.model = _variable_tree(model)
    self.variables = [_tf_variable(v) for v in model.weights]
    self.trainable_variables = [_tf_variable(v) for v in model.trainable_weights]
    self.all_variables = self.variables
    self.trainable_variables_list = self.trainable_variables
    decayed = _decayed(model)
    self.regularization_losses = [tf.function(
        lambda: weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in decayed]), input_signature=[], autograph=False)] if (
            weight_decay and decayed) else []
    self._forward = _network_passes(model)
    self._image_size = image_size

  @tf.function(autograph=False)
  def __call__(self, images, trainable=False, training=None):
    """The outputs of float images [N, H, W, 3] in [0, 1]; `trainable` (the paper's name) or `training` (Keras and
    TF-Hub's) runs batch norm in training mode."""
    return self._forward(images, trainable if training is None else training)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')], autograph=False)
  def serve_bytes(self, image_bytes):
    """Encoded images -> the outputs, with the evaluation preprocessing of the run's image size."""
    size = self._image_size
    images = tf.map_fn(lambda encoded: augment.eval_view(augment.to_float(augment.decode_image(encoded)), size),
                       image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
    return self._forward(images, False)

  def trace(self):
    """The concrete functions to save, and the signatures. `__call__` answers every call hub users write: the
    paper's `trainable=` alone (as its models, positional or by name), Keras's and TF-Hub's `training=` alone, and
    both (hub.KerasLayer(..., arguments=dict(trainable=True)) passes its own `training=` beside them): every pair
    of (trainable, training) in {False, True} x {None, False, True}."""
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
    serving = self.__call__.get_concrete_function(spec, False)
    for trainable in (False, True):
      for training in (None, False, True):
        self.__call__.get_concrete_function(spec, trainable, training)
    # `serve`: the endpoint Keras's own model.export() writes and keras.layers.TFSMLayer calls by default.
    return {'serving_default': serving, 'serve': serving, 'serving_bytes': self.serve_bytes.get_concrete_function()}


# What a SavedModel of ours holds. A directory with anything else in it was not written by us alone.
OUR_ENTRIES = frozenset({'saved_model.pb', 'fingerprint.pb', 'variables', 'assets', 'config.json'})
PARTIAL = '.simclr-tf-partial'  # the new SavedModel is written to TARGET + PARTIAL, beside its target
ASIDE = '.simclr-tf-old'  # where the old one waits, on file systems without an atomic exchange
LOCK = '.simclr-tf-lock'  # PARENT/.NAME + LOCK: held by the export writing PARENT/NAME (one at a time), removed after
# it. A hidden name that does not start with the target's: ram:// and object stores match names by prefix.
PROBE = '.simclr-tf-probe-'  # TARGET + PROBE + <pid>: made and removed to see that TARGET's folder can be written


def is_our_saved_model(path: str) -> bool:
  """A SavedModel written by simclr-tf: saved_model.pb beside our config.json (a Config of a run)."""
  config_path = os.path.join(path, 'config.json')
  if not (tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')) and tf.io.gfile.exists(config_path)):
    return False
  try:
    recorded = files.read_json(config_path)
  except (ValueError, tf.errors.OpError):
    return False
  return isinstance(recorded, dict) and {'mode', 'resnet_depth', 'model_dir'} <= set(recorded)


def export_lock(export_dir: str, flag: str = 'export_dir') -> runlock.RunLock:
  """The lock an export of `export_dir` holds (a file beside it, as model_dir/run.lock is for training)."""
  return runlock.RunLock(export_dir, path=lock_path(export_dir), flag=flag, holder='export')


def lock_path(export_dir: str) -> str:
  """Where the lock of an export to `export_dir` is: a hidden file beside it."""
  return os.path.join(files.parent(export_dir), f'.{os.path.basename(export_dir.rstrip("/"))}{LOCK}')


def check_export_target(export_dir: str, protected=(), flag: str = 'export_dir', locked: bool = False,
                        probe_only: bool = False) -> None:
  """Refuses (UserError, nothing touched) an export target whose replacement would destroy what simclr-tf did
  not write there: a file; a symbolic link (what it points at would be replaced or deleted; a link is re-pointed
  by the user, see docs/reliability.md); a directory that is not empty and not one of our SavedModels (or holds
  more than one); a run's folder (`protected`: (flag, path) pairs such as ('model_dir', ...), ('checkpoint', ...))
  or a folder that holds one; a target another export is writing. `locked` (the export itself, holding the
  target's lock): leftovers of an export that was killed are cleared. Then the place is checked for writing."""
  export_dir = export_dir.rstrip('/')
  for other_flag, other in protected:
    if other and (files.same_or_inside(other, export_dir)):
      raise UserError(f'--{flag}={export_dir} would replace --{other_flag}={other}'
                      f'{"" if files.same_or_inside(export_dir, other) else ", which lies inside it"}; export to a '
                      f'folder of its own (e.g. {other.rstrip("/")}/saved_model).')
  local = export_dir.replace('file://', '', 1)
  if files.is_local(export_dir) and os.path.islink(local):
    dangling = '' if os.path.exists(local) else ', which does not exist'
    raise UserError(f'--{flag}={export_dir} is a symbolic link (to {os.readlink(local)}{dangling}); simclr-tf does '
                    f'not write through links. Export to a new folder, then point the link at it (ln -sfn).')
  if not locked:
    export_lock(export_dir, flag).check_free()
  _clear_leftovers(export_dir, flag, remove=locked)
  if tf.io.gfile.exists(export_dir) and not probe_only:  # (probe_only: what is there is check_versions_base's)
    if not tf.io.gfile.isdir(export_dir):
      raise UserError(f'--{flag}={export_dir} is a file; a SavedModel is a directory. Give a new or empty '
                      f'directory, or one of our SavedModels to replace.')
    entries = _listing(export_dir)
    if entries:
      if any(e.startswith('ckpt-') or e == 'checkpoint' for e in entries):
        raise UserError(f'--{flag}={export_dir} holds training checkpoints (a model_dir?); the SavedModel would '
                        f'replace them. Export to a folder of its own.')
      if not is_our_saved_model(export_dir):
        raise UserError(f'--{flag}={export_dir} is not empty and not a SavedModel written by simclr-tf (it holds '
                        f'{", ".join(sorted(entries)[:3])}{", ..." if len(entries) > 3 else ""}); it would be '
                        f'replaced. Give a new or empty directory.')
      foreign = sorted(set(entries) - OUR_ENTRIES)
      if foreign:
        raise UserError(f'--{flag}={export_dir} is one of our SavedModels but also holds {foreign[0]}, which '
                        f'simclr-tf did not write; move it away to replace the SavedModel.')
  # Can the new one be written beside it? (A probe of its own: the partial folder may be another export's.)
  probe = f'{export_dir}{PROBE}{os.getpid()}'
  try:
    tf.io.gfile.makedirs(probe)
    tf.io.gfile.rmtree(probe)
  except (tf.errors.OpError, OSError) as e:
    raise UserError(f'--{flag}={export_dir} cannot be written ({files.describe_error(e)}); give a directory this user '
                    f'can create.') from None


def _listing(folder: str) -> list:
  """The entries of `folder`, without our folders beside it (TARGET.simclr-tf-partial, its probe): ram:// lists by
  name prefix, so there what lies beside a folder is listed as its entries too."""
  return [e.rstrip('/') for e in tf.io.gfile.listdir(folder) if not e.startswith('.simclr-tf-')]


def _clear_leftovers(export_dir: str, flag: str, remove: bool = True) -> None:
  """What an export killed half-way left: its partial SavedModel beside the target (removed: it is ours, it
  holds our config.json or nothing), and, where the old one had been moved aside when the process died, the old
  one (moved back). A leftover that is a symbolic link (an earlier version followed links) is removed, never what
  it points at. Without `remove`, only refuses what is in the way and is not ours."""
  partial, aside = export_dir + PARTIAL, export_dir + ASIDE
  if remove:  # a killed export's probe folder, and its lock's temporary file (files.write_atomically's)
    for probe in tf.io.gfile.glob(export_dir + PROBE + '*'):
      pid = probe[len(export_dir + PROBE):]
      if pid.isdigit() and not files.process_alive(int(pid)):
        files.remove_tree(probe)
    for temporary in tf.io.gfile.glob(lock_path(export_dir) + '.tmp-*'):
      if files.abandoned(temporary):
        tf.io.gfile.remove(temporary)
  for leftover in (partial, aside):
    link = leftover.replace('file://', '', 1)
    if files.is_local(leftover) and os.path.islink(link):
      if remove:
        os.remove(link)
      continue
    if not tf.io.gfile.exists(leftover):
      continue
    entries = tf.io.gfile.listdir(leftover) if tf.io.gfile.isdir(leftover) else None
    ours = entries is not None and ('config.json' in [e.rstrip('/') for e in entries] or
                                    all(files.TEMPORARY_SUFFIX.search(e.rstrip('/')) for e in entries))
    if not ours:  # (all of an empty folder's entries are ours)
      raise UserError(f'{leftover} is in the way of --{flag}={export_dir} and was not written by simclr-tf; '
                      f'move it away.')
    if not remove:
      continue
    if leftover == aside and not tf.io.gfile.exists(export_dir) and is_our_saved_model(aside):
      tf.io.gfile.rename(aside, export_dir)
    else:
      files.remove_tree(leftover)


def _tracing_as_saved(options):
  """The context tf.saved_model.save traces in. A function traced outside it is traced again while saving (the
  save options are part of tf.function's cache key): five more traces of the network. TF keeps it internal; without
  it the export is the same, only slower."""
  try:
    from tensorflow.python.saved_model import save_context
    return save_context.save_context(options)
  except (ImportError, AttributeError):
    return contextlib.nullcontext()


def export_saved_model(model, export_dir: str, config_json: Optional[str] = None, protected=(),
                       keep_versions: int = 0, step: int = -1) -> str:
  """Writes a SavedModel to export_dir (any filesystem TF knows), after check_export_target: what was there is
  replaced only if it is one of our SavedModels. On local disks the new one is written beside the target and
  takes its place in one step (files.replace_directory): a reader finds the old SavedModel or the new one, whole.
  Elsewhere (object stores have no directory rename) the old one is removed first and TF writes saved_model.pb
  (what makes a directory a SavedModel) after the variables. SIGTERM/SIGINT while writing stop the export with
  Interrupted, the partial files removed and the old SavedModel in place. One export per target at a time: it
  holds its lock (lock_path) from its check to its last write (another is refused in one line, nothing touched).

  keep_versions > 0: export_dir is a base folder of versions (the layout TF Serving polls, and the reference's):
  the SavedModel goes to export_dir/<step>/ (`step`; without one, the next number), written beside it and renamed
  in under a new name, never changed after; the oldest versions beyond `keep_versions` are removed. Returns the
  SavedModel's path."""
  export_dir = export_dir.rstrip('/')
  check_export_place(export_dir, protected, keep_versions)
  lock = export_lock(export_dir).acquire()
  try:
    if not keep_versions:
      return _write_saved_model(model, export_dir, config_json, protected)
    check_versions_base(export_dir, protected, locked=True)
    existing = versions_in(export_dir)
    version = step if step >= 0 else max(existing, default=0) + 1
    path = os.path.join(export_dir, str(version))
    newer = [v for v in existing if v > version]
    if len(newer) >= keep_versions:
      raise UserError(f'--export_dir={export_dir} holds versions up to {max(newer)}; version {version} would be '
                      f'removed at once (--keep_export_versions={keep_versions} keeps the newest). Export a newer '
                      f'checkpoint, raise --keep_export_versions, or use another --export_dir.')
    if tf.io.gfile.exists(path):
      log.info('%s exists: a version is never changed, so it is left as it is (remove it to export that step '
               'again)', path)
    else:
      _write_saved_model(model, path, config_json, protected)
    for old in sorted(versions_in(export_dir))[:-keep_versions]:
      files.remove_tree(os.path.join(export_dir, str(old)))
    return path
  finally:
    lock.release()


def check_export_place(export_dir: str, protected=(), keep_versions: int = 0) -> None:
  """check_export_target, or check_versions_base for the versioned layout."""
  if keep_versions:
    check_versions_base(export_dir, protected)
  else:
    check_export_target(export_dir, protected)


def versions_in(base: str) -> list:
  """The version numbers of a base folder of versions (its folders named by a number that hold a SavedModel)."""
  if not tf.io.gfile.isdir(base):
    return []
  names = [e.rstrip('/') for e in tf.io.gfile.listdir(base)]
  return [int(n) for n in names if n.isdigit() and tf.io.gfile.exists(os.path.join(base, n, 'saved_model.pb'))]


VERSION_LEFTOVER = re.compile(r'(\d+)(' + re.escape(PARTIAL) + '|' + re.escape(ASIDE) + '|' + re.escape(PROBE) +
                              r'\d+)$')


def check_versions_base(base: str, protected=(), flag: str = 'export_dir', locked: bool = False) -> None:
  """Refuses (UserError, nothing touched) a base folder for versions that holds anything but versions (numbered
  folders holding a SavedModel, and the leftovers of a killed export, which `locked` clears): one SavedModel of the
  single layout, other files, a link, a run's folder, a base another export holds."""
  check_export_target(base, protected, flag, locked, probe_only=True)
  if not tf.io.gfile.exists(base):
    return
  if not tf.io.gfile.isdir(base):
    raise UserError(f'--{flag}={base} is a file; versions go in a folder. Give a new or empty directory.')
  names = sorted(_listing(base))
  if 'saved_model.pb' in names:
    raise UserError(f'--{flag}={base} holds one SavedModel (the single layout, --keep_export_versions=0); versions '
                    f'go in a folder of their own: give another --{flag}, or remove that SavedModel.')
  for name in names:
    leftover, path = VERSION_LEFTOVER.match(name), os.path.join(base, name)
    # In a bucket a version is written in place: one that a killed export left has our record and no saved_model.pb.
    unfinished = (name.isdigit() and not tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')) and
                  tf.io.gfile.exists(os.path.join(path, 'config.json')))
    if leftover and locked:
      _clear_leftovers(os.path.join(base, leftover.group(1)), flag)
    elif unfinished and locked:
      files.remove_tree(path)
    elif not (leftover or unfinished or name.isdigit() and tf.io.gfile.exists(os.path.join(path, 'saved_model.pb'))):
      raise UserError(f'--{flag}={base} holds {name}, which is not a version (a numbered folder holding a '
                      f'SavedModel); versions are written only into a folder that holds nothing else.')


def _write_saved_model(model, export_dir: str, config_json: Optional[str], protected) -> str:
  check_export_target(export_dir, protected, locked=True)
  recorded = json.loads(config_json) if config_json else {}
  module = ExportModule(model, recorded.get('image_size') or model.image_size, recorded.get('weight_decay', 0.0))
  local = files.is_local(export_dir)
  target = export_dir + PARTIAL if local else export_dir
  had_one = tf.io.gfile.exists(export_dir)
  left = 'the previous one is still there' if had_one and local else 'nothing was left there'
  with preemption.abort_on_signals(lambda name: f'stopped by {name} while writing the SavedModel to {export_dir}; '
                                                f'{left}. Rerun the same command to export.') as signals:
    try:
      if not local:
        files.remove_tree(target)
      if files.parent(target):
        tf.io.gfile.makedirs(files.parent(target))
      if config_json:  # first, so that it is in place before saved_model.pb (and marks a partial one as ours)
        files.write_atomically(os.path.join(target, 'config.json'), config_json)
      options = tf.saved_model.SaveOptions()
      with _tracing_as_saved(options):
        signatures = module.trace()
      tf.saved_model.save(module, target, signatures=signatures, options=options)
      if local:
        with signals.deferred():  # the swap is not cut in half
          files.replace_directory(target, export_dir)
    except BaseException as e:
      with signals.deferred():  # a second signal (Ctrl-C twice) does not cut the cleanup short
        files.remove_tree(target)
      if signals.received:  # whatever TF's code made of the Interrupted raised inside it
        raise signals.interrupted() from None
      if isinstance(e, (tf.errors.OpError, OSError)):
        raise UserError(f'cannot write the SavedModel to --export_dir={export_dir} ({files.describe_error(e)}); '
                        f'{left}.') from None
      raise
  if signals.received:  # arrived while the new SavedModel took the old one's place, or TF's code dropped it
    raise Interrupted(f'stopped by {signal.Signals(signals.received).name} right after writing the SavedModel to '
                      f'{export_dir} (complete).', signals.received)
  return export_dir
