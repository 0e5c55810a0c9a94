"""Task records into training: the token arrays of each record family, a tiny run per
family (classification with the head, generation, multiple choice) through the loop,
and bad input at the command."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from task_helpers import arc_split, fake_load_task, glue_split, gsm8k_split

from adaprelora_jax.data import ChoiceExample, DataError, TaskData, TextExample
from adaprelora_jax.eval import target_log_likelihoods
from adaprelora_jax.models import build_model, config_by_name
from adaprelora_jax.train import cli, loop, tasks
from adaprelora_jax.train.config import config_by_name as train_config
from adaprelora_jax.train.data import ByteTokenizer
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
  """One row per (question, choice); the summed log-likelihoods of the rows are the
  float64 log-softmax of the choice's tokens after its prompt, and padding changes nothing."""
  task = TaskData("arc/easy", "test", "mem", (
      ChoiceExample("Q: sky?\nAnswer:", (" blue", " green", " red sky"), 0),
      ChoiceExample("Q: " + "long " * 20, (" a", " b"), 1),
      ChoiceExample("Q: 2+2?\nAnswer:", (" 4", " 5"), 0)), rows_read=3)
  rows = tasks.encode_choice_rows(task, TOK, seq_len=24)
  assert dict(rows.skipped) == {"longer than seq_len": 1}
  assert rows.question.tolist() == [0, 0, 0, 1, 1] and rows.choice.tolist() == [0, 1, 2, 0, 1]
  assert rows.examples.tolist() == [0, 2] and rows.answers.tolist() == [0, 0]
  model = build_model(config_by_name("tiny-llama"), rngs=nnx.Rngs(0))
  logits = lm_logits_fn(model)(rows.tokens[:, :-1], rows.attention_mask)
  scores = np.asarray(target_log_likelihoods(logits, jnp.asarray(rows.tokens[:, 1:]),
                                             jnp.asarray(rows.loss_mask)))
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  for r, (q, c) in enumerate(zip(rows.question, rows.choice)):
    example = task.examples[rows.examples[q]]
    prompt, choice = TOK.encode(example.prompt), TOK.encode(example.choices[c])
    np.testing.assert_array_equal(rows.tokens[r, :len(prompt) + len(choice)], prompt + choice)
    expected = sum(logp[r, len(prompt) - 1 + k, t] for k, t in enumerate(choice))
    np.testing.assert_allclose(scores[r], expected, rtol=1e-5)
  # The longest row (question 0, " red sky") alone and unpadded: the same logits.
  n = int(rows.attention_mask[2].sum())
  alone = model(jnp.asarray(rows.tokens[2:3, :n]))
  np.testing.assert_allclose(np.asarray(alone)[0], logits[2, :n], rtol=1e-4, atol=1e-5)
  assert rows.loss_mask.sum(-1).tolist() == [5, 6, 8, 2, 2]


def _run(tmp_path, monkeypatch, name, **changes):
  monkeypatch.setattr(loop, "load_task_split", fake_load_task)
  config = train_config(name, train_source="train.jsonl", eval_source="eval.jsonl",
                        seq_len=64, **changes)
  return loop.train(config, tmp_path / name, progress=False, print_fn=lambda _: None,
                    devices=jax.devices()[:2])


def test_tiny_glue_trains_head_and_lora(tmp_path, monkeypatch):
  result = _run(tmp_path, monkeypatch, "llama_tiny_glue", checkpoint_every=10)
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
  logits = np.asarray(class_logits_fn(result.model, result.mesh)(evaluation.tokens, evaluation.attention_mask))
  assert logits.shape == (len(evaluation), 2)
  print(f"llama_tiny_glue eval accuracy {np.mean(logits.argmax(-1) == evaluation.labels):.3f}")
  assert np.mean(logits.argmax(-1) == evaluation.labels) >= 0.9
  # The checkpoint holds the head: a resumed run starts from the trained one.
  resumed = _run(tmp_path, monkeypatch, "llama_tiny_glue", checkpoint_every=10, max_steps=22)
  assert resumed.start_step == 20
  assert resumed.losses[0][1] < 0.5 * losses[0]


def test_tiny_gsm8k_and_arc_train_as_lm(tmp_path, monkeypatch):
  gsm8k = _run(tmp_path, monkeypatch, "llama_tiny_gsm8k")
  arc = _run(tmp_path, monkeypatch, "llama_tiny_arc")
  for result in (gsm8k, arc):
    losses = [loss for _, loss in result.losses]
    print(f"\n{result.output_dir.name} losses {losses[0]:.3f} -> {losses[-1]:.3f}, eval "
          f"{result.eval_losses[-1][1]:.3f}")
    assert np.mean(losses[-3:]) < losses[0] - 0.5
    assert result.eval_losses[-1][1] < losses[0] - 0.5
  assert gsm8k.data.eval_task.task == "gsm8k" and gsm8k.data.family == "text"
  # Multiple choice: the evaluation split's rows scored with the lm_logits callable.
  rows = tasks.encode_choice_rows(arc.data.eval_task, arc.data.tokenizer, 64)
  logits = lm_logits_fn(arc.model, arc.mesh)(rows.tokens[:, :-1], rows.attention_mask)
  scores = np.asarray(target_log_likelihoods(logits, jnp.asarray(rows.tokens[:, 1:]),
                                             jnp.asarray(rows.loss_mask)))
  assert scores.shape == (len(rows),) and np.all(scores < 0)


@pytest.mark.parametrize("args, message, loaded", [
    (["--train-source", "bad"], "no field 'sentence'", ["glue/sst2"]),
    ([], "pass --train-source", []),
    (["--train-source", "x", "--seq-len", "8"], "no usable row with seq_len 8", ["glue/sst2"]),
    (["--train-source", "x", "--task", "gsm8k"], "expected TextExample", ["gsm8k"]),
    (["--train-source", "x", "--config", "gpt2_e2e_tiny", "--task", "gsm8k"],
     "needs data kind 'task'", []),
], ids=["malformed-file", "no-source", "all-rows-too-long", "wrong-records", "not-a-task"])
def test_command_bad_task_input_exits_2(tmp_path, monkeypatch, capsys, args, message, loaded):
  """A file without a usable row, a missing source, records of another family: a
  one-line message and exit status 2, before any model is built."""
  seen = []

  def loader(task, source, split, max_rows=None):
    seen.append(task)
    return fake_load_task("glue/sst2", source, split, max_rows)

  monkeypatch.setattr(loop, "load_task_split", loader)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--config", "llama_tiny_glue", *args, "--output-dir", str(tmp_path / "out"),
              "--no-progress"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("adaprelora-finetune: error:") and message in err, err
  assert "Traceback" not in err
  assert seen == loaded


def test_records_that_cannot_train_are_data_errors():
  with pytest.raises(DataError, match="no usable row"):
    tasks.encode_classification(glue_split(4, 0), TOK, seq_len=4)
  with pytest.raises(DataError, match="expected ClassificationExample"):
    tasks.encode_classification(gsm8k_split(2, 0), TOK, seq_len=64)
  assert len(tasks.encode_choice_training(arc_split(3, 0), TOK, 64)) == 3
