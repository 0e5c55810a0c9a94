"""Task evaluation per family on records built here, with callables whose right answers
the tests compute independently: greedy generation against a cache-free token-by-token
decoding, GSM8K on a model made to repeat one digit, GLUE on a letter-counting
`class_logits`, ARC on a bigram `lm_logits` scored in float64 NumPy; results files
recomputed from their predictions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaprelora_jax.data import (ChoiceExample, ClassificationExample, DataError, TaskData,
                                 TextExample)
from adaprelora_jax.eval import read_results
from adaprelora_jax.models import build_model, config_by_name
from adaprelora_jax.train import ByteTokenizer
from adaprelora_jax.train import config_by_name as train_config_by_name
from adaprelora_jax.train.config import ConfigError, EvalConfig, run_identity
from adaprelora_jax.train.evaluate import (GenerationConfig, evaluate_classification,
                                           evaluate_generation, evaluate_multiple_choice,
                                           evaluate_task, generate_texts, generation_config,
                                           metrics_from_predictions, score_predictions,
                                           task_family)


class _Tokenizer(ByteTokenizer):
  """Bytes with a chosen end token."""

  def __init__(self, eos_id: int = 255):
    self.eos_id = eos_id


def _data(task, examples, **kw) -> TaskData:
  return TaskData(task, "validation", "test records", tuple(examples), len(examples), **kw)


@pytest.fixture(scope="module")
def tiny_gpt2():
  return build_model(config_by_name("tiny-gpt2"), rngs=nnx.Rngs(3))


def _greedy_reference(model, prompt: list[int], max_new: int, eos: int) -> list[int]:
  """One prompt, no cache, no padding on the left: the argmax of a full forward of the
  sequence so far (right-padded to a fixed 32 tokens; causal, so the padding after the
  last token changes nothing), token by token."""
  graphdef, state = nnx.split(model)
  forward = _forward(graphdef)
  ids = list(prompt)
  out = []
  for _ in range(max_new):
    row = np.zeros((1, 32), np.int32)
    row[0, :len(ids)] = ids
    token = int(np.argmax(np.asarray(forward(state, row))[0, len(ids) - 1]))
    if token == eos:
      break
    out.append(token)
    ids.append(token)
  return out


_FORWARDS = {}


def _forward(graphdef):
  if graphdef not in _FORWARDS:
    _FORWARDS[graphdef] = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
  return _FORWARDS[graphdef]


def test_batched_left_padded_generation_equals_token_by_token_decoding(tiny_gpt2):
  prompts = ["Q: 1+1?\nA:", "x", "Question: how many?\nAnswer:", "ab", "Longer prompt here."]
  config = GenerationConfig(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=6, batch_size=2)
  plain = [_greedy_reference(tiny_gpt2, list(p.encode()), 6, eos=255) for p in prompts]
  # An end token that the model emits early in the first prompt's answer: cut there.
  eos = plain[0][2]
  tok = _Tokenizer(eos)
  want = [bytes(_greedy_reference(tiny_gpt2, list(p.encode()), 6, eos=eos)).decode(
      "utf-8", errors="replace").strip() for p in prompts]
  texts, counts = generate_texts(tiny_gpt2, tok, prompts, config)
  assert texts == want
  assert counts == {"truncated_prompts": 0, "max_new_tokens": 6}


def _constant_digit_model(model, digit: str):
  """`model` (a tiny GPT-2) changed so that its next token is always `digit`: the final
  norm outputs a constant unit vector `u` and the (tied) embedding of `digit` is `10 u`."""
  ln = model.transformer.ln_f
  u = np.zeros(ln.bias[...].shape, np.float32)
  u[0] = 1.0
  ln.scale[...] = jnp.zeros_like(ln.scale[...])
  ln.bias[...] = jnp.asarray(u)
  table = np.array(model.transformer.wte.embedding[...])
  table[ord(digit)] = 10 * u
  model.transformer.wte.embedding[...] = jnp.asarray(table)
  return model


def test_gsm8k_exact_match_on_a_model_that_answers_4444(tiny_gpt2, tmp_path):
  model = _constant_digit_model(nnx.clone(tiny_gpt2), "4")
  answers = ["#### 4,444", "#### 5", "so the answer is 4444", "#### 4444.0", "#### 444"]
  data = _data("gsm8k", [TextExample(f"Question: q{i}\nAnswer:", f" work #### {a}",
                                     (a,) if i % 2 else ()) for i, a in enumerate(answers)])
  settings = EvalConfig(max_new_tokens=4, eval_batch_size=2)
  results = evaluate_task(data, ByteTokenizer(), model=model, settings=settings)
  assert [p["prediction"] for p in results.predictions] == ["4444"] * 5
  # Answers: the target where there is no reference (i even), else the reference.
  assert [p["answer"] for p in results.predictions] == [
      f" work #### {a}" if i % 2 == 0 else a for i, a in enumerate(answers)]
  assert results.metrics["exact_match"]["score"] == pytest.approx(3 / 5)
  assert results.info["generation"]["num_beams"] == 1  # GSM8K: greedy
  saved = results.save(tmp_path, "step0")
  metrics, predictions = read_results(saved.path)
  assert metrics == results.metrics
  assert metrics_from_predictions("gsm8k", predictions) == metrics


def _count_logits(calls):
  """class_logits: `[#'a', #'b']` among the real tokens (so the label is 'more b's')."""

  def class_logits(tokens, mask):
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    calls.append(tokens.shape)
    assert np.all(mask[:, :-1] >= mask[:, 1:]), "right-padded"
    return jnp.asarray(np.stack([((tokens == 97) & mask).sum(1), ((tokens == 98) & mask).sum(1)],
                                axis=1).astype(np.float32))

  return class_logits


@pytest.mark.parametrize("task", ["glue/cola", "glue/mrpc", "glue/sst2"])
def test_glue_metrics_from_known_predictions(task, tmp_path):
  rng = np.random.default_rng(1)
  texts = ["".join(rng.choice(list("abc"), size=n)) for n in rng.integers(1, 14, size=11)]
  labels = [int(x) for x in rng.integers(0, 2, size=11)]
  data = _data(task, [ClassificationExample(t, y) for t, y in zip(texts, labels)],
               label_names=("no", "yes"))
  calls = []
  results = evaluate_classification(_count_logits(calls), ByteTokenizer(), data, seq_len=8,
                                    batch_size=4)
  kept = [t[-8:] for t in texts]  # longer texts keep their end
  preds = np.array([int(t.count("b") > t.count("a")) for t in kept])
  y = np.array(labels)
  assert [p["prediction"] for p in results.predictions] == preds.tolist()
  assert calls == [(4, 8)] * 3 and results.info["truncated"] == sum(len(t) > 8 for t in texts)
  tp, fp, fn = np.sum(preds & y), np.sum(preds & (1 - y)), np.sum((1 - preds) & y)
  scores = {k: v["score"] for k, v in results.metrics.items()}
  if task == "glue/cola":
    assert scores["matthews_correlation"] == pytest.approx(np.corrcoef(preds, y)[0, 1])
  elif task == "glue/mrpc":
    assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
  assert scores.get("accuracy", np.mean(preds == y)) == pytest.approx(np.mean(preds == y))
  metrics, predictions = read_results(results.save(tmp_path, "x").path)
  assert metrics_from_predictions(task, predictions) == metrics


def _bigram_logits(table):
  def lm_logits(tokens, mask):
    del mask
    return jnp.asarray(table)[tokens]
  return lm_logits


def _log_softmax64(row):
  row = row.astype(np.float64)
  return row - row.max() - np.log(np.exp(row - row.max()).sum())


@pytest.mark.parametrize("seq_len", [64, 12])
def test_arc_log_likelihoods_match_a_float64_bigram_reference(seq_len, tmp_path):
  table = np.random.default_rng(0).normal(0, 2, (256, 256)).astype(np.float32)
  questions = [("Which is hot?\nA. ice\nB. fire\nAnswer:", (" A", " B"), 1),
               ("Pick one:\nA. x\nB. yy\nC. zzz\nAnswer:", (" x", " yy", " zzz"), 2),
               ("Q\nAnswer:", (" alpha", " b", " gamma ray", " d"), 0)]
  data = _data("arc/challenge", [ChoiceExample(p, c, a) for p, c, a in questions])
  results = evaluate_multiple_choice(_bigram_logits(table), ByteTokenizer(), data,
                                     seq_len=seq_len, batch_size=4)
  lls, counts = [], []
  for (prompt, choices, _), pred in zip(questions, results.predictions):
    ll = []
    for choice in choices:
      ids = list(prompt.encode()) + list(choice.encode())
      start = len(prompt.encode())
      ll.append(sum(_log_softmax64(table[ids[t - 1]])[ids[t]] for t in range(start, len(ids))))
    np.testing.assert_allclose(pred["log_likelihoods"], ll, rtol=1e-5)
    assert pred["token_counts"] == [len(c.encode()) for c in choices]
    lls.append(ll)
    counts.append([len(c.encode()) for c in choices])
  labels = [a for _, _, a in questions]
  acc = np.mean([np.argmax(ll) == a for ll, a in zip(lls, labels)])
  acc_norm = np.mean([np.argmax(np.array(ll) / n) == a for ll, n, a in zip(lls, counts, labels)])
  assert results.metrics["acc"]["score"] == pytest.approx(acc)
  assert results.metrics["acc_norm"]["score"] == pytest.approx(acc_norm)
  # A bigram model sees one token back: cutting the prompt's start changes nothing.
  assert (results.info["truncated"] > 0) == (seq_len == 12)
  metrics, predictions = read_results(results.save(tmp_path, "x").path)
  assert metrics_from_predictions("arc/challenge", predictions) == metrics


def test_bad_input_is_a_clear_error(tiny_gpt2):
  tok = ByteTokenizer()
  glue = _data("glue/sst2", [ClassificationExample("good", 1)])
  with pytest.raises(ConfigError, match="needs class_logits"):
    evaluate_task(glue, tok, model=tiny_gpt2)
  with pytest.raises(DataError, match="ClassificationExample records, got TextExample"):
    evaluate_classification(lambda t, m: t, tok, _data("glue/sst2", [TextExample("a", "b")]),
                            seq_len=8)
  with pytest.raises(ConfigError, match="no evaluation for task 'squad'"):
    task_family("squad")
  with pytest.raises(ConfigError, match="no example"):
    evaluate_generation(tiny_gpt2, tok, _data("e2e", []))
  with pytest.raises(ConfigError, match="num_beams"):
    GenerationConfig(num_beams=0)
  with pytest.raises(ConfigError, match="max_new_tokens"):
    EvalConfig(max_new_tokens=0)
  with pytest.raises(ValueError, match=r"\(batch, num_labels\)"):
    evaluate_classification(lambda t, m: jnp.zeros(t.shape[:1]), tok, glue, seq_len=8)


def test_glue_file_through_load_task(tmp_path):
  """The data package's loader feeds the evaluation (SST-2 JSON lines written here)."""
  import json

  from adaprelora_jax.data import load_task

  rows = [{"sentence": "bbb a", "label": 1, "idx": 0}, {"sentence": "aab", "label": 0, "idx": 1},
          {"sentence": "ab", "label": 1, "idx": 2}, {"sentence": "unlabeled", "label": -1}]
  file = tmp_path / "validation.jsonl"
  file.write_text("".join(json.dumps(r) + "\n" for r in rows))
  data = load_task("glue/sst2", file, "validation")
  results = evaluate_classification(_count_logits([]), ByteTokenizer(), data, seq_len=64)
  assert [p["label"] for p in results.predictions] == [1, 0, 1]
  # "Sentence: ...\nSentiment:" counts one 'a' of its own; ties go to class 0.
  want = [int(p["text"].count("b") > p["text"].count("a")) for p in results.predictions]
  assert [p["prediction"] for p in results.predictions] == want
  accuracy = np.mean(np.array(want) == [1, 0, 1])
  assert results.metrics["accuracy"]["score"] == pytest.approx(accuracy)
  assert results.info["skipped"] == dict(data.skipped) and sum(data.skipped.values()) == 1
  assert results.info["label_names"] == list(data.label_names)


def test_eval_settings_are_config_fields_that_do_not_change_a_run():
  base = train_config_by_name("gpt2_e2e_tiny")
  changed = base.replace(num_beams=3, max_new_tokens=7, task_eval=False, eval_batch_size=2)
  assert changed.evaluation == EvalConfig(task_eval=False, num_beams=3, max_new_tokens=7,
                                          eval_batch_size=2)
  assert run_identity(changed) == run_identity(base)
  assert generation_config("e2e", changed.evaluation) == GenerationConfig(
      num_beams=3, max_new_tokens=7, batch_size=2)
  gsm8k = generation_config("gsm8k", EvalConfig())
  assert (gsm8k.num_beams, gsm8k.no_repeat_ngram_size, gsm8k.max_new_tokens) == (1, 0, 256)
  assert generation_config("e2e") == GenerationConfig(10, 0.8, 4, 64, 16)


def test_metrics_that_cannot_run_leave_the_predictions_and_say_why(monkeypatch, tmp_path):
  """Without `java` (METEOR, PTB tokens) the E2E predictions are still kept and saved."""
  monkeypatch.setenv("PATH", str(tmp_path))
  data = _data("e2e", [TextExample("name: A\n", "A is a pub.", ("A is a pub.",), "name[A]")])
  predictions = [{"mr": "name[A]", "prompt": "name: A\n", "references": ["A is a pub."],
                  "prediction": "A is a pub."}]
  results = score_predictions(data, predictions, {"task": "e2e"})
  assert results.metrics == {} and "java" in results.info["metrics_error"]
  assert "no metrics" in results.summary()
  saved = results.save(tmp_path, "step1")
  assert read_results(saved.path) == ({}, predictions)
