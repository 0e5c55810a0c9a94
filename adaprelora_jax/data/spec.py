"""What a task loader is: its accepted field names, how one row becomes a record, and
the counted reasons a row is skipped.

Each task module (`e2e`, `glue`, `arc`, `gsm8k`) builds a `TaskSpec`; `load_task` reads
the rows, picks the first accepted field set the file has, renames those fields to the
task's canonical names (the first set), and calls `parse` on each row. `parse` raises
`SkipRow(reason)` for a row it cannot use; the reason is what `TaskData.skipped` counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adaprelora_jax.data.records import Example


class SkipRow(Exception):
  """A single row the task cannot use; the message is the counted reason."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One task's loader.

  `field_sets[0]` are the canonical field names `parse` reads; every other set is an
  accepted alternative naming of the same fields, in the same order.
  """

  name: str                                   # "glue/sst2", ...
  field_sets: tuple[tuple[str, ...], ...]
  parse: Callable[[Mapping[str, Any]], Example]
  hf_dataset: str                             # the Hugging Face dataset it mirrors
  hf_config: str | None = None                # its config (also a folder's subfolder)
  label_names: tuple[str, ...] = ()
  # Extra file names of a split in a folder (E2E: "devset" for "validation").
  split_aliases: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  # A pass over all the kept examples (E2E: gather the references of each MR).
  finish: Callable[[Sequence[Example]], Sequence[Example]] | None = None


def text(row: Mapping[str, Any], name: str, *, what: str | None = None) -> str:
  """A string field, stripped; SkipRow if it is missing, not text, or empty."""
  value = row.get(name)
  if value is None:
    raise SkipRow(f"missing field {name!r}")
  if not isinstance(value, str):
    raise SkipRow(f"field {name!r} is not text")
  value = value.strip()
  if not value:
    raise SkipRow(what or f"empty field {name!r}")
  return value
