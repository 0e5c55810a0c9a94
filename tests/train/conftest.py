"""Fixtures of the training tests: the E2E data beside the repository, a session cache
for the package base (pre-trained briefly), tiny run configs, and the command as a
subprocess.

Under pytest-xdist (CI: `-n 2`) the package base and the XLA compilation cache are shared
by the workers of one session (a folder beside their temporary folders, the base built
under a file lock): the first worker that needs the base builds it, the other waits and
reads it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from adaprelora_jax.train import base_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_helpers

from train_helpers import BASE_STEPS, E2E  # noqa: E402


def _session_dir(tmp_path_factory, name: str) -> Path:
  """A folder of this test session, shared by its xdist workers (each worker's
  temporary root is a sibling under the session's)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  folder = root / name
  folder.mkdir(exist_ok=True)
  return folder


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent XLA compilation cache for the training tests and the commands they
  start: every run of a test config compiles the same step, once."""
  import jax  # noqa: PLC0415

  cache = str(_session_dir(tmp_path_factory, "xla_cache"))
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
  cache = _session_dir(tmp_path_factory, "package_base_cache")
  old = os.environ.get(base_model.CACHE_ENV)
  os.environ[base_model.CACHE_ENV] = str(cache)
  yield cache
  if old is None:
    os.environ.pop(base_model.CACHE_ENV, None)
  else:
    os.environ[base_model.CACHE_ENV] = old


@pytest.fixture(scope="session")
def package_base(cache_env) -> Path:
  """The package base pre-trained for BASE_STEPS steps (cached for the session; one
  xdist worker builds it while the other waits on the lock)."""
  with FileLock(str(cache_env / "build.lock")):
    return base_model.ensure_package_base(BASE_STEPS, print_fn=lambda _: None,
                                          progress=False)
