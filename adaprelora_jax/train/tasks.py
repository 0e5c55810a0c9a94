"""Task records (`adaprelora_jax.data`) as fixed-length token arrays, per record family.

- `TextExample` (E2E, GSM8K): `prompt + target + end token` as one LM row, the loss on
  the target tokens (`TokenizedData`, as the E2E CSV path).
- `ClassificationExample` (GLUE): the text's tokens right-padded to `seq_len`, an
  attention mask and the label (`ClassificationData`); the head reads the last real token.
- `ChoiceExample` (ARC): for training, `prompt + right choice` as an LM row with the loss
  on the choice (`choice_training_examples`); the evaluation scores one row per
  (question, choice) (`evaluate.choice_rows`).

A row that does not fit `seq_len` is dropped and counted under "longer than seq_len"
next to the loader's own reasons (`TaskData.skipped`); only a split without a single
usable row is an error (`DataError`).

>>> from adaprelora_jax.data import ClassificationExample, TaskData
>>> from adaprelora_jax.train.data import ByteTokenizer
>>> task = TaskData("glue/sst2", "train", "mem", (ClassificationExample("good", 1),
...                 ClassificationExample("x" * 40, 0)), rows_read=3,
...                 skipped={"missing field 'label'": 1}, label_names=("neg", "pos"))
>>> data = encode_classification(task, ByteTokenizer(), seq_len=8)
>>> data.tokens[0].tolist(), int(data.attention_mask[0].sum()), data.labels.tolist()
([103, 111, 111, 100, 255, 255, 255, 255], 4, [1])
>>> dict(data.skipped)
{"missing field 'label'": 1, 'longer than seq_len': 1}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from adaprelora_jax.data import ChoiceExample, ClassificationExample, DataError, TaskData
from adaprelora_jax.data import TextExample, Tokenizer
from adaprelora_jax.train import data as data_lib

TOO_LONG = "longer than seq_len"


def pad_id_of(tokenizer: Tokenizer) -> int:
  """The tokenizer's padding id (its end token when it has none)."""
  pad = getattr(tokenizer, "pad_id", None)
  return tokenizer.eos_id if pad is None else int(pad)


def _skipped(task: TaskData, **ours: int) -> dict[str, int]:
  out = dict(task.skipped)
  for why, n in ours.items():
    if n:
      key = TOO_LONG if why == "too_long" else why
      out[key] = out.get(key, 0) + n
  return out


def check_family(task: TaskData, kind: type) -> None:
  """A `DataError` unless every record of `task` is a `kind` (e.g. `TextExample`)."""
  wrong = [type(e).__name__ for e in task.examples if not isinstance(e, kind)]
  if wrong:
    raise DataError(f"{task.task} {task.split} ({task.source}): expected {kind.__name__} "
                    f"records, got {wrong[0]}")


def _no_rows(task: TaskData, skipped: Mapping[str, int], seq_len: int) -> DataError:
  reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "no rows"
  return DataError(f"{task.task} {task.split} ({task.source}): no usable row with seq_len "
                   f"{seq_len} ({task.rows_read} rows read; skipped: {reasons})")


def encode_text(task: TaskData, tokenizer: Tokenizer, seq_len: int) -> data_lib.TokenizedData:
  """`TextExample`s as LM rows: `prompt + target + eos`, the loss on the target."""
  check_family(task, TextExample)
  examples = [data_lib.Example(tokenizer.encode_prompt(e.prompt),
                               tokenizer.encode(e.target) + [tokenizer.eos_id])
              for e in task.examples]
  return _lm_rows(task, examples, seq_len, pad_id_of(tokenizer))


def choice_training_examples(task: TaskData, tokenizer: Tokenizer) -> list[data_lib.Example]:
  """`ChoiceExample`s as LM examples: the prompt, then the right choice as the target
  (the continuation the evaluation scores, no end token)."""
  check_family(task, ChoiceExample)
  return [data_lib.Example(tokenizer.encode_prompt(e.prompt),
                           tokenizer.encode(e.choices[e.answer]))
          for e in task.examples]


