"""`load_task`: one of the paper's tasks, from a file, a folder or a dataset name, as
records.

>>> import pathlib, tempfile
>>> file = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
>>> _ = file.write_text('{"sentence": "great fun", "label": 1}\\n'
...                     '{"sentence": "a test row", "label": -1}\\n')
>>> data = load_task("glue/sst2", file)
>>> data.examples, data.label_names
((ClassificationExample(text='Sentence: great fun\\nLabel:', label=1),), ('negative', 'positive'))
>>> data.skipped
{'unlabeled row (label -1)': 1}
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from typing import Any

from adaprelora_jax.data import arc, e2e, glue, gsm8k
from adaprelora_jax.data.files import Rows, read_rows
from adaprelora_jax.data.records import DataError, Example, TaskData
from adaprelora_jax.data.spec import SkipRow, TaskSpec

SPECS: Mapping[str, TaskSpec] = {
    "e2e": e2e.SPEC,
    **glue.SPECS,
    **arc.SPECS,
    "gsm8k": gsm8k.SPEC,
}
TASKS: tuple[str, ...] = tuple(SPECS)


def task_spec(task: str) -> TaskSpec:
  """The loader of `task`; DataError naming the known tasks for any other name."""
  if task not in SPECS:
    raise DataError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
  return SPECS[task]


def _field_set(spec: TaskSpec, rows: Rows) -> tuple[str, ...]:
  """The first accepted field set the rows have; DataError naming expected and found."""
  for names in spec.field_sets:
    if set(names) <= set(rows.fields):
      return names
  expected = " or ".join(str(list(names)) for names in spec.field_sets)
  raise DataError(f"{rows.source}: {spec.name} needs the fields {expected}; found "
                  f"{list(rows.fields)}")


def examples_from_rows(spec: TaskSpec, rows: Rows, split: str) -> TaskData:
  """The task's records from rows already read (the fields checked, bad rows counted)."""
  names = _field_set(spec, rows)
  canonical = spec.field_sets[0]
  examples: list[Example] = []
  skipped: collections.Counter[str] = collections.Counter()
  if rows.unreadable:
    skipped["unreadable line"] = rows.unreadable
  for row in rows.rows:
    renamed: dict[str, Any] = dict(row)
    for new, old in zip(canonical, names):
      renamed[new] = row.get(old)
    try:
      examples.append(spec.parse(renamed))
    except SkipRow as e:
      skipped[str(e)] += 1
  if not examples:
    reasons = ", ".join(f"{n} {why}" for why, n in skipped.most_common()) or "none"
    raise DataError(f"{rows.source}: no usable {spec.name} row among "
                    f"{len(rows.rows) + rows.unreadable} (skipped: {reasons})")
  if spec.finish is not None:
    examples = list(spec.finish(examples))
  return TaskData(task=spec.name, split=split, source=rows.source, examples=tuple(examples),
                  rows_read=len(rows.rows) + rows.unreadable, skipped=dict(skipped),
                  label_names=spec.label_names)


def load_task(task: str, source: str | os.PathLike, split: str = "train", *,
              max_rows: int | None = None, backend: str = "auto",
              dataset_options: Mapping[str, Any] | None = None) -> TaskData:
  """One split of a task as records.

  Args:
    task: one of `TASKS`: "e2e", "glue/mnli", "glue/sst2", "glue/cola", "glue/qnli",
      "glue/mrpc", "arc/challenge", "arc/easy", "gsm8k".
    source: a `.json`/`.jsonl`/`.parquet`/`.csv` file, a folder holding the split's
      file(s) (also in a subfolder named after the Hugging Face config, e.g. `sst2/`,
      `ARC-Challenge/`, `main/`, or in `data/`), or a Hugging Face dataset name (e.g.
      "nyu-mll/glue"; read through `datasets` with the task's config).
    split: "train", "validation", "test" (MNLI: "validation_matched", ...). Ignored for a
      file, which is the split.
    max_rows: read at most this many rows (None: all).
    backend: "auto" (local paths read here, other names through `datasets`), "local", or
      "datasets" (every source through `datasets.load_dataset`, e.g. a hub snapshot folder).
    dataset_options: passed to `datasets.load_dataset` (`cache_dir`, `revision`,
      `data_files`, ...).

  Returns:
    TaskData: the usable examples in file order, and the skipped rows counted by reason.

  Raises:
    DataError: an unknown task, a missing or unreadable file, a file without the task's
      fields, or no usable row.
  """
  spec = task_spec(task)
  if max_rows is not None and max_rows < 1:
    raise ValueError(f"max_rows must be positive or None, not {max_rows}")
  rows = read_rows(source, split, config=spec.hf_config,
                   aliases=spec.split_aliases.get(split, ()), max_rows=max_rows,
                   backend=backend, dataset_options=dataset_options)
  return examples_from_rows(spec, rows, split)
