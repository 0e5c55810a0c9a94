"""Fixtures of the LoRA tests: the tiny random checkpoints of `tests/models/model_cases.py`
(built once per session, lazily) and helpers shared by the test files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_MODELS_TESTS = str(Path(__file__).resolve().parents[1] / "models")
if _MODELS_TESTS not in sys.path:  # model_cases.py, when tests/lora runs on its own
  sys.path.insert(0, _MODELS_TESTS)

from model_cases import make_hf  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
  """`hf_checkpoint(name)`: the folder of the tiny checkpoint `name` of model_cases,
  saved once per session (load a fresh torch model from it for each use: PEFT changes
  the model it wraps)."""
  root = tmp_path_factory.mktemp("lora_checkpoints")
  made = {}

  def get(name: str) -> Path:
    if name not in made:
      made[name] = root / name
      make_hf(name, made[name])
    return made[name]

  return get
