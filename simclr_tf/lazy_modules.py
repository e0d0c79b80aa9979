"""A name -> module mapping whose modules are imported when first looked up (the mode and encoder registries:
their names are known without importing TensorFlow)."""

import importlib
from types import ModuleType
from typing import Iterator, Mapping


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
