"""A name -> module mapping whose modules are imported when first looked up (the mode, encoder and method
registries: their names, and the settings of the encoders and methods, are known without importing TensorFlow)."""

import importlib
from types import ModuleType
from typing import Iterator, Mapping

from simclr_tf.settings import settings_module


class LazyModules(Mapping):
  """{name: module}, each module imported on first access."""

  def __init__(self, modules: dict):
    self._modules = dict(modules)

  def __getitem__(self, name: str) -> ModuleType:
    return importlib.import_module(self._modules[name])

  def __iter__(self) -> Iterator[str]:
    return iter(self._modules)

  def __len__(self) -> int:
    return len(self._modules)

  def settings(self, name: str) -> ModuleType:
    """The TF-free settings module of `name` (simclr_tf.settings): its Settings, checks, ..."""
    return settings_module(self._modules[name])
