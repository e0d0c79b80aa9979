"""simclr-tf: SimCLRv2 pretraining, fine-tuning, distillation, evaluation and export.

  python run.py --mode=pretrain --dataset=cifar10 --image_size=32 --resnet_depth=18 --model_dir=runs/c10
  python run.py --flagfile=flags/quickstart.cfg
  simclr-tf --flagfile=flags/quickstart.cfg          (the same, once the package is installed)

Every flag is a field of simclr_tf.config.Config (see `python run.py --helpfull`). This is the only module that
reads flags: it turns them into one frozen Config and hands it down.
"""

import atexit
import contextlib
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TF's C++ start-up chatter off the console

from absl import app, flags  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf import errors, modes, reference_cli  # noqa: E402  (none imports TensorFlow)

FLAGS = flags.FLAGS


def declare_flags(flag_values=FLAGS):
  """One flag per Config field, with its default, help text and (for enums) its choices; and the flags of the
  paper's reference command line that we do not share (simclr_tf.reference_cli), so that its commands run here."""
  for name, kind, default, help_text, choices in config_lib.flag_fields():
    if name == 'mode':
      choices = tuple(modes.MODES) + reference_cli.REFERENCE_MODES
      help_text += f' The reference\'s {"|".join(reference_cli.REFERENCE_MODES)} (with --train_mode) work too.'
    _declare(flag_values, name, kind, default, help_text, choices)
  for name, (kind, help_text) in reference_cli.REFERENCE_ONLY.items():
    choices = kind if isinstance(kind, tuple) else None
    _declare(flag_values, name, str if choices else kind, None, help_text, choices)


# The module our flags are listed under in --help, whichever way run.py runs (`python run.py`: as __main__, named
# after sys.argv[0]; the `simclr-tf` command: imported as `run`).
HELP_MODULE = 'simclr-tf'
HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '-helpshort', '--helpfull', '-helpfull')


def _declare(flag_values, name, kind, default, help_text, choices):
  where = dict(flag_values=flag_values, module_name=HELP_MODULE)
  if choices and kind is str:
    flags.DEFINE_enum(name, default, list(choices), help_text, **where)
  elif kind is bool:
    flags.DEFINE_bool(name, default, help_text, **where)
  elif kind is int:
    flags.DEFINE_integer(name, default, help_text, **where)
  elif kind is float:
    flags.DEFINE_float(name, default, help_text, **where)
  else:
    flags.DEFINE_string(name, default, help_text, **where)


def print_help(full: bool = False) -> None:
  """What --help prints (the same for `python run.py` and `simclr-tf`): this module's description and every flag of
  ours; --helpfull adds absl's own flags."""
  print(__doc__.strip())
  print()
  print(FLAGS.get_help() if full else FLAGS.module_help(HELP_MODULE))


def _read(flag_values):
  """(every flag's value, ours and the reference's; the names of the flags the command line or a flagfile set)."""
  names = [name for name, *_ in config_lib.flag_fields()] + list(reference_cli.REFERENCE_ONLY)
  return ({name: flag_values[name].value for name in names},
          frozenset(name for name in names if flag_values[name].present))


# Flags that name a path: a leading ~ is the user's home, as a shell expands it (it does not in a flagfile, nor in
# --flag=~/x), never a folder named '~'.
PATH_FLAGS = ('model_dir', 'data_dir', 'checkpoint', 'teacher', 'export_dir')


def config_from_flags(flag_values=FLAGS) -> config_lib.Config:
  """The Config of the parsed flags, the reference's flags translated (one log line says how), ~ expanded in
  paths."""
  values, given = _read(flag_values)
  values.update({name: os.path.expanduser(values[name]) for name in PATH_FLAGS
                 if isinstance(values.get(name), str) and values[name].startswith('~')})
  changes, notes = reference_cli.translate(values, given)
  if notes:
    import logging
    logging.getLogger('simclr_tf').info('reference flags: %s', '; '.join(notes))
  return config_lib.Config(**{name: changes.get(name, values[name]) for name, *_ in config_lib.flag_fields()})


def given_flags(flag_values=FLAGS) -> frozenset:
  """The Config fields the user set: by their flags, or through the reference's flags."""
  values, given = _read(flag_values)
  return given | frozenset(reference_cli.translate(values, given)[0])


def parse_flags(argv):
  """absl parsing, but a bad flag ends in one line and exit code 2 instead of absl's usage dump, and --help prints
  the flags with exit code 0 (absl's exits 1)."""
  asked = [a.split('=')[0] for a in argv[1:] if a.split('=')[0] in HELP_FLAGS]
  if asked:
    print_help(full=any('full' in a for a in asked))
    sys.exit(0)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(flag_error_line(e), file=sys.stderr)
    sys.exit(2)


def flag_error_line(error: Exception) -> str:
  """absl's message as one clean line: without its own 'ERROR::' prefix (a missing flagfile) and the space it puts
  before the question mark of 'Did you mean: NAME ?'."""
  import re
  text = ' '.join(str(error).split())
  text = re.sub(r'^(ERROR:+\s*)+', '', text)
  text = re.sub(r'Did you mean: ([\w, ]+?) \?$',
                lambda m: 'Did you mean ' + ' or '.join(f'--{n}' for n in m.group(1).split(', ')) + '?', text)
  if not text.endswith(('.', '?')):
    text += '.'
  return f'error: {text} See `python run.py --helpfull`.'


