"""GLUE: MNLI, SST-2, CoLA, QNLI and MRPC (the subset LoRA-Pro reports) as classification.

Fields (Hugging Face `nyu-mll/glue`; `idx` is ignored), label names in HF's index order,
and the pinned rendering: one `Title: text` line per field, then `Label:`.

- sst2 (sentence; negative, positive): `Sentence: {sentence}\\nLabel:`
- cola (sentence; unacceptable, acceptable): `Sentence: {sentence}\\nLabel:`
- mrpc (sentence1, sentence2; not_equivalent, equivalent):
  `Sentence 1: {sentence1}\\nSentence 2: {sentence2}\\nLabel:`
- qnli (question, sentence; entailment, not_entailment):
  `Question: {question}\\nSentence: {sentence}\\nLabel:`
- mnli (premise, hypothesis; entailment, neutral, contradiction):
  `Premise: {premise}\\nHypothesis: {hypothesis}\\nLabel:`

`label` is an integer (or an integer string, as in CSV, or a label name); -1 marks an
unlabeled test row, which is skipped and counted, as are labels that are not integers or
out of range. MNLI's evaluation splits are `validation_matched` and
`validation_mismatched`.

>>> SPECS["glue/mrpc"].parse({"sentence1": "A cat.", "sentence2": " A dog.", "label": "1"})
ClassificationExample(text='Sentence 1: A cat.\\nSentence 2: A dog.\\nLabel:', label=1)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from adaprelora_jax.data.records import ClassificationExample
from adaprelora_jax.data.spec import SkipRow, TaskSpec, text

# Task -> ((field, title), ...), label names in index order.
_TASKS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "mnli": ((("premise", "Premise"), ("hypothesis", "Hypothesis")),
             ("entailment", "neutral", "contradiction")),
    "sst2": ((("sentence", "Sentence"),), ("negative", "positive")),
    "cola": ((("sentence", "Sentence"),), ("unacceptable", "acceptable")),
    "qnli": ((("question", "Question"), ("sentence", "Sentence")),
             ("entailment", "not_entailment")),
    "mrpc": ((("sentence1", "Sentence 1"), ("sentence2", "Sentence 2")),
             ("not_equivalent", "equivalent")),
}


def parse_label(value: Any, label_names: tuple[str, ...]) -> int:
  """A label as an index into `label_names`; SkipRow for -1, non-integers, out of range."""
  if value is None:
    raise SkipRow("missing field 'label'")
  if isinstance(value, str):
    value = value.strip()
    if value in label_names:
      return label_names.index(value)
    try:
      value = int(value)
    except ValueError:
      raise SkipRow("non-integer label") from None
  elif isinstance(value, float) and value.is_integer():
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, int):
    raise SkipRow("non-integer label")
  if value == -1:
    raise SkipRow("unlabeled row (label -1)")
  if not 0 <= value < len(label_names):
    raise SkipRow(f"label out of range 0..{len(label_names) - 1}")
  return value


def _parse(row: Mapping[str, Any], *, fields: tuple[tuple[str, str], ...],
           label_names: tuple[str, ...]) -> ClassificationExample:
  lines = [f"{title}: {text(row, name)}" for name, title in fields]
  return ClassificationExample(text="\n".join(lines) + "\nLabel:",
                               label=parse_label(row.get("label"), label_names))


SPECS: dict[str, TaskSpec] = {
    f"glue/{task}": TaskSpec(
        name=f"glue/{task}",
        field_sets=(tuple(name for name, _ in fields) + ("label",),),
        parse=functools.partial(_parse, fields=fields, label_names=labels),
        hf_dataset="nyu-mll/glue",
        hf_config=task,
        label_names=labels)
    for task, (fields, labels) in _TASKS.items()
}
