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


def test_llm_finetune_example_runs_a_tiny_task_config(tmp_path, capsys):
  """The 7B example's CPU counterpart: llama_tiny_arc on a small ARC file (multiple
  choice trained as LM on the right choice); the loss falls, the adapter is written, and
  the evaluation's `lm_logits` callable scores every (question, choice) row."""
  import json  # noqa: PLC0415

  import jax.numpy as jnp  # noqa: PLC0415
  import llm_finetune  # noqa: E402, PLC0415

  from adaprelora_jax.eval import target_log_likelihoods  # noqa: PLC0415
  from adaprelora_jax.train.heads import lm_logits_fn  # noqa: PLC0415
  from adaprelora_jax.train.tasks import encode_choice_rows  # noqa: PLC0415

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
  rows = encode_choice_rows(result.data.eval_task, result.data.tokenizer, 128)
  logits = lm_logits_fn(result.model, result.mesh)(rows.tokens[:, :-1], rows.attention_mask)
  scores = np.asarray(target_log_likelihoods(jnp.asarray(logits), jnp.asarray(rows.tokens[:, 1:]),
                                             jnp.asarray(rows.loss_mask)))
  assert scores.shape == (3 * 16,) and np.all(scores < 0)
