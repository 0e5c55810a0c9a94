"""The records every task loader returns: text, before any tokenizer sees it.

A loader reads a file (or a Hugging Face dataset) into a `TaskData`: the examples it could
use, in file order, and a count per reason of the rows it could not. Prompts are already
rendered with the task's pinned template (see each task's module), so whatever trains or
evaluates on the records never re-renders them.

- `TextExample`: generation tasks (E2E NLG, GSM8K). Train on `prompt + target`, loss on the
  target; evaluate by generating from `prompt` and comparing with `references`.
- `ClassificationExample`: GLUE. `text` is the rendered sentence or pair; `label` an int
  in `range(num_labels)`.
- `ChoiceExample`: ARC. `prompt` is the rendered question with its lettered choices;
  `choices` the continuation scored for each choice; `answer` the index of the right one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


class DataError(ValueError):
  """A file or dataset that cannot be used at all: missing, unreadable, without the
  task's fields, or without a single usable row. The command prints it and exits non-zero.
  (A single bad row is not an error: it is counted in `TaskData.skipped`.)"""


@dataclasses.dataclass(frozen=True)
class TextExample:
  """A prompt, the target trained on, and every reference an evaluation compares with
  (E2E: all references of the meaning representation; GSM8K: the final answer)."""

  prompt: str
  target: str
  references: tuple[str, ...] = ()
  # The group a row belongs to (E2E: the raw meaning representation), for evaluation.
  key: str = ""


@dataclasses.dataclass(frozen=True)
class ClassificationExample:
  """A rendered sentence (or sentence pair) and its class."""

  text: str
  label: int


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
  """A rendered multiple-choice question, the scored continuation of each choice and
  the index of the right one."""

  prompt: str
  choices: tuple[str, ...]
  answer: int


Example = TextExample | ClassificationExample | ChoiceExample


@dataclasses.dataclass(frozen=True)
class TaskData:
  """The usable examples of one split and what happened to the other rows.

  `skipped` maps a reason ("missing field 'label'", "empty target", ...) to the number of
  rows skipped for it; `rows_read` counts every row seen, so
  `len(examples) + sum(skipped.values()) == rows_read`.
  """

  task: str                      # e.g. "e2e", "glue/sst2", "arc/challenge", "gsm8k"
  split: str                     # "train", "validation", "test", ...
  source: str                    # the file, folder or dataset name read
  examples: tuple[Example, ...]
  rows_read: int
  skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)
  # Classification only: the label names in index order (e.g. ("negative", "positive")).
  label_names: tuple[str, ...] = ()

  def report(self) -> str:
    """One line for the log: examples kept and rows skipped, by reason."""
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
    return (f"{self.task} {self.split} ({self.source}): {len(self.examples)} examples from "
            f"{self.rows_read} rows; skipped: {skipped}")
