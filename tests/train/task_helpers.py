"""Small learnable task files in the Hugging Face export formats (JSONL), one per record
family, for the task tests: read by `adaprelora_jax.data.load_task` like real ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The sentiment is the adjective's.
POSITIVE = ("great", "nice", "fun", "superb")
NEGATIVE = ("awful", "poor", "dull", "weak")


def glue_rows(n: int, seed: int) -> list[dict]:
  """SST-2 rows (`sentence`, `label`, `idx`)."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    label = int(rng.integers(2))
    word = rng.choice(POSITIVE if label else NEGATIVE)
    rows.append({"sentence": f"the film was {word}", "label": label, "idx": i})
  return rows


def gsm8k_rows(n: int, seed: int) -> list[dict]:
  """GSM8K rows (`question`, `answer` ending in `#### final`): sums."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    a, b = (int(x) for x in rng.integers(1, 10, 2))
    rows.append({"question": f"{a} plus {b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"})
  return rows


def arc_rows(n: int, seed: int) -> list[dict]:
  """ARC rows (`id`, `question`, `choices` {text, label}, `answerKey`): the right choice
  is the capital of the asked letter."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    letter = chr(ord("a") + int(rng.integers(26)))
    texts = [letter.upper()] + [chr(ord("a") + int(x)) for x in rng.integers(26, size=3)]
    order = rng.permutation(4)
    rows.append({"id": str(i), "question": f"capital {letter}?",
                 "choices": {"text": [texts[k] for k in order], "label": list("ABCD")},
                 "answerKey": "ABCD"[int(np.argmin(order))]})
  return rows


ROWS = {"glue/sst2": glue_rows, "gsm8k": gsm8k_rows, "arc/challenge": arc_rows}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def write_task(folder: Path, task: str, n_train: int = 96, n_eval: int = 16,
               ) -> tuple[Path, Path]:
  """`train.jsonl` and `validation.jsonl` of `task` in `folder` (plus one bad row each:
  a row without the label / answer field, which the loader counts and skips)."""
  make = ROWS[task]
  bad = {"glue/sst2": {"sentence": "no label"}, "gsm8k": {"question": "no answer"},
         "arc/challenge": {"question": "no choices", "answerKey": "A"}}[task]
  name = task.replace("/", "_")
  return (write_jsonl(folder / name / "train.jsonl", make(n_train, 0) + [bad]),
          write_jsonl(folder / name / "validation.jsonl", make(n_eval, 1) + [bad]))
