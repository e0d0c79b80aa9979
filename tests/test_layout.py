"""Where things live: every encoder family and method declares its settings beside its code (simclr_tf.settings), a
new one needs no edit of config.py, and no module imports from a layer above its own. None of these runs
TensorFlow."""

import ast
import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

from simclr_tf import config as config_lib
from simclr_tf.config import Config
from simclr_tf.methods import METHODS
from simclr_tf.models.registry import ENCODER_FIELDS, ENCODERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('registry,kind', [(ENCODERS, 'encoder'), (METHODS, 'method')])
def test_each_owner_declares_its_settings_checks_and_resume_rule_beside_its_code(registry, kind):
  fields = {f.name: f for f in dataclasses.fields(Config)}
  common = {f.name for f in dataclasses.fields(config_lib.CommonSettings)}
  owned = set()
  for name in registry:
    module = registry.settings(name)
    assert module.__name__ == registry._modules[name] + '_settings'  # pylint: disable=protected-access
    assert os.path.dirname(module.__file__) == os.path.join(ROOT, *registry._modules[name].split('.')[:-1])
    for f in dataclasses.fields(module.Settings):
      assert f.name not in common and f.name not in owned, f'{f.name} declared twice'
      owned.add(f.name)
      assert (fields[f.name].default, fields[f.name].metadata) == (f.default, f.metadata)
      assert (f.name in config_lib.RESUMABLE_CHANGES) == f.metadata['resumable']
    assert callable(module.checks) and callable(module.stages if kind == 'encoder' else module.validate)
  if kind == 'encoder':
    assert {n for names in ENCODER_FIELDS.values() for n in names} == owned
  assert 'resnet_depth' not in common and 'vit_depth' not in common and 'byol_base_momentum' not in common


def test_only_the_selected_encoder_and_method_check_their_fields():
  with pytest.raises(config_lib.UserError, match='--vit_depth must be at least 1'):
    Config(encoder='vit', vit_depth=0).validate()
  Config(encoder='resnet', vit_depth=0).validate()  # a ViT setting means nothing to a ResNet
  with pytest.raises(config_lib.UserError, match=r'--resnet_depth=7 is not supported'):
    Config(resnet_depth=7).validate()
  with pytest.raises(config_lib.UserError, match=r'--fine_tune_after_block must be between -1 and 2 \(the patch'):
    Config(encoder='vit', vit_depth=2, fine_tune_after_block=3).validate()
  with pytest.raises(config_lib.UserError, match=r'--byol_base_momentum must be in \[0, 1\]'):
    Config(method='byol', byol_base_momentum=1.5).validate()
  with pytest.raises(config_lib.UserError, match='--temperature must be positive'):
    Config(temperature=0).validate()


def _run_python(code: str, cwd: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([cwd, ROOT]))
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=120)


def _write_toy_method(folder, fields: str):
  package = os.path.join(folder, 'toy_methods')
  os.makedirs(package)
  open(os.path.join(package, '__init__.py'), 'w').close()
  with open(os.path.join(package, 'toy.py'), 'w') as f:
    f.write('raise AssertionError("declaring the settings must not import the method")\n')
  with open(os.path.join(package, 'toy_settings.py'), 'w') as f:
    f.write(textwrap.dedent('''
        import dataclasses
        from simclr_tf.errors import UserError
        from simclr_tf.settings import setting

        @dataclasses.dataclass(frozen=True)
        class Settings:
        ''') + textwrap.indent(textwrap.dedent(fields), '  ') + textwrap.dedent('''
        def checks(config):
          return [(config.toy_strength > 0, f'--toy_strength must be positive, got {config.toy_strength}.')]

        def validate(config):
          if config.memory_size:
            raise UserError('--method=toy has no memory of negatives.')
        '''))