def setup_logging():
  import logging
  logger = logging.getLogger('simclr_tf')
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S'))
    logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # tfds and TF deprecation warnings


def import_tensorflow_quietly():
  """Loads TF with stderr silenced: its C++ start-up lines (oneDNN notices) would bury our one-line messages.
  Python exceptions still surface. SIMCLR_TF_VERBOSE=1 shows everything."""
  if os.environ.get('SIMCLR_TF_VERBOSE'):
    with keras_without_scikit_learn():
      import tensorflow  # noqa: F401
    return
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    with keras_without_scikit_learn():
      import tensorflow  # noqa: F401
      import keras  # noqa: F401
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


@contextlib.contextmanager
def keras_without_scikit_learn():
  """Keras (which TF loads) imports scikit-learn when it is installed, for its scikit-learn wrappers, which we do
  not use: about a second of every run's start on these CPUs. Hidden while Keras loads; `embed` imports it when it
  draws its t-SNE picture."""
  if 'sklearn' in sys.modules:
    yield
    return
  sys.modules['sklearn'] = None  # `import sklearn` raises ImportError, which Keras takes as "not installed"
  try:
    yield
  finally:
    if sys.modules.get('sklearn', 0) is None:
      del sys.modules['sklearn']


def redirect_native_stderr(model_dir: str):
  """Sends what C/C++ libraries write to fd 2 (TF's runtime notices, libjpeg's complaints about corrupt files) to
  model_dir/native_stderr.log; Python's own stderr (our messages, tracebacks) stays on the terminal. A file
  descriptor needs a local file: a model_dir elsewhere (gs://, ram://) keeps them on the terminal."""
  if not model_dir or os.environ.get('SIMCLR_TF_VERBOSE'):
    return
  if '://' in model_dir and not model_dir.startswith('file://'):
    return
  model_dir = local(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  terminal = os.dup(2)
  sys.stderr = os.fdopen(terminal, 'w', buffering=1)
  path = os.path.join(model_dir, NATIVE_LOG)
  native = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(native, 2)
  os.close(native)
  atexit.register(remove_if_empty, path)  # a log of nothing is not left behind


NATIVE_LOG = 'native_stderr.log'


def remove_if_empty(path: str) -> None:
  try:
    if os.path.getsize(path) == 0:
      os.remove(path)
  except OSError:
    pass


def run(config: config_lib.Config, places_checked: bool = False, given=None, prepared: bool = False):
  """Runs the mode of a config (prepared here unless `prepared`: simclr_tf.modes.prepare); returns its result
  dict."""
  setup_logging()
  import_tensorflow_quietly()
  return modes.run(config, places_checked=places_checked, given=given, prepared=prepared)


def execute(flag_values=FLAGS, native_stderr_to_file: bool = True) -> dict:
  """What the command does once its flags are parsed (main's work; tests call it in their own process with flags
  of their own): the config, checked; the architecture a --checkpoint records, adopted; the places it writes,
  checked; then the mode. Returns the mode's result dict."""
  setup_logging()
  config = config_from_flags(flag_values).check_fields()  # the mistakes that need no TensorFlow, before it loads
  import_tensorflow_quietly()
  config = modes.prepare(config, given_flags(flag_values))  # a --checkpoint's own architecture, the mode's rules
  new_folder = bool(config.model_dir) and is_local(config.model_dir) and not os.path.exists(local(config.model_dir))
  try:
    modes.check_places(config)  # before the log file goes into model_dir
    if native_stderr_to_file:
      redirect_native_stderr(config.model_dir)
    return run(config, places_checked=True, prepared=True)
  except (errors.UserError, errors.Interrupted):
    if new_folder:
      remove_if_nothing_written(local(config.model_dir))
    raise


def is_local(path: str) -> bool:
  return '://' not in path or path.startswith('file://')


def local(path: str) -> str:
  return os.path.expanduser(path[len('file://'):] if path.startswith('file://') else path)


def remove_if_nothing_written(folder: str) -> None:
  """A model_dir this command created and then wrote nothing into (it failed before its first result: a dataset
  that cannot be found, a refused checkpoint) is removed, its empty native_stderr.log with it."""
  try:
    entries = os.listdir(folder)
    if all(e == NATIVE_LOG and os.path.getsize(os.path.join(folder, e)) == 0 for e in entries):
      for e in entries:
        os.remove(os.path.join(folder, e))
      os.rmdir(folder)
  except OSError:
    pass


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments {" ".join(argv[1:])}; flags look like --name=value.', file=sys.stderr)
    sys.exit(2)
  setup_logging()
  try:
    execute()
  except errors.Interrupted as e:  # stopped by a signal after saving
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_code)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print('interrupted; rerun the same command to resume from the last checkpoint.', file=sys.stderr)
    sys.exit(130)


def console_main():
  """The `simclr-tf` command that `pip install` puts on the PATH (pyproject.toml): the same as `python run.py`."""
  declare_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  console_main()
