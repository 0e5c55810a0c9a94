"""Task evaluation of a trained model: its metrics, with the predictions they come from.

Each task family is scored through a plain callable, so the evaluation does not depend
on how the model or its head is built:

- generation (E2E NLG, GSM8K): the causal LM itself, decoded by
  `adaprelora_jax.models.generate` from each prompt, left-padded; E2E once per meaning
  representation (the `TextExample.key` group), by beam search (beam 10, length penalty
  0.8, no repeated 4-gram: the LoRA recipe), scored by `e2e_metrics` against all its
  references; GSM8K greedily, scored by `gsm8k_exact_match` on the final number.
- classification (GLUE): `class_logits(tokens int32[b, L], attention_mask bool[b, L]) ->
  float32[b, num_labels]` on the right-padded text; the argmax is scored by `glue_metric`.
- multiple choice (ARC): `lm_logits(tokens, attention_mask) -> float32[b, L, vocab]` on
  each `prompt + choice`; `target_log_likelihoods` sums the choice tokens' log-probabilities,
  `multiple_choice_accuracy` reports `acc` (summed) and `acc_norm` (per token).

Tokens are `tokenizer.encode_prompt(prompt)` (the start token first, where the tokenizer
has one) and `tokenizer.encode(continuation)`, encoded separately and concatenated, as the
training rows are. A text longer than the context keeps its end
(the prompt's start is cut); such rows are counted in `info["truncated"]`. Every metric is
`{"score", "implementation"}` and is recomputed from the saved predictions by
`metrics_from_predictions` (the same function that made it). Results files:
`OUTPUT_DIR/results/<task>_<split>_<label>.json` (`write_results`'s format, with `info`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adaprelora_jax import eval as ev
from adaprelora_jax.data import ChoiceExample, ClassificationExample, TaskData, TextExample
from adaprelora_jax.train import heads
from adaprelora_jax.train.config import TASK_FAMILIES, ConfigError, EvalConfig
from adaprelora_jax.train.tasks import check_family, pad_id_of

Logits = Callable[[Any, Any], Any]

RESULTS_DIR = "results"


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """How a generation task is decoded (defaults: the LoRA recipe's E2E beam search)."""

  # 1: greedy search; more: beam search.
  num_beams: int = 10
  # Beam search: a finished hypothesis scores sum(logprobs) / length ** length_penalty.
  length_penalty: float = 0.8
  # No n-gram of this size repeats (0: no constraint).
  no_repeat_ngram_size: int = 4
  # The most tokens generated per prompt.
  max_new_tokens: int = 64
  # Prompts per `generate` call (the last call is padded to the same shape).
  batch_size: int = 16

  def __post_init__(self):
    if self.num_beams < 1:
      raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
    if self.no_repeat_ngram_size < 0:
      raise ConfigError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
    if self.max_new_tokens < 1:
      raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.batch_size < 1:
      raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


E2E_GENERATION = GenerationConfig()
GSM8K_GENERATION = GenerationConfig(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0,
                                    max_new_tokens=256)


# The result files' family names of the training families (`config.TASK_FAMILIES`).
EVAL_FAMILIES = {"text": "generation", "classification": "classification",
                 "choice": "multiple_choice"}


def task_family(task: str) -> str:
  """`"generation"` (e2e, gsm8k), `"classification"` (glue/*) or `"multiple_choice"`
  (arc/*): `config.TASK_FAMILIES` under the names the results files carry."""
  if task not in TASK_FAMILIES:
    raise ConfigError(f"no evaluation for task {task!r}; tasks: {', '.join(TASK_FAMILIES)}")
  return EVAL_FAMILIES[TASK_FAMILIES[task]]


def generation_config(task: str, settings: EvalConfig | None = None) -> GenerationConfig:
  """The task's decoding (E2E: beam 10; GSM8K: greedy) with `settings`' overrides."""
  base = E2E_GENERATION if task == "e2e" else GSM8K_GENERATION
  if settings is None:
    return base
  changes = {"batch_size": settings.eval_batch_size}
  if settings.num_beams is not None:
    changes["num_beams"] = settings.num_beams
  if settings.max_new_tokens is not None:
    changes["max_new_tokens"] = settings.max_new_tokens
  return dataclasses.replace(base, **changes)


@dataclasses.dataclass(frozen=True)
class TaskResults:
  """Metrics (`{name: {"score", "implementation"}}`), the predictions they were computed
  from, what was evaluated (`info`), and the file written (None before `save`)."""

  task: str
  split: str
  metrics: dict[str, dict[str, Any]]
  predictions: list[dict[str, Any]]
  info: dict[str, Any]
  path: Path | None = None

  def summary(self) -> str:
    """One line: `e2e test: BLEU 0.4123, NIST 5.1234, ...`."""
    scores = ", ".join(f"{k} {v['score']:.4f}" for k, v in self.metrics.items())
    if not self.metrics:
      scores = f"no metrics ({self.info.get('metrics_error', 'none computed')})"
    return f"{self.task} {self.split}: {scores} ({len(self.predictions)} examples)"

  def save(self, output_dir: str | Path, label: str) -> TaskResults:
    """Writes `output_dir/results/<task>_<split>_<label>.json`; returns a copy with `path`."""
    name = f"{self.task.replace('/', '-')}_{self.split}_{label}.json"
    path = Path(output_dir) / RESULTS_DIR / name
    ev.write_results(path, self.metrics, self.predictions, info=self.info)
    return dataclasses.replace(self, path=path)


def _score(value: float, implementation: str) -> dict[str, Any]:
  return {"score": float(value), "implementation": implementation}


def metrics_from_predictions(task: str, predictions: Sequence[dict[str, Any]]) -> dict:
  """The task's metrics from saved predictions (what `evaluate_*` wrote; also what they
  return): E2E `{"prediction", "references"}`, GSM8K `{"prediction", "answer"}`, GLUE
  `{"prediction", "label"}`, ARC `{"log_likelihoods", "token_counts", "answer"}`."""
  family = task_family(task)
  if family == "generation" and task == "e2e":
    return ev.e2e_metrics([p["prediction"] for p in predictions],
                          [p["references"] for p in predictions])
  if family == "generation":
    em = ev.gsm8k_exact_match([p["prediction"] for p in predictions],
                              [p["answer"] for p in predictions])
    return {"exact_match": _score(em, "adaprelora_jax.eval.gsm8k_exact_match (final number "
                                      "after '####', else the last; commas removed)")}
  if family == "classification":
    values = ev.glue_metric(task.split("/", 1)[1], [p["prediction"] for p in predictions],
                            [p["label"] for p in predictions])
    return {name: _score(v, f"adaprelora_jax.eval.glue_metric ({name})")
            for name, v in values.items()}
  values = ev.multiple_choice_accuracy([p["log_likelihoods"] for p in predictions],
                                       [p["token_counts"] for p in predictions],
                                       [p["answer"] for p in predictions])
  how = {"acc": "argmax of the summed answer log-likelihood",
         "acc_norm": "argmax of the answer log-likelihood per answer token"}
  return {name: _score(v, f"adaprelora_jax.eval.multiple_choice_accuracy: {how[name]}")
          for name, v in values.items()}


def score_predictions(data: TaskData, predictions: list[dict[str, Any]],
                      info: dict[str, Any]) -> TaskResults:
  """`TaskResults` with the metrics of `predictions`. A metric that cannot run here (a
  metric package or `java` missing: ImportError, RuntimeError) leaves `metrics` empty and
  says why in `info["metrics_error"]`, so the predictions are still saved and the metrics
  can be recomputed from them where the packages are installed."""
  try:
    metrics = metrics_from_predictions(data.task, predictions)
  except (ImportError, RuntimeError) as e:
    metrics = {}
    info = dict(info, metrics_error=f"{type(e).__name__}: {e}")
  return TaskResults(data.task, data.split, metrics, predictions, info)


def _info(data: TaskData, **extra) -> dict[str, Any]:
  return {"task": data.task, "split": data.split, "source": data.source,
          "rows_read": data.rows_read, "skipped": dict(data.skipped), **extra}


def _check_examples(data: TaskData, kind: type) -> list:
  """The records of `data`, all of family `kind` (`tasks.check_family`), at least one."""
  check_family(data, kind)
  if not data.examples:
    raise ConfigError(f"{data.task} {data.split} ({data.source}): no example to evaluate")
  return list(data.examples)


# Generation (E2E, GSM8K).


def generate_texts(model, tokenizer, prompts: Sequence[str],
                   config: GenerationConfig) -> tuple[list[str], dict[str, int]]:
  """The text generated after each prompt, cut at the first end token.

  Prompts are encoded, left-padded to the longest (whose start is cut where prompt plus
  `max_new_tokens` would exceed a GPT-2's positions) and decoded in batches of
  `config.batch_size`, every batch of one shape (one compilation).

  Returns:
    `(texts, counts)`, counts `{"truncated_prompts", "max_new_tokens"}` (the latter the
    value used, lowered to what fits in a GPT-2's positions).
  """
  from adaprelora_jax.models.generation import generate  # noqa: PLC0415

  encoded = [list(tokenizer.encode_prompt(p)) for p in prompts]
  if not encoded or min(len(e) for e in encoded) == 0:
    raise ConfigError("every prompt needs at least one token")
  width = max(len(e) for e in encoded)
  max_new = config.max_new_tokens
  positions = model.config.max_position_embeddings
  if model.config.is_gpt2 and width + max_new > positions:
    width = min(width, positions // 2)  # keep room for at least half the context
    max_new = min(max_new, positions - width)
  truncated = sum(len(e) > width for e in encoded)
  pad, eos = pad_id_of(tokenizer), int(tokenizer.eos_id)
  n = len(encoded)
  batch = min(config.batch_size, n)
  rows = -(-n // batch) * batch
  ids = np.full((rows, width), pad, np.int32)
  mask = np.zeros((rows, width), bool)
  for i in range(rows):
    e = encoded[i if i < n else 0][-width:]
    ids[i, width - len(e):] = e
    mask[i, width - len(e):] = True
  texts = []
  for start in range(0, rows, batch):
    out = generate(model, ids[start:start + batch], attention_mask=mask[start:start + batch],
                   max_new_tokens=max_new, num_beams=config.num_beams,
                   length_penalty=config.length_penalty,
                   no_repeat_ngram_size=config.no_repeat_ngram_size, eos_token_id=eos,
                   pad_token_id=pad)
    for row in np.asarray(out[:, width:]).tolist():
      if eos in row:
        row = row[:row.index(eos)]
      texts.append(tokenizer.decode(row).strip())
  return texts[:n], {"truncated_prompts": truncated, "max_new_tokens": max_new}


def evaluate_generation(model, tokenizer, data: TaskData,
                        config: GenerationConfig | None = None) -> TaskResults:
  """E2E (one generation per MR, against all its references) or GSM8K (one per problem,
  exact match of the final number against `references[0]`, else the target)."""
  examples = _check_examples(data, TextExample)
  if data.task == "e2e":
    config = E2E_GENERATION if config is None else config
    groups: dict[str, list[TextExample]] = {}
    for e in examples:
      groups.setdefault(e.key or e.prompt, []).append(e)
    items = [{"mr": key, "prompt": group[0].prompt,
              "references": list(group[0].references) or [g.target for g in group]}
             for key, group in groups.items()]
  elif data.task == "gsm8k":
    config = GSM8K_GENERATION if config is None else config
    items = [{"prompt": e.prompt,
              "answer": e.references[0] if e.references else e.target} for e in examples]
  else:
    raise ConfigError(f"{data.task} is not a generation task (e2e, gsm8k)")
  started = time.perf_counter()
  texts, counts = generate_texts(model, tokenizer, [it["prompt"] for it in items], config)
  predictions = [dict(it, prediction=t) for it, t in zip(items, texts)]
  info = _info(data, family="generation", examples=len(examples), evaluated=len(items),
               generation=dataclasses.asdict(config), truncated=counts["truncated_prompts"],
               max_new_tokens_used=counts["max_new_tokens"],
               seconds=round(time.perf_counter() - started, 3))
  return score_predictions(data, predictions, info)


# Classification (GLUE).


def evaluate_classification(class_logits: Logits, tokenizer, data: TaskData, *, seq_len: int,
                            batch_size: int = 16) -> TaskResults:
  """Predicted class `argmax class_logits(tokens, mask)` of each example's text (right-
  padded to the longest text, at most `seq_len` tokens), scored by `glue_metric`."""
  examples = _check_examples(data, ClassificationExample)
  encoded = [list(tokenizer.encode_prompt(e.text)) for e in examples]
  tokens, mask, truncated = _right_padded(encoded, seq_len, pad_id_of(tokenizer))
  logits = _batched(class_logits, tokens, mask, batch_size=batch_size)
  if logits.ndim != 2 or logits.shape[0] != len(examples):
    raise ValueError(f"class_logits must return (batch, num_labels), got {logits.shape[1:]}")
  names = data.label_names
  predictions = [{"text": e.text, "label": int(e.label), "prediction": int(np.argmax(row)),
                  "logits": row.tolist()} for e, row in zip(examples, logits)]
  info = _info(data, family="classification", examples=len(examples),
               evaluated=len(examples), label_names=list(names), truncated=truncated,
               seq_len=int(tokens.shape[1]))
  return score_predictions(data, predictions, info)


def _right_padded(encoded: list[list[int]], seq_len: int, pad: int):
  if any(len(e) == 0 for e in encoded):
    raise ConfigError("every text needs at least one token")
  width = min(seq_len, max(len(e) for e in encoded))
  tokens = np.full((len(encoded), width), pad, np.int32)
  mask = np.zeros((len(encoded), width), bool)
  for i, e in enumerate(encoded):
    e = e[-width:]
    tokens[i, :len(e)] = e
    mask[i, :len(e)] = True
  return tokens, mask, sum(len(e) > width for e in encoded)


def _batched(fn: Callable[..., Any], *arrays: np.ndarray, batch_size: int) -> np.ndarray:
  """`fn(*batch)` over the rows of `arrays` in batches of one shape (the last padded with
  copies of row 0), the results concatenated."""
  n = len(arrays[0])
  batch = min(batch_size, n)
  out = []
  for start in range(0, n, batch):
    idx = np.arange(start, start + batch)
    idx = np.where(idx < n, idx, 0)
    out.append(np.asarray(fn(*(jnp.asarray(a[idx]) for a in arrays)), np.float32))
  return np.concatenate(out)[:n]


# Multiple choice (ARC).


@dataclasses.dataclass(frozen=True)
class ChoiceRows:
  """One row per (question, choice): tokens, attention mask, next tokens and the mask of
  the positions that predict a choice token (`truncated`: questions whose prompt start
  was cut to fit)."""

  tokens: np.ndarray       # (rows, width) int32, right-padded
  attention: np.ndarray    # (rows, width) bool
  targets: np.ndarray      # (rows, width) int32: tokens shifted left by one
  score_mask: np.ndarray   # (rows, width) bool: position t predicts a choice token
  truncated: int


def choice_rows(tokenizer, examples: Sequence[ChoiceExample], seq_len: int) -> ChoiceRows:
  """`encode(prompt) + encode(choice)` per choice, at most `seq_len` tokens (the prompt's
  start is cut first); position `t` scores `tokens[t + 1]` when that is a choice token."""
  pad = pad_id_of(tokenizer)
  rows, starts, truncated = [], [], 0
  for q, e in enumerate(examples):
    prompt = list(tokenizer.encode_prompt(e.prompt))
    if not prompt:
      raise ConfigError(f"question {q}: the prompt has no token")
    cut = False
    for c, choice in enumerate(e.choices):
      answer = list(tokenizer.encode(choice))
      if not answer:
        raise ConfigError(f"question {q}, choice {c}: the choice has no token")
      if len(answer) >= seq_len:
        raise ConfigError(f"question {q}, choice {c}: {len(answer)} tokens do not fit "
                          f"seq_len {seq_len} after a prompt token; raise seq_len")
      keep = min(len(prompt), seq_len - len(answer))
      cut = cut or keep < len(prompt)
      rows.append(prompt[len(prompt) - keep:] + answer)
      starts.append(keep)
    truncated += cut
  width = max(len(r) for r in rows)
  tokens = np.full((len(rows), width), pad, np.int32)
  attention = np.zeros((len(rows), width), bool)
  score = np.zeros((len(rows), width), bool)
  for i, (row, start) in enumerate(zip(rows, starts)):
    tokens[i, :len(row)] = row
    attention[i, :len(row)] = True
    score[i, start - 1:len(row) - 1] = True
  targets = np.concatenate([tokens[:, 1:], np.full((len(rows), 1), pad, np.int32)], axis=1)
  return ChoiceRows(tokens, attention, targets, score, truncated)


def evaluate_multiple_choice(lm_logits: Logits, tokenizer, data: TaskData, *, seq_len: int,
                             batch_size: int = 16) -> TaskResults:
  """Per question, the summed log-likelihood of each choice's tokens after the prompt
  (`target_log_likelihoods` of `lm_logits`) and their count; `acc` and `acc_norm`."""
  examples = _check_examples(data, ChoiceExample)
  rows = choice_rows(tokenizer, examples, seq_len)

  def log_likelihoods(tokens, attention, targets, score_mask):
    logits = lm_logits(tokens, attention)
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
      raise ValueError(f"lm_logits must return (batch, seq, vocab), got {logits.shape}")
    return ev.target_log_likelihoods(logits, targets, score_mask)

  ll = _batched(log_likelihoods, rows.tokens, rows.attention, rows.targets, rows.score_mask,
                batch_size=batch_size)
  counts = rows.score_mask.sum(axis=1)
  predictions, i = [], 0
  for e in examples:
    k = len(e.choices)
    predictions.append({"prompt": e.prompt, "choices": list(e.choices), "answer": int(e.answer),
                        "log_likelihoods": ll[i:i + k].tolist(),
                        "token_counts": counts[i:i + k].tolist()})
    i += k
  info = _info(data, family="multiple_choice", examples=len(examples), evaluated=len(examples),
               truncated=rows.truncated, seq_len=int(rows.tokens.shape[1]))
  return score_predictions(data, predictions, info)


def evaluate_task(data: TaskData, tokenizer, *, model=None, class_logits: Logits | None = None,
                  lm_logits: Logits | None = None, settings: EvalConfig | None = None,
                  seq_len: int = 512) -> TaskResults:
  """Evaluates `data` with what its task family needs: `model` (generation),
  `class_logits` (classification) or `lm_logits` (multiple choice; default: `model`)."""
  settings = EvalConfig() if settings is None else settings
  family = task_family(data.task)
  if family == "generation":
    if model is None:
      raise ConfigError(f"{data.task}: generation needs the model")
    return evaluate_generation(model, tokenizer, data, generation_config(data.task, settings))
  if family == "classification":
    if class_logits is None:
      raise ConfigError(f"{data.task}: classification needs class_logits (the trained head)")
    return evaluate_classification(class_logits, tokenizer, data, seq_len=seq_len,
                                   batch_size=settings.eval_batch_size)
  if lm_logits is None and model is None:
    raise ConfigError(f"{data.task}: multiple choice needs lm_logits or the model")
  if lm_logits is None:
    lm_logits = heads.lm_logits_fn(model)
  return evaluate_multiple_choice(lm_logits, tokenizer, data, seq_len=seq_len,
                                  batch_size=settings.eval_batch_size)
