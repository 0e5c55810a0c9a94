"""Examples as tokens: the byte-level tokenizer, the E2E rendering, CSV reading, and
the batch of a step as a pure function of (seed, step).

The pinned E2E rendering (the tasks reuse it): the meaning representation
`name[The Eagle], eatType[pub]` becomes the prompt `name: The Eagle; eatType: pub\\n`,
the target is the reference text followed by the end token, and the loss is taken on the
target tokens only.

>>> render_mr("name[The Eagle], eatType[pub], near[Burger King]")
'name: The Eagle; eatType: pub; near: Burger King\\n'
>>> tok = ByteTokenizer()
>>> example = tok.example("ab\\n", "cd")
>>> example.prompt, example.target
([97, 98, 10], [99, 100, 255])
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from adaprelora_jax.data.e2e import render_mr
from adaprelora_jax.data.tokenizers import ByteTokenizer
from adaprelora_jax.data.tokenizers import TokenIds as Example
from adaprelora_jax.train.config import ConfigError


@dataclasses.dataclass(frozen=True)
class TokenizedData:
  """Fixed-length rows: `tokens (n, seq_len + 1)`, `loss_mask (n, seq_len)` (1 where the
  next token is a target token), and what tokenizing did to the source rows."""

  tokens: np.ndarray
  loss_mask: np.ndarray
  # Source rows read, rows skipped as malformed, rows dropped (prompt too long),
  # rows whose target was cut at seq_len.
  source_rows: int
  bad_rows: int
  dropped: int
  truncated: int
  # Task data: rows skipped by reason (the loader's and "longer than seq_len").
  skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.tokens)

  def take(self, idx: np.ndarray, valid: np.ndarray | None = None) -> Batch:
    """The rows `idx` (any shape) as inputs, next tokens and loss mask; `valid` False
    masks a row out."""
    tokens, mask = self.tokens[idx], self.loss_mask[idx]
    if valid is not None:
      mask = mask * valid[..., None]
    return Batch(tokens[..., :-1], tokens[..., 1:], mask)

  def report(self, name: str) -> str:
    if self.skipped:
      skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
      return f"{name}: {len(self)} examples from {self.source_rows} rows; skipped: {skipped}"
    return (f"{name}: {len(self)} examples from {self.source_rows} rows "
            f"({self.bad_rows} malformed, {self.dropped} dropped, {self.truncated} truncated)")


# More dropped rows than this fraction is an error, not a warning.
MAX_DROPPED_FRACTION = 0.01


def tokenize(examples: Sequence[Example | None], seq_len: int, *, pad_id: int,
             source: str) -> TokenizedData:
  """Pack examples into rows of `seq_len + 1` tokens (None entries are malformed rows).

  A target that does not fit is cut (counted as truncated); an example whose prompt
  leaves no room for a target token is dropped; more than 1% dropped is a ConfigError.
  """
  rows, masks = [], []
  bad = dropped = truncated = 0
  for example in examples:
    if example is None:
      bad += 1
      continue
    ids = example.prompt + example.target
    if len(example.prompt) >= seq_len + 1:
      dropped += 1
      continue
    if len(ids) > seq_len + 1:
      truncated += 1
      ids = ids[:seq_len + 1]
    row = np.full(seq_len + 1, pad_id, np.int32)
    row[:len(ids)] = ids
    mask = np.zeros(seq_len, np.float32)
    # Position i predicts token i + 1: the target tokens are predicted from the prompt's
    # last token on.
    mask[len(example.prompt) - 1:len(ids) - 1] = 1.0
    rows.append(row)
    masks.append(mask)
  total = len(examples)
  if not rows:
    raise ConfigError(f"{source}: no usable row ({total} rows, {bad} malformed, "
                      f"{dropped} with a prompt longer than seq_len {seq_len})")
  if dropped > MAX_DROPPED_FRACTION * (total - bad):
    raise ConfigError(f"{source}: {dropped} of {total - bad} rows have a prompt longer than "
                      f"seq_len {seq_len} (more than {MAX_DROPPED_FRACTION:.0%}); raise "
                      "seq_len")
  return TokenizedData(np.stack(rows), np.stack(masks), total, bad, dropped, truncated)


def read_e2e_csv(path: str | Path, tokenizer: ByteTokenizer, seq_len: int,
                 max_rows: int | None = None) -> TokenizedData:
  """An E2E CSV file (columns `mr` and `ref`) as tokens. A row with an empty field or a
  malformed MR is counted as malformed; a file without those columns is a ConfigError."""
  file = Path(path)
  if not file.is_file():
    raise ConfigError(f"{file}: no such file")
  examples: list[Example | None] = []
  try:
    with file.open(newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      columns = reader.fieldnames or []
      if "mr" not in columns or "ref" not in columns:
        raise ConfigError(f"{file}: an E2E CSV needs the columns 'mr' and 'ref'; "
                          f"found {columns}")
      for row in reader:
        if max_rows is not None and len(examples) >= max_rows:
          break
        mr, ref = row.get("mr"), row.get("ref")
        try:
          if not mr or not ref or not ref.strip():
            raise ValueError("empty field")
          examples.append(tokenizer.example(render_mr(mr), ref.strip()))
        except ValueError:
          examples.append(None)
  except (UnicodeDecodeError, csv.Error) as e:
    raise ConfigError(f"{file}: not a readable UTF-8 CSV file ({e})") from e
  return tokenize(examples, seq_len, pad_id=tokenizer.eos_id, source=str(file))


# The data order.


def example_indices(seed: int, step: int, count: int, num_examples: int) -> np.ndarray:
  """Indices of the `count` examples of step `step`: a fresh permutation of the data
  per epoch, drawn from (seed, epoch). A pure function: whoever asks gets the same batch.

  >>> example_indices(0, 3, 4, 10).tolist() == example_indices(0, 3, 4, 10).tolist()
  True
  """
  flat = np.arange(step * count, (step + 1) * count, dtype=np.int64)
  epochs, positions = np.divmod(flat, num_examples)
  out = np.empty(count, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    where = epochs == epoch
    out[where] = perm[positions[where]]
  return out


@dataclasses.dataclass(frozen=True)
class Batch:
  """One optimizer step's data, `(grad_accum, micro_batch, ...)`: inputs, next tokens,
  and the loss mask over the next tokens."""

  inputs: np.ndarray
  labels: np.ndarray
  loss_mask: np.ndarray

  def arrays(self) -> tuple[np.ndarray, ...]:
    """The arrays in the order the train step takes them."""
    return self.inputs, self.labels, self.loss_mask


def step_batch(data, seed: int, step: int, *, batch_size: int, grad_accum: int,
               rows: slice = slice(None)):
  """The batch of `step`, `(grad_accum, batch_size, seq_len)`; `rows` selects this host's
  rows of each micro-batch. `data` is any row set with `take` (`TokenizedData`, a task's
  `ClassificationData`)."""
  idx = example_indices(seed, step, batch_size * grad_accum, len(data))
  return data.take(idx.reshape(grad_accum, batch_size)[:, rows])


def eval_batches(data, batch_size: int) -> list:
  """The evaluation rows in order, as micro-batches of `batch_size` (the last one padded
  with masked-out copies of row 0)."""
  n = len(data)
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    out.append(data.take(np.where(valid, idx, 0)[None], valid[None]))
  return out
