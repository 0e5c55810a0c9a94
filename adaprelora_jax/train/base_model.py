"""The package base: a small GPT-2 (`tiny-gpt2` with 512 positions) pre-trained on the
package's generated text (`synthetic.text_data`), so that LoRA adapts a model that
already knows something, offline.

It is built deterministically on first use by the training loop itself (every
parameter, AdamW: the `package_base_pretraining` config) and cached as a Hugging Face
folder in `$ADAPRELORA_JAX_CACHE` (default `~/.cache/adaprelora-jax`), one folder per
recipe (the config's fields), so a changed recipe never reads a stale base.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from adaprelora_jax.train.config import TrainConfig, package_base_pretraining

CACHE_ENV = "ADAPRELORA_JAX_CACHE"
# Bumped when the generated text or the recipe's meaning changes.
RECIPE_VERSION = 1


def cache_dir() -> Path:
  return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "adaprelora-jax")


def recipe(steps: int | None = None) -> TrainConfig:
  """The pre-training config of the package base (`steps` overrides its length)."""
  config = package_base_pretraining()
  return config if steps is None else config.replace(max_steps=steps)


def base_folder(config: TrainConfig) -> Path:
  """The cache folder of the base made by `config`."""
  key = json.dumps({"version": RECIPE_VERSION, "config": config.to_dict()}, sort_keys=True)
  return cache_dir() / f"package-base-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_package_base(steps: int | None = None, *, print_fn: Callable[[str], None] = print,
                        progress: bool = True) -> Path:
  """The folder of the package base, pre-training and caching it on first use."""
  import jax  # noqa: PLC0415

  from adaprelora_jax.train.loop import train  # noqa: PLC0415 (the loop builds the base)

  config = recipe(steps)
  folder = base_folder(config)
  if (folder / "model.safetensors").is_file():
    return folder
  if jax.process_count() > 1:
    from adaprelora_jax.train.config import ConfigError  # noqa: PLC0415

    raise ConfigError(f"the package base is not cached at {folder}: build it once on one "
                      "host (run the same command without multi-host start-up), or pass "
                      "--model-path")
  print_fn(f"pre-training the package base ({config.max_steps} steps, first use; cached in "
           f"{folder})")
  folder.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".building-") as tmp:
    result = train(config, Path(tmp) / "run", progress=progress, print_fn=print_fn,
                   devices=jax.local_devices()[:1])
    try:
      os.replace(result.base_dir, folder)
    except OSError:  # another process cached it first
      if not (folder / "model.safetensors").is_file():
        raise
      shutil.rmtree(result.base_dir, ignore_errors=True)
  return folder
