"""A tiny E2E fine-tune of the package base on ../shared/data/e2e, and what it leaves:
metrics.jsonl, TensorBoard events, the evaluation loss, the task evaluation of the first
20 MRs of the test set (beam search, the five metrics, the results file), the same
evaluation by --eval-only from the checkpoint and from the adapter, the PEFT adapter and
the Hugging Face base (round trip through transformers + peft)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

from adaprelora_jax.eval import read_e2e_references, read_results
from adaprelora_jax.train import config_by_name, read_metrics, train
from adaprelora_jax.train.config import ConfigError
from adaprelora_jax.train.eval_run import evaluate_saved
from adaprelora_jax.train.evaluate import metrics_from_predictions
from adaprelora_jax.train.metrics import TENSORBOARD_DIR
from train_helpers import BASE_STEPS

STEPS = 40
# The first 20 MRs of testset_w_refs.csv are its first 142 rows.
EVAL_ROWS, EVAL_MRS = 142, 20
# Generated tokens per MR (bytes: the start of a sentence; the recipe's 64 are GPT-2 tokens).
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def e2e_run(package_base, e2e_dir, tmp_path_factory):
  """gpt2_e2e_tiny on the session's package base (cached, so the base is also exported to
  OUTPUT_DIR/base). AdamW: the test is about the loop on E2E data, and AdaPreLoRA needs
  more than 40 steps here (docs/training.md)."""
  out = tmp_path_factory.mktemp("e2e")
  config = config_by_name(
      "gpt2_e2e_tiny", base_steps=BASE_STEPS,
      train_file=str(e2e_dir / "devset.csv"), eval_file=str(e2e_dir / "testset_w_refs.csv"),
      eval_rows=EVAL_ROWS, eval_every=20, max_steps=STEPS, optimizer="adamw",
      learning_rate=1e-2, warmup_steps=3, checkpoint_every=20, max_new_tokens=NEW_TOKENS,
      eval_batch_size=EVAL_MRS)
  result = train(config, out, devices=jax.devices()[:2], progress=False,
                 print_fn=lambda _: None)
  return config, result


def test_loss_falls_and_metrics_are_written(e2e_run):
  _, e2e_run = e2e_run
  records = read_metrics(e2e_run.output_dir)
  steps = [r for r in records if "loss" in r]
  assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
  for r in steps:
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "step_time_s"} <= set(r)
  losses = np.array([r["loss"] for r in steps])
  assert losses[-5:].mean() < losses[:3].mean() - 0.15, losses
  evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
  assert [s for s, _ in evals] == [20, 40]
  assert evals[-1][1] < evals[0][1]
  assert np.isfinite(evals[-1][1]) and 0.3 < evals[-1][1] < 4.0


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
  """Scalars of the event files in `folder`, read with tensorboardX's protobufs."""
  from tensorboardX.proto import event_pb2

  scalars: dict[str, list[tuple[int, float]]] = {}
  for file in folder.glob("events.out.tfevents.*"):
    data = file.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_logs_read_back(e2e_run):
  _, e2e_run = e2e_run
  scalars = _tensorboard_scalars(e2e_run.output_dir / TENSORBOARD_DIR)
  loss = dict(scalars["loss"])
  metrics = {r["step"]: r["loss"] for r in read_metrics(e2e_run.output_dir) if "loss" in r}
  assert sorted(loss) == sorted(metrics)
  np.testing.assert_allclose([loss[s] for s in sorted(loss)],
                             [metrics[s] for s in sorted(metrics)], rtol=1e-6)
  assert [s for s, _ in scalars["eval_loss"]] == [20, 40]
  assert "learning_rate" in scalars


