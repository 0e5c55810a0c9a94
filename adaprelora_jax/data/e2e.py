"""E2E NLG: a meaning representation (MR) and one human reference per row.

Fields: `mr`, `ref` (the official CSVs), or `meaning_representation`,
`human_reference` (the Hugging Face `tuetschek/e2e_nlg` export), or
`meaning_representation`, `target` (`GEM/e2e_nlg`). The pinned rendering: the MR
`name[The Eagle], eatType[pub]` is the prompt `name: The Eagle; eatType: pub\\n`; the
target is the reference (stripped); `references` are all references of that MR among the
rows read, in file order; `key` is the MR as written.

>>> render_mr("name[The Eagle], eatType[pub], near[Burger King]")
'name: The Eagle; eatType: pub; near: Burger King\\n'
>>> ex = SPEC.parse({"mr": "name[Zizzi], food[Fast food]", "ref": " Zizzi sells fast food. "})
>>> ex.prompt, ex.target, ex.key
('name: Zizzi; food: Fast food\\n', 'Zizzi sells fast food.', 'name[Zizzi], food[Fast food]')
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from adaprelora_jax.data.records import TextExample
from adaprelora_jax.data.spec import SkipRow, TaskSpec, text

_MR_ITEM = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*(?:,|$)")


def render_mr(mr: str) -> str:
  """The prompt of an E2E meaning representation: `key: value` pairs joined by `; `,
  then a newline. Raises ValueError for text that is not `key[value], ...`."""
  items, pos = [], 0
  mr = mr.strip()
  while pos < len(mr):
    match = _MR_ITEM.match(mr, pos)
    if match is None:
      raise ValueError(f"not an E2E meaning representation: {mr!r}")
    items.append(f"{match[1]}: {match[2]}")
    pos = match.end()
  if not items:
    raise ValueError("empty meaning representation")
  return "; ".join(items) + "\n"


def _parse(row: Mapping[str, Any]) -> TextExample:
  mr = text(row, "mr")
  ref = text(row, "ref", what="empty target")
  try:
    prompt = render_mr(mr)
  except ValueError as e:
    raise SkipRow("malformed mr") from e
  return TextExample(prompt=prompt, target=ref, key=mr)


def _gather_references(examples: Sequence[TextExample]) -> list[TextExample]:
  refs: dict[str, list[str]] = {}
  for ex in examples:
    refs.setdefault(ex.key, []).append(ex.target)
  return [dataclasses.replace(ex, references=tuple(refs[ex.key])) for ex in examples]


SPEC = TaskSpec(
    name="e2e",
    field_sets=(("mr", "ref"), ("meaning_representation", "human_reference"),
                ("meaning_representation", "target")),
    parse=_parse,
    hf_dataset="tuetschek/e2e_nlg",
    split_aliases={"train": ("trainset",), "validation": ("devset",),
                   "test": ("testset_w_refs",)},
    finish=_gather_references,
)
