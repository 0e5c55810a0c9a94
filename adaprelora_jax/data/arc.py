"""ARC (AI2 Reasoning Challenge, Challenge and Easy sets) as multiple choice.

Fields (Hugging Face `allenai/ai2_arc`, configs `ARC-Challenge` / `ARC-Easy`): `id`
(optional), `question`, `choices` (`{"text": [...], "label": [...]}`, or a list of
`{"text", "label"}` objects), `answerKey`. Labels may be `A`-`E` or `1`-`5`; a row has 3
to 5 choices.

The pinned rendering: the prompt is the question, one line per choice lettered A, B, C,
... in the row's order (whatever its labels), then `Answer:`; the scored continuation of
choice i is ` {text}` (the answer's own words, so length normalisation is over them);
`answer` is the index of `answerKey` among the labels (an `answerKey` given as a letter
for numbered labels, or as a number for lettered ones, is read by position).

>>> ex = SPECS["arc/easy"].parse({"question": "Which is a metal?", "answerKey": "2",
...                  "choices": {"text": ["wood", "iron", "glass"], "label": ["1", "2", "3"]}})
>>> print(ex.prompt)
Question: Which is a metal?
A. wood
B. iron
C. glass
Answer:
>>> ex.choices, ex.answer
((' wood', ' iron', ' glass'), 1)
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from adaprelora_jax.data.records import ChoiceExample
from adaprelora_jax.data.spec import SkipRow, TaskSpec, text

MIN_CHOICES, MAX_CHOICES = 3, 5


def _choices(value: Any) -> tuple[list[Any], list[Any]]:
  """(texts, labels) from HF's dict of lists or a list of {"text", "label"} objects."""
  if isinstance(value, Mapping):
    texts, labels = value.get("text"), value.get("label")
  elif isinstance(value, list) and all(isinstance(c, Mapping) for c in value):
    texts = [c.get("text") for c in value]
    labels = [c.get("label") for c in value]
  else:
    raise SkipRow("malformed choices")
  if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
    raise SkipRow("malformed choices")
  return texts, labels


def _answer_index(key: str, labels: list[str]) -> int:
  if key in labels:
    return labels.index(key)
  # A letter key with numbered labels (or the reverse): read it by position.
  if key in string.ascii_uppercase[:len(labels)] and all(l.isdigit() for l in labels):
    return string.ascii_uppercase.index(key)
  if key.isdigit() and 1 <= int(key) <= len(labels) and all(l.isalpha() for l in labels):
    return int(key) - 1
  raise SkipRow("answerKey not among the choice labels")


def _parse(row: Mapping[str, Any]) -> ChoiceExample:
  question = text(row, "question")
  if row.get("choices") is None:
    raise SkipRow("missing field 'choices'")
  texts, labels = _choices(row["choices"])
  if not MIN_CHOICES <= len(texts) <= MAX_CHOICES:
    raise SkipRow(f"not {MIN_CHOICES} to {MAX_CHOICES} choices")
  if not all(isinstance(t, str) and t.strip() for t in texts):
    raise SkipRow("empty choice")
  labels = [str(l).strip() for l in labels]
  answer = _answer_index(text(row, "answerKey"), labels)
  texts = [t.strip() for t in texts]
  lines = [f"Question: {question}"]
  lines += [f"{letter}. {t}" for letter, t in zip(string.ascii_uppercase, texts)]
  lines.append("Answer:")
  return ChoiceExample(prompt="\n".join(lines), choices=tuple(" " + t for t in texts),
                       answer=answer)


def spec(name: str, config: str) -> TaskSpec:
  return TaskSpec(name=name, field_sets=(("question", "choices", "answerKey"),),
                  parse=_parse, hf_dataset="allenai/ai2_arc", hf_config=config)


SPECS: dict[str, TaskSpec] = {
    "arc/challenge": spec("arc/challenge", "ARC-Challenge"),
    "arc/easy": spec("arc/easy", "ARC-Easy"),
}