def test_peft_round_trip_of_base_and_adapter(e2e_run):
  """transformers + peft on OUTPUT_DIR/base and OUTPUT_DIR/adapter give our logits."""
  _, e2e_run = e2e_run
  import peft
  import torch
  import transformers

  from adaprelora_jax.lora import load_peft_adapter
  from adaprelora_jax.models import from_pretrained

  out = e2e_run.output_dir
  assert e2e_run.base_dir == out / "base"
  base = transformers.AutoModelForCausalLM.from_pretrained(
      out / "base", attn_implementation="eager").eval()
  model = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
  ids = np.array([list(b"name: The Eagle; food: French\nThe Eagle")], np.int64)
  with torch.no_grad():
    theirs = model(torch.tensor(ids)).logits.numpy()
  ours_model = load_peft_adapter(from_pretrained(out / "base"), out / "adapter")
  ours = np.asarray(ours_model(ids.astype(np.int32)))
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  # The adapter is trained (lora_B moved away from 0) and changes the base's output.
  with torch.no_grad(), model.disable_adapter():
    plain = model(torch.tensor(ids)).logits.numpy()
  assert np.abs(plain - theirs).max() > 1e-3


def test_end_of_run_evaluates_the_first_20_mrs_by_beam_search(e2e_run, e2e_dir):
  """One hypothesis per MR, all five metrics in range, the results file recomputes."""
  _, run = e2e_run
  path = run.output_dir / "results" / f"e2e_test_step{STEPS}.json"
  assert run.task_results is not None and run.task_results.path == path
  metrics, predictions = read_results(path)
  mrs, references = read_e2e_references(e2e_dir / "testset_w_refs.csv")
  assert len(predictions) == EVAL_MRS
  assert [p["mr"] for p in predictions] == mrs[:EVAL_MRS]
  assert [p["references"] for p in predictions] == references[:EVAL_MRS]
  assert all(p["prediction"].strip() for p in predictions)
  scores = {k: v["score"] for k, v in metrics.items()}
  assert set(scores) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
  for name in ("BLEU", "METEOR", "ROUGE_L"):
    assert 0.0 <= scores[name] <= 1.0, scores
  # 40 steps of a byte-level tiny model: low scores, but some overlap with the references.
  assert scores["ROUGE_L"] > 0.02 and scores["NIST"] > 0 and 0 <= scores["CIDEr"] < 10, scores
  assert all(v["implementation"] for v in metrics.values())
  assert metrics_from_predictions("e2e", predictions) == metrics
  info = json.loads(path.read_text())["info"]
  assert info["generation"]["num_beams"] == 10 and info["generation"]["length_penalty"] == 0.8
  assert info["generation"]["no_repeat_ngram_size"] == 4
  assert info["rows_read"] == EVAL_ROWS and info["evaluated"] == EVAL_MRS


def test_eval_only_from_checkpoint_and_adapter_reproduces_the_run(e2e_run, tmp_path):
  """--eval-only restores the newest checkpoint (or loads the exported adapter onto the
  base) and generates exactly what the end of the run generated."""
  config, run = e2e_run
  _, want = read_results(run.task_results.path)
  quiet = lambda _: None  # noqa: E731
  devices = jax.devices()[:2]
  from_checkpoint = evaluate_saved(config, run.output_dir, devices=devices, print_fn=quiet)
  assert from_checkpoint.path == run.task_results.path  # step40, rewritten
  from_adapter = evaluate_saved(config, tmp_path, adapter=run.output_dir / "adapter",
                                devices=devices, print_fn=quiet)
  assert from_adapter.path == tmp_path / "results" / "e2e_test_adapter.json"
  for results in (from_checkpoint, from_adapter):
    assert [p["prediction"] for p in results.predictions] == [p["prediction"] for p in want]
  with pytest.raises(ConfigError, match="holds no checkpoint"):
    evaluate_saved(config, tmp_path / "empty", devices=devices, print_fn=quiet)
  with pytest.raises(ConfigError, match="not a PEFT adapter folder"):
    evaluate_saved(config, tmp_path, adapter=tmp_path, devices=devices, print_fn=quiet)