def encode_choice_training(task: TaskData, tokenizer: Tokenizer,
                           seq_len: int) -> data_lib.TokenizedData:
  """`ChoiceExample`s as LM rows on `prompt + right choice`, the loss on the choice."""
  return _lm_rows(task, choice_training_examples(task, tokenizer), seq_len,
                  pad_id_of(tokenizer))


def _lm_rows(task, examples, seq_len, pad_id) -> data_lib.TokenizedData:
  fits = [e for e in examples if e.target and len(e.prompt) + len(e.target) <= seq_len + 1]
  skipped = _skipped(task, too_long=len(examples) - len(fits))
  if not fits:
    raise _no_rows(task, skipped, seq_len)
  rows = data_lib.tokenize(fits, seq_len, pad_id=pad_id, source=task.source)
  return dataclasses.replace(rows, source_rows=task.rows_read,
                             bad_rows=sum(task.skipped.values()),
                             dropped=len(examples) - len(fits), skipped=skipped)


@dataclasses.dataclass(frozen=True)
class ClassBatch:
  """One step's classification data, `(grad_accum, micro_batch, ...)`: tokens, attention
  mask, labels, and a weight per example (0 for the padding rows of an evaluation)."""

  tokens: np.ndarray
  attention_mask: np.ndarray
  labels: np.ndarray
  weights: np.ndarray

  def arrays(self) -> tuple[np.ndarray, ...]:
    return self.tokens, self.attention_mask, self.labels, self.weights


@dataclasses.dataclass(frozen=True)
class ClassificationData:
  """Right-padded rows `tokens (n, seq_len)`, `attention_mask (n, seq_len)` (True on
  real tokens), `labels (n,)` in `range(num_labels)`, and what became of the other rows."""

  tokens: np.ndarray
  attention_mask: np.ndarray
  labels: np.ndarray
  label_names: tuple[str, ...]
  source_rows: int
  skipped: Mapping[str, int]

  @property
  def num_labels(self) -> int:
    return len(self.label_names)

  def __len__(self) -> int:
    return len(self.tokens)

  def take(self, idx: np.ndarray, valid: np.ndarray | None = None) -> ClassBatch:
    """The rows `idx` (any shape); `valid` False gives a row weight 0."""
    weights = np.ones(idx.shape, np.float32) if valid is None else valid.astype(np.float32)
    return ClassBatch(self.tokens[idx], self.attention_mask[idx], self.labels[idx], weights)

  def report(self, name: str) -> str:
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
    return (f"{name}: {len(self)} examples ({self.num_labels} labels) from "
            f"{self.source_rows} rows; skipped: {skipped}")


def encode_classification(task: TaskData, tokenizer: Tokenizer,
                          seq_len: int) -> ClassificationData:
  """`ClassificationExample`s as right-padded rows with attention masks and labels."""
  check_family(task, ClassificationExample)
  if not task.label_names:
    raise DataError(f"{task.task} {task.split} ({task.source}): a classification task "
                    "needs its label_names")
  num_labels = len(task.label_names)
  pad = pad_id_of(tokenizer)
  rows, masks, labels = [], [], []
  too_long = bad_label = empty = 0
  for example in task.examples:
    ids = tokenizer.encode_prompt(example.text)
    if not ids:
      empty += 1
      continue
    if len(ids) > seq_len:
      too_long += 1
      continue
    if not 0 <= example.label < num_labels:
      bad_label += 1
      continue
    row = np.full(seq_len, pad, np.int32)
    row[:len(ids)] = ids
    rows.append(row)
    masks.append(np.arange(seq_len) < len(ids))
    labels.append(example.label)
  skipped = _skipped(task, too_long=too_long, **{"label out of range": bad_label,
                                                 "empty text": empty})
  if not rows:
    raise _no_rows(task, skipped, seq_len)
  return ClassificationData(np.stack(rows), np.stack(masks), np.asarray(labels, np.int32),
                            tuple(task.label_names), task.rows_read, skipped)
