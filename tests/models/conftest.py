"""Session fixtures: the checkpoints of `model_cases.CASES`, built lazily, and our models
loaded from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model_cases import make_hf


class Checkpoints:
  """Lazily built `(torch model, checkpoint folder)` per case."""

  def __init__(self, root: Path):
    self.root = root
    self._made = {}

  def __call__(self, name: str):
    if name not in self._made:
      folder = self.root / name
      self._made[name] = (make_hf(name, folder), folder)
    return self._made[name]

  def copy(self, name: str, dest: Path) -> Path:
    """A private copy of the checkpoint folder of `name` (for tests that damage it)."""
    _, folder = self(name)
    shutil.copytree(folder, dest)
    return dest


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
  return Checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def loaded(checkpoints):
  """`loaded(name)`: (torch model, our model loaded from its checkpoint), cached."""
  from adaprelora_jax.models import from_pretrained

  cache = {}

  def get(name: str):
    if name not in cache:
      torch_model, folder = checkpoints(name)
      cache[name] = (torch_model, from_pretrained(folder))
    return cache[name]

  return get
