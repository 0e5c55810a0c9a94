"""Fixtures of the training tests: the E2E data beside the repository, a session cache
for the package base (pre-trained briefly), tiny run configs, and the command as a
subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaprelora_jax.train import base_model
from adaprelora_jax.train.config import DataConfig, ModelSpec, OptimConfig, TrainConfig
from adaprelora_jax.lora import LoRAConfig

REPO = Path(__file__).resolve().parents[2]
# CI clones the repository next to shared/; the data is never copied into the repository.
E2E = REPO.parent / "shared" / "data" / "e2e"
# Pre-training steps of the package base in the tests (the recipe has 300).
BASE_STEPS = 100


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent XLA compilation cache for the training tests and the commands they
  start: every run of a test config compiles the same step, once."""
  import jax  # noqa: PLC0415

  cache = str(tmp_path_factory.mktemp("xla_cache"))
  names = {"jax_compilation_cache_dir": cache,
           "jax_persistent_cache_min_compile_time_secs": 0.0,
           "jax_persistent_cache_min_entry_size_bytes": 0}
  old = {name: getattr(jax.config, name) for name in names}
  env = {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  old_env = {k: os.environ.get(k) for k in env}
  for name, value in names.items():
    jax.config.update(name, value)
  os.environ.update(env)
  yield cache
  for name, value in old.items():
    jax.config.update(name, value)
  for k, v in old_env.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope="session")
def e2e_dir() -> Path:
  assert (E2E / "devset.csv").is_file(), f"E2E data missing at {E2E}"
  return E2E


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory):
  """The package-base cache of this session, in the environment of this process and of
  the commands it starts."""
  cache = tmp_path_factory.mktemp("cache")
  old = os.environ.get(base_model.CACHE_ENV)
  os.environ[base_model.CACHE_ENV] = str(cache)
  yield cache
  if old is None:
    os.environ.pop(base_model.CACHE_ENV, None)
  else:
    os.environ[base_model.CACHE_ENV] = old


@pytest.fixture(scope="session")
def package_base(cache_env) -> Path:
  """The package base pre-trained for BASE_STEPS steps (cached for the session)."""
  return base_model.ensure_package_base(BASE_STEPS, print_fn=lambda _: None, progress=False)


def tiny_config(**changes) -> TrainConfig:
  """A seconds-long LoRA run: a random tiny GPT-2, generated text, 64 tokens."""
  config = TrainConfig(
      name="tiny_test",
      model=ModelSpec(name="tiny-gpt2"),
      lora=LoRAConfig(rank=4, alpha=8, target_modules=("c_attn", "c_fc")),
      data=DataConfig(kind="generated_text", seq_len=64, generated_train=256,
                      generated_eval=16),
      optim=OptimConfig(optimizer="adaprelora", learning_rate=1e-3, warmup_steps=2),
      max_steps=12, batch_size=4, checkpoint_every=4)
  return config.replace(**changes) if changes else config


def multihost_config() -> TrainConfig:
  """The multi-host test's run: 4 devices (fsdp), checkpoints from both processes."""
  return tiny_config(max_steps=6, batch_size=8, checkpoint_every=3)


def run_command(*args: str, timeout: float = 300, env: dict | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
  """`adaprelora-finetune ARGS` (as `python -m`, so this checkout's package runs)."""
  full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
  return subprocess.run([sys.executable, "-m", "adaprelora_jax.train.cli", *args],
                        capture_output=True, text=True, timeout=timeout, env=full_env,
                        cwd=cwd or REPO)