def test_a_new_method_is_its_settings_module_and_one_registry_line(tmp_path):
  """A method registered by one line (made here before config is imported, as the line in METHODS is) brings its
  flags, their checks and their resume rule; config.py and run.py are not edited, and no TensorFlow is imported."""
  _write_toy_method(str(tmp_path), '''
      toy_strength: float = setting(0.5, 'Toy: how strong.')
      toy_log_every: int = setting(3, 'Toy: how often it logs.', resumable=True)
      ''')
  result = _run_python('''
      import sys
      from absl import flags
      from simclr_tf.methods import METHODS
      METHODS._modules['toy'] = 'toy_methods.toy'
      import run
      from simclr_tf import config
      values = flags.FlagValues()
      run.declare_flags(values)
      values(['run.py', '--method=toy', '--toy_strength=2.5', '--toy_log_every=7'])
      c = run.config_from_flags(values).validate()
      print(c.method, c.toy_strength, c.toy_log_every, sorted({'toy_strength', 'toy_log_every'} &
                                                               config.RESUMABLE_CHANGES))
      try:
        c.replace(toy_strength=-1.0).validate()
      except config.UserError as e:
        print(e)
      try:
        METHODS.settings('toy').validate(c.replace(memory_size=512))
      except config.UserError as e:
        print(e)
      print('tensorflow' in sys.modules)
      ''', str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      "toy 2.5 7 ['toy_log_every']", '--toy_strength must be positive, got -1.0.',
      '--method=toy has no memory of negatives.', 'False']


def test_a_setting_declared_by_two_owners_is_refused_at_import(tmp_path):
  _write_toy_method(str(tmp_path), '''
      toy_strength: float = setting(0.5, 'Toy: how strong.')
      temperature: float = setting(0.2, 'Toy: its own temperature.')
      ''')
  result = _run_python('''
      from simclr_tf.methods import METHODS
      METHODS._modules['toy'] = 'toy_methods.toy'
      import simclr_tf.config
      ''', str(tmp_path))
  assert result.returncode != 0
  assert 'the setting temperature of method toy is declared by method simclr too' in result.stderr


# The layers of simclr_tf, lowest first; a module imports from its own layer or below, never above.
LAYERS = (
    ('foundation', ('errors', 'settings', 'lazy_modules')),
    ('declarations (no TensorFlow)', ('config', 'reference_cli', 'models', 'models.registry', 'methods',
                                      '*_settings')),
    ('runtime', ('runtime', 'runtime.*', 'record', 'precision', 'metrics')),
    ('building blocks', ('data.*', 'models.*', 'optim.*')),
    ('what is trained and read', ('methods.*', 'training', 'training.*', 'weights', 'weights.*', 'export',
                                  'evaluation')),
    ('modes', ('modes', 'modes.*')),
)


def _layer(module: str) -> int:
  name = module[len('simclr_tf.'):]
  for index, (_, patterns) in enumerate(LAYERS):
    for pattern in patterns:
      if (name == pattern or pattern.startswith('*') and name.endswith(pattern[1:]) or
          pattern.endswith('.*') and name.startswith(pattern[:-1])):
        return index
  raise AssertionError(f'simclr_tf.{name} is in no layer of LAYERS: add it where it belongs')


def _imports(path: str):
  """The simclr_tf modules `path` imports, wherever in the file (lazy imports in functions count)."""
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith('simclr_tf.'))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('simclr_tf'):
      for alias in node.names:
        candidate = f'{node.module}.{alias.name}'
        is_module = any(os.path.exists(os.path.join(ROOT, *candidate.split('.')) + ending)
                        for ending in ('.py', '/__init__.py'))
        yield candidate if is_module else node.module


def test_no_module_imports_from_a_layer_above_its_own():
  upward = []
  for folder, _, names in os.walk(os.path.join(ROOT, 'simclr_tf')):
    for file_name in names:
      if not file_name.endswith('.py'):
        continue
      path = os.path.join(folder, file_name)
      module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')
      if module == 'simclr_tf':
        continue
      for imported in _imports(path):
        if imported != 'simclr_tf' and _layer(imported) > _layer(module):
          upward.append(f'{module} ({LAYERS[_layer(module)][0]}) imports {imported} '
                        f'({LAYERS[_layer(imported)][0]})')
  assert upward == []


def test_the_declarations_import_no_tensorflow():
  settings = [registry.settings(name).__name__ for registry in (ENCODERS, METHODS) for name in registry]
  result = _run_python(f'''
      import importlib, sys
      import run
      for name in {settings!r}:
        importlib.import_module(name)
      print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))
      ''', ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'
