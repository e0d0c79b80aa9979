"""Every flagfile recipe parses into a valid Config, and the paper's numbers are in them."""

import glob
import os

import pytest
from absl import flags

import run as run_py
from conftest import ROOT

RECIPES = sorted(glob.glob(os.path.join(ROOT, 'flags', '*.cfg')))


def parse(path):
  values = flags.FlagValues()
  run_py.declare_flags(values)
  cwd = os.getcwd()
  os.chdir(ROOT)  # recipes include each other by paths relative to the repository root
  try:
    values(['run.py', f'--flagfile={path}'])
  finally:
    os.chdir(cwd)
  return run_py.config_from_flags(values)


NEEDS = {'finetune': {}, 'eval': {'checkpoint': 'x'}, 'distill': {'teacher': 'x'}, 'pretrain': {}}


@pytest.mark.parametrize('path', RECIPES, ids=os.path.basename)
def test_recipe_is_valid(path):
  config = parse(path)
  # Recipes leave the user's own paths (--teacher) open; with them given they must validate.
  config = config.replace(**{k: v for k, v in NEEDS[config.mode].items() if not getattr(config, k)}).validate()
  assert config.model_dir


def test_paper_numbers():
  r152 = parse(os.path.join(ROOT, 'flags', 'imagenet_pretrain_r152_3x_sk1.cfg'))
  assert (r152.resnet_depth, r152.width_multiplier, r152.sk_ratio) == (152, 3, 0.0625)
  assert (r152.train_batch_size, r152.learning_rate, r152.learning_rate_scaling, r152.temperature) == (
      4096, 0.075, 'sqrt', 0.1)
  cifar = parse(os.path.join(ROOT, 'flags', 'cifar10_pretrain.cfg'))
  assert (cifar.train_batch_size, cifar.temperature, cifar.use_blur, cifar.color_jitter_strength) == (
      512, 0.5, False, 0.5)


def test_finetune_and_distill_recipes():
  one = parse(os.path.join(ROOT, 'flags', 'finetune_imagenet_1pct.cfg'))
  assert (one.dataset, one.train_epochs, one.ft_proj_selector, one.learning_rate, one.weight_decay) == (
      'imagenet2012_subset/1pct', 60, 1, 0.005, 0)
  linear = parse(os.path.join(ROOT, 'flags', 'linear_eval_imagenet.cfg'))
  assert (linear.fine_tune_after_block, linear.optimizer, linear.train_epochs) == (4, 'momentum', 100)
  small = parse(os.path.join(ROOT, 'flags', 'distill_r152_3x_sk1_to_r50_1x_sk1.cfg'))
  assert (small.resnet_depth, small.width_multiplier, small.distill_temperature, small.train_epochs) == (
      50, 1, 1.0, 400)
  assert parse(os.path.join(ROOT, 'flags', 'distill_self_r152_3x_sk1.cfg')).distill_temperature == 0.1


def test_no_recipe_or_documented_command_is_warm_up_to_its_end():
  """A training command whose warm-up lasts the whole run never decays its learning rate (it ends at its peak):
  none of the flagfiles and none of the commands of the README and docs/ is one."""
  from test_docs import ALL
  configs = [(os.path.relpath(path, ROOT), parse(path)) for path in RECIPES]
  for where, line, args in ALL:
    values = flags.FlagValues()
    run_py.declare_flags(values)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
      values(['run.py', *args])
    finally:
      os.chdir(cwd)
    configs.append((f'{where}:{line}', run_py.config_from_flags(values)))
  training = [(where, c) for where, c in configs if c.mode in ('pretrain', 'finetune', 'distill') and not c.train_steps]
  assert len(training) >= 15
  for where, config in training:
    assert config.warmup_epochs < config.train_epochs, f'{where}: --warmup_epochs={config.warmup_epochs} ' \
                                                       f'--train_epochs={config.train_epochs}'
