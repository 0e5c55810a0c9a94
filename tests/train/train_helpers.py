"""Helpers of the training tests (imported by name: `conftest` is ambiguous across the
test folders): paths, tiny run configs, and the command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adaprelora_jax.lora import LoRAConfig
from adaprelora_jax.train.config import DataConfig, ModelSpec, OptimConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]
# CI clones the repository next to shared/; the data is never copied into the repository.
E2E = REPO.parent / "shared" / "data" / "e2e"
# Pre-training steps of the package base in the tests (the recipe has 300).
BASE_STEPS = 100


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
