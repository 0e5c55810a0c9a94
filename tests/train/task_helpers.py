"""Small learnable task splits built by hand from the records of `adaprelora_jax.data`
(one per record family), and a stand-in for the loaders that serves them."""

from __future__ import annotations

import numpy as np

from adaprelora_jax.data import ChoiceExample, ClassificationExample, DataError, TaskData
from adaprelora_jax.data import TextExample

# The last letter tells the class (the head reads the last token's hidden state).
POSITIVE = ("great", "nice", "fun", "superb")
NEGATIVE = ("awful", "poor", "dull", "weak")


def glue_split(n: int, seed: int, split: str = "train") -> TaskData:
  """SST-2-like sentences: the label is whether the adjective is a positive one."""
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(n):
    label = int(rng.integers(2))
    word = rng.choice(POSITIVE if label else NEGATIVE)
    examples.append(ClassificationExample(f"the film was {word}", label))
  return TaskData("glue/sst2", split, "memory", tuple(examples), rows_read=n + 1,
                  skipped={"missing field 'label'": 1}, label_names=("negative", "positive"))


def gsm8k_split(n: int, seed: int, split: str = "train") -> TaskData:
  """GSM8K-like sums with the solution ending in `#### answer`."""
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(n):
    a, b = (int(x) for x in rng.integers(1, 10, 2))
    examples.append(TextExample(f"Question: What is {a} plus {b}?\nAnswer:",
                                f" {a} + {b} = {a + b}\n#### {a + b}", (str(a + b),)))
  return TaskData("gsm8k", split, "memory", tuple(examples), rows_read=n)


def arc_split(n: int, seed: int, split: str = "train") -> TaskData:
  """ARC-like questions whose right choice is always the capital of a letter."""
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(n):
    letter = chr(ord("a") + int(rng.integers(26)))
    wrong = [chr(ord("a") + int(x)) for x in rng.integers(26, size=3)]
    choices = [letter.upper()] + wrong
    order = rng.permutation(4)
    shuffled = tuple(choices[i] for i in order)
    answer = int(np.argmin(order))
    listing = "\n".join(f"{k}. {c}" for k, c in zip("ABCD", shuffled))
    examples.append(ChoiceExample(f"Question: capital of {letter}?\n{listing}\nAnswer:",
                                  tuple(" " + c for c in shuffled), answer))
  return TaskData("arc/challenge", split, "memory", tuple(examples), rows_read=n)


SPLITS = {"glue/sst2": glue_split, "gsm8k": gsm8k_split, "arc/challenge": arc_split}


def fake_load_task(task: str, source: str, split: str, max_rows: int | None = None):
  """Stands in for `adaprelora_jax.data.load_task`: source "bad" is an unusable file."""
  if source == "bad":
    raise DataError(f"{source}: no field 'sentence' (found 'text')")
  n = 96 if split == "train" else 16
  n = n if max_rows is None else min(n, max_rows)
  return SPLITS[task](n, 0 if split == "train" else 1, split)
