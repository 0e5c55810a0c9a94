"""Task records into training: the token arrays of each record family, a tiny run per
family (classification with the head, generation, multiple choice) through the loop,
and bad input at the command."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from task_helpers import write_jsonl, write_task

from adaprelora_jax.data import ChoiceExample, DataError, TaskData, TextExample, load_task
from adaprelora_jax.eval import target_log_likelihoods
from adaprelora_jax.models import build_model, config_by_name
from adaprelora_jax.train import cli, loop, tasks
from adaprelora_jax.train.config import config_by_name as train_config
from adaprelora_jax.train.data import ByteTokenizer
from adaprelora_jax.train.evaluate import choice_rows
from adaprelora_jax.train.heads import class_logits_fn, lm_logits_fn

TOK = ByteTokenizer()


def test_text_rows_mask_the_target_and_count_long_rows():
  task = TaskData("gsm8k", "train", "mem", (TextExample("Q: 1+1?\n", "2 #### 2"),
                                            TextExample("Q: " + "9" * 40, "x")),
                  rows_read=3, skipped={"empty target": 1})
  data = tasks.encode_text(task, TOK, seq_len=16)
  assert len(data) == 1 and dict(data.skipped) == {"empty target": 1, "longer than seq_len": 1}
  row, mask = data.tokens[0], data.loss_mask[0]
  ids = TOK.encode("Q: 1+1?\n") + TOK.encode("2 #### 2") + [TOK.eos_id]
  np.testing.assert_array_equal(row[:len(ids)], ids)
  # Position i predicts token i + 1: exactly the target and its end token are trained on.
  np.testing.assert_array_equal(row[1:][mask == 1], TOK.encode("2 #### 2") + [TOK.eos_id])
  assert "1 longer than seq_len" in data.report("train")


def test_choice_rows_score_each_choice_like_the_unpadded_model():
  """One row per (question, choice), as the evaluation builds them; the summed
  log-likelihoods of the rows are the float64 log-softmax of the choice's tokens after its
  prompt, a prompt too long loses its start (counted once per question), and padding
  changes nothing."""
  examples = (ChoiceExample("Q: sky?\nAnswer:", (" blue", " green", " red sky"), 0),
              ChoiceExample("Q: " + "long " * 20, (" a", " b"), 1),
              ChoiceExample("Q: 2+2?\nAnswer:", (" 4", " 5"), 0))
  seq_len = 24
  rows = choice_rows(TOK, examples, seq_len)
  assert rows.truncated == 1 and rows.tokens.shape == (7, seq_len)
  model = build_model(config_by_name("tiny-llama"), rngs=nnx.Rngs(0))
  logits = lm_logits_fn(model)(rows.tokens, rows.attention)
  scores = np.asarray(target_log_likelihoods(logits, jnp.asarray(rows.targets),
                                             jnp.asarray(rows.score_mask)))
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  pairs = [(q, c) for q, e in enumerate(examples) for c in range(len(e.choices))]
  for r, (q, c) in enumerate(pairs):
    prompt, choice = TOK.encode(examples[q].prompt), TOK.encode(examples[q].choices[c])
    prompt = prompt[max(0, len(prompt) + len(choice) - seq_len):]
    np.testing.assert_array_equal(rows.tokens[r, :len(prompt) + len(choice)], prompt + choice)
    expected = sum(logp[r, len(prompt) - 1 + k, t] for k, t in enumerate(choice))
    np.testing.assert_allclose(scores[r], expected, rtol=1e-5)
  # The longest row (question 0, " red sky") alone and unpadded: the same logits.
  n = int(rows.attention[2].sum())
  alone = model(jnp.asarray(rows.tokens[2:3, :n]))
  np.testing.assert_allclose(np.asarray(alone)[0], logits[2, :n], rtol=1e-4, atol=1e-5)
  assert rows.score_mask.sum(-1).tolist() == [5, 6, 8, 2, 2, 2, 2]


TASK_OF = {"llama_tiny_glue": "glue/sst2", "llama_tiny_gsm8k": "gsm8k",
           "llama_tiny_arc": "arc/challenge"}


def _run(tmp_path, name, **changes):
  """A tiny config on small files it reads with the task's loader, on 2 devices."""
  train_file, eval_file = write_task(tmp_path / "data", TASK_OF[name])
  config = train_config(name, train_source=str(train_file), eval_source=str(eval_file),
                        seq_len=64, **changes)
  return loop.train(config, tmp_path / name, progress=False, print_fn=lambda _: None,
                    devices=jax.devices()[:2])


