"""The examples run and do what they print."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import numpy as np  # noqa: E402
import quickstart  # noqa: E402


def test_quickstart_loss_falls():
  losses = quickstart.main(["--steps", "60"])
  assert len(losses) == 60
  assert losses[-1] < 0.3 * losses[0]


def test_lora_gpt2_example_trains_only_lora_and_loss_falls():
  import lora_gpt2  # noqa: E402

  losses = lora_gpt2.main(["--steps", "40", "--batch", "8"])
  assert np.mean(losses[-5:]) < losses[0] - 0.2


E2E_SMOKE = ["--model-name", "tiny-gpt2", "--max-steps", "3", "--batch-size", "4",
             "--seq-len", "256", "--devices", "1", "--eval-rows", "8", "--max-new-tokens", "24"]


def test_gpt2_e2e_example_trains_evaluates_and_exports(tmp_path):
  """A random tiny GPT-2 (the smoke-test stand-in for the package base), 3 steps."""
  import csv
  import json

  import gpt2_e2e  # noqa: E402

  from adaprelora_jax.eval import read_results

  out = gpt2_e2e.main([*E2E_SMOKE, "--num-beams", "2", "--optimizer", "adaprelora",
                       "--output-dir", str(tmp_path)])
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval_loss"])
  metrics, predictions = read_results(out["results"])
  with open(gpt2_e2e.E2E / "testset_w_refs.csv", newline="") as f:
    mrs = {row["mr"] for _, row in zip(range(8), csv.DictReader(f))}
  assert len(predictions) == len(mrs)  # one generation per MR of the first 8 rows
  assert set(metrics) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
  assert 0.0 <= out["metrics"]["BLEU"] <= 1.0 and 0.0 <= out["metrics"]["ROUGE_L"] <= 1.0
  assert json.loads((out["results"]).read_text())["info"]["generation"]["num_beams"] == 2
  assert (out["adapter"] / "adapter_config.json").is_file()


def test_compare_optimizers_example_prints_one_row_per_optimizer(tmp_path, capsys):
  import compare_optimizers  # noqa: E402

  rows = compare_optimizers.main([*E2E_SMOKE, "--num-beams", "1", "--optimizers",
                                  "adaprelora,adamw",
                                  "--learning-rates", "adamw=1e-2", "--output-dir",
                                  str(tmp_path)])
  assert [r["optimizer"] for r in rows] == ["adaprelora", "adamw"]
  assert rows[1]["learning_rate"] == 1e-2 and rows[0]["learning_rate"] == 1e-3
  printed = capsys.readouterr().out
  for r in rows:
    assert np.isfinite(r["loss"]) and set(r["metrics"]) == set(compare_optimizers.METRICS)
    assert f"| {r['optimizer']} |" in printed
  assert (tmp_path / "comparison.md").read_text().count("\n") == 4
  assert (tmp_path / "adamw" / "results").is_dir()


def test_llm_finetune_example_runs_a_tiny_task_config(tmp_path, capsys):
  """The 7B example's CPU counterpart: llama_tiny_arc on a small ARC file (multiple
  choice trained as LM on the right choice); the loss falls, the adapter is written, and
  the evaluation's `lm_logits` callable scores every (question, choice) row."""
  import json  # noqa: PLC0415

  import jax.numpy as jnp  # noqa: PLC0415
  import llm_finetune  # noqa: E402, PLC0415

  from adaprelora_jax.eval import target_log_likelihoods  # noqa: PLC0415
  from adaprelora_jax.train.heads import lm_logits_fn  # noqa: PLC0415
  from adaprelora_jax.train.evaluate import choice_rows  # noqa: PLC0415

  rows = [{"question": f"capital {c}?", "answerKey": "B",
           "choices": {"text": ["x", c.upper(), "y"], "label": ["A", "B", "C"]}}
          for c in "abcdefghijklmnop"]
  source = tmp_path / "arc.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in rows))
  result = llm_finetune.main(["--config", "llama_tiny_arc", "--train-source", str(source),
                              "--eval-source", str(source), "--max-steps", "12",
                              "--output-dir", str(tmp_path / "run")])
  losses = [loss for _, loss in result.losses]
  assert np.mean(losses[-3:]) < losses[0] - 0.5
  assert (result.adapter_dir / "adapter_model.safetensors").is_file()
  out = capsys.readouterr().out
  assert "llama_tiny_arc (arc/challenge): loss" in out and "eval_loss" in out
  print(f"llama_tiny_arc losses {losses[0]:.3f} -> {losses[-1]:.3f}")
  rows = choice_rows(result.data.tokenizer, result.data.eval_task.examples, 128)
  logits = lm_logits_fn(result.model, result.mesh)(rows.tokens, rows.attention)
  scores = np.asarray(target_log_likelihoods(jnp.asarray(logits), jnp.asarray(rows.targets),
                                             jnp.asarray(rows.score_mask)))
  assert scores.shape == (3 * 16,) and np.all(scores < 0)
  # The end of the run scored every question both ways from those log-likelihoods.
  results = result.task_results
  assert set(results.metrics) == {"acc", "acc_norm"} and len(results.predictions) == 16
  summed = scores.reshape(16, 3).argmax(-1)
  np.testing.assert_allclose(results.metrics["acc"]["score"], np.mean(summed == 1), atol=1e-6)
