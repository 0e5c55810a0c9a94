"""`adaprelora-finetune` as a subprocess: --help, every kind of bad input (a message and
exit status 2, no traceback), and the demo with reduced steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from adaprelora_jax.train import Checkpoints, TrainState, config_by_name
from adaprelora_jax.train.config import run_identity
from adaprelora_jax.train.demo import PLOT_FILE, SUMMARY_FILE
from train_helpers import BASE_STEPS, REPO, run_command

FLAGS = ("--config", "--output-dir", "--optimizer", "--learning-rate", "--max-steps",
         "--batch-size", "--grad-accum", "--schedule", "--warmup-steps", "--seed",
         "--train-file", "--eval-file", "--eval-every", "--model-path", "--mesh",
         "--checkpoint-every", "--resume", "--no-resume", "--eval-only", "--adapter",
         "--task-eval", "--num-beams", "--max-new-tokens")


def test_help_explains_every_flag():
  proc = run_command("--help", timeout=120)
  assert proc.returncode == 0, proc.stderr
  for flag in FLAGS:
    assert flag in proc.stdout, flag
  assert "gpt2_e2e_tiny" in proc.stdout and "adaprelora" in proc.stdout


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, e2e_dir):
  """Every bad-input case, run concurrently: {case: (expected message, process)}."""
  root = tmp_path_factory.mktemp("bad")
  wrong_columns = root / "wrong_columns.csv"
  wrong_columns.write_text("meaning,text\nname[A],A is a pub.\n")
  no_rows = root / "no_rows.csv"
  no_rows.write_text('mr,ref\n"just words",Some text.\n"name[A]",\n')
  other_run = root / "other_run"
  config = config_by_name("gpt2_e2e_tiny", seed=7, train_file=str(e2e_dir / "devset.csv"))
  checkpoints = Checkpoints(other_run / "checkpoints", keep=2, identity=run_identity(config))
  checkpoints.save(TrainState(step=1, params={"x": jnp.zeros(2)}, opt_state=(),
                              rng=jax.random.key(0)))
  checkpoints.close()
  train = ("--train-file", str(e2e_dir / "devset.csv"))
  tiny = ("--config", "gpt2_e2e_tiny", "--output-dir")
  cases = {
      "unknown config": ("unknown config 'gpt9'", ("--config", "gpt9")),
      "unknown optimizer": ("unknown optimizer 'sgd'",
                            (*tiny, str(root / "a"), *train, "--optimizer", "sgd")),
      "missing file": ("no such file", (*tiny, str(root / "b"), "--train-file",
                                        str(root / "missing.csv"))),
      "wrong columns": ("needs the columns 'mr' and 'ref'",
                        (*tiny, str(root / "c"), "--train-file", str(wrong_columns))),
      "no usable row": ("no usable row", (*tiny, str(root / "d"), "--train-file",
                                          str(no_rows))),
      "different run": ("holds checkpoints of a different run",
                        (*tiny, str(other_run), *train)),
      "mesh": ("needs 3 devices", (*tiny, str(root / "e"), *train, "--mesh", "fsdp=3")),
      "eval-only without checkpoint": ("holds no checkpoint", (
          *tiny, str(root / "f"), "--eval-only", "--eval-file",
          str(e2e_dir / "testset_w_refs.csv"))),
      "eval-only without eval split": ("nothing to evaluate on", (
          *tiny, str(root / "g"), "--eval-only")),
      "adapter without eval-only": ("--adapter is for --eval-only", (
          *tiny, str(root / "h"), *train, "--adapter", str(root))),
  }
  env = dict(os.environ, PYTHONPATH=str(REPO))
  procs = {name: (message, subprocess.Popen(
      [sys.executable, "-m", "adaprelora_jax.train.cli", *args], stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env=env, cwd=REPO))
           for name, (message, args) in cases.items()}
  results = {}
  try:
    for name, (message, proc) in procs.items():
      out, err = proc.communicate(timeout=300)
      results[name] = (message, proc.returncode, out, err)
  finally:
    for _, proc in procs.values():
      proc.kill()
  return results


@pytest.mark.parametrize("case", ["unknown config", "unknown optimizer", "missing file",
                                  "wrong columns", "no usable row", "different run", "mesh",
                                  "eval-only without checkpoint", "eval-only without eval split",
                                  "adapter without eval-only"])
def test_bad_input_is_a_message_not_a_traceback(bad_runs, case):
  message, returncode, out, err = bad_runs[case]
  assert returncode == 2, (out, err)
  assert "Traceback" not in err and "Traceback" not in out
  assert "adaprelora-finetune: error:" in err and message in err, err


def test_demo_runs_both_optimizers_and_draws_the_curves(package_base, tmp_path):
  out = tmp_path / "demo"
  proc = run_command("--max-steps", "6", "--base-steps", str(BASE_STEPS), "--output-dir",
                     str(out), "--no-progress", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| adaprelora |" in proc.stdout and "| adamw |" in proc.stdout
  assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  rows = json.loads((out / SUMMARY_FILE).read_text())
  assert [r["optimizer"] for r in rows] == ["adaprelora", "adamw"]
  for r, name in zip(rows, ("adaprelora", "adamw")):
    assert r["eval_loss"] > 0 and (out / name / "adapter" / "adapter_config.json").is_file()
    assert (out / name / "base" / "model.safetensors").is_file()