def test_tiny_glue_trains_head_and_lora(tmp_path):
  result = _run(tmp_path, "llama_tiny_glue", checkpoint_every=60)
  assert dict(result.data.train.skipped) == {"missing field 'label'": 1}
  losses = [loss for _, loss in result.losses]
  print(f"\nllama_tiny_glue losses {losses[0]:.3f} -> {losses[-1]:.3f}, eval "
        f"{result.eval_losses[-1][1]:.3f}")
  assert np.mean(losses[-3:]) < 0.5 * losses[0]
  assert result.eval_losses[-1][1] < 0.5 * np.log(2)
  # The head trained beside the LoRA factors, exported as PEFT's modules_to_save.
  head = result.params["score"]["kernel"]
  tensors = safetensors.numpy.load_file(result.adapter_dir / "adapter_model.safetensors")
  np.testing.assert_array_equal(tensors["base_model.model.score.weight"], head.T)
  assert json.loads((result.adapter_dir / "adapter_config.json").read_text())[
      "modules_to_save"] == ["score"]
  # The evaluation's callable on the evaluation split.
  evaluation = result.data.eval
  class_logits = class_logits_fn(result.model, result.mesh)
  logits = np.asarray(class_logits(evaluation.tokens, evaluation.attention_mask))
  assert logits.shape == (len(evaluation), 2)
  print(f"llama_tiny_glue eval accuracy {np.mean(logits.argmax(-1) == evaluation.labels):.3f}")
  assert np.mean(logits.argmax(-1) == evaluation.labels) >= 0.9
  # The end of the run evaluated the split on the task's metric, from those same logits.
  results = result.task_results
  assert results.task == "glue/sst2" and len(results.predictions) == len(evaluation)
  np.testing.assert_allclose(results.metrics["accuracy"]["score"],
                             np.mean(logits.argmax(-1) == evaluation.labels))
  assert results.path.is_file()
  # The checkpoint holds the head: a resumed run starts from the trained one.
  resumed = _run(tmp_path, "llama_tiny_glue", checkpoint_every=60, max_steps=122)
  assert resumed.start_step == 120
  assert resumed.losses[0][1] < 0.5 * losses[0]


def test_tiny_gsm8k_trains_as_lm(tmp_path):
  """(The tiny ARC run is the llm_finetune example's test, tests/test_examples.py.)"""
  result = _run(tmp_path, "llama_tiny_gsm8k")
  losses = [loss for _, loss in result.losses]
  print(f"\nllama_tiny_gsm8k losses {losses[0]:.3f} -> {losses[-1]:.3f}, eval "
        f"{result.eval_losses[-1][1]:.3f}")
  assert np.mean(losses[-3:]) < losses[0] - 0.4
  assert result.eval_losses[-1][1] < losses[0] - 0.4
  assert result.data.eval_task.task == "gsm8k" and result.data.family == "text"
  assert dict(result.data.train.skipped) == {"missing field 'answer'": 1}
  # The end of the run generated an answer per question and scored the final numbers.
  results = result.task_results
  assert len(results.predictions) == len(result.data.eval_task.examples)
  assert 0.0 <= results.metrics["exact_match"]["score"] <= 1.0 and results.path.is_file()


@pytest.mark.parametrize("args, message", [
    (["--train-source", "{bad}"], "needs the fields"),
    ([], "pass --train-source"),
    (["--train-source", "{good}", "--seq-len", "8"], "no usable row with seq_len 8"),
    (["--train-source", "{good}", "--task", "gsm8k"], "needs the fields ['question'"),
    (["--train-source", "{good}", "--config", "gpt2_e2e_tiny", "--task", "gsm8k"],
     "needs data kind 'task'"),
], ids=["malformed-file", "no-source", "all-rows-too-long", "other-task", "not-a-task"])
def test_command_bad_task_input_exits_2(tmp_path, capsys, args, message):
  """A file without the task's fields or without a usable row, a missing source, a task
  flag on a config without tasks: a one-line message and exit status 2."""
  good, _ = write_task(tmp_path, "glue/sst2", 4, 1)
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a film", "label": 1}])
  args = [a.format(good=good, bad=bad) for a in args]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--config", "llama_tiny_glue", *args, "--output-dir", str(tmp_path / "out"),
              "--no-progress"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("adaprelora-finetune: error:") and message in err, err
  assert "Traceback" not in err
  assert not (tmp_path / "out" / "checkpoints").exists() or not any(
      (tmp_path / "out" / "checkpoints").iterdir())


def test_records_that_cannot_train_are_data_errors(tmp_path):
  glue, _ = write_task(tmp_path, "glue/sst2", 4, 1)
  gsm8k, _ = write_task(tmp_path, "gsm8k", 4, 1)
  with pytest.raises(DataError, match="no usable row"):
    tasks.encode_classification(load_task("glue/sst2", glue), TOK, seq_len=8)
  with pytest.raises(DataError, match="expected ClassificationExample"):
    tasks.encode_classification(load_task("gsm8k", gsm8k), TOK, seq_len=64)
  with pytest.raises(DataError, match="needs its label_names"):
    tasks.encode_classification(dataclasses.replace(load_task("glue/sst2", glue),
                                                    label_names=()), TOK, seq_len=64)


def test_config_tasks_are_the_loaders():
  from adaprelora_jax.data import TASKS  # noqa: PLC0415
  from adaprelora_jax.train.config import TASK_FAMILIES  # noqa: PLC0415

  assert set(TASK_FAMILIES) == set(TASKS)
