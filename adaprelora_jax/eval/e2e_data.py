"""E2E NLG references: the rows of an E2E CSV grouped by meaning representation (MR)."""

from collections.abc import Iterable
import os

from adaprelora_jax.data import files


def group_e2e_references(rows: Iterable[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
  """Groups `(mr, ref)` rows into the MRs and the references of each, in file order.

  Consecutive rows with the same MR form one group, as the official E2E script
  (`measure_scores.py`) reads its multi-reference files. An MR that reappears after
  another MR is an error (a shuffled file would otherwise split its references).

  Args:
    rows: `(mr, ref)` pairs in file order.

  Returns:
    `(mrs, references)`: the distinct MRs in order and, for each, its references.

  Example:
    >>> group_e2e_references([("m1", "a"), ("m1", "b"), ("m2", "c")])
    (['m1', 'm2'], [['a', 'b'], ['c']])
  """
  mrs: list[str] = []
  references: list[list[str]] = []
  for mr, ref in rows:
    if mrs and mr == mrs[-1]:
      references[-1].append(ref)
      continue
    if mr in mrs:
      raise ValueError(f"MR {mr!r} appears again after other MRs; its rows must be consecutive")
    mrs.append(mr)
    references.append([ref])
  if not mrs:
    raise ValueError("no (mr, ref) rows")
  return mrs, references


def read_e2e_references(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
  """Reads an E2E file (columns `mr`, `ref`) and groups it with `group_e2e_references`.

  Args:
    path: a CSV file such as `testset_w_refs.csv` (or a JSON, JSON-lines or Parquet file
      with those fields; see `adaprelora_jax.data.files`).

  Returns:
    `(mrs, references)` as `group_e2e_references` returns them, references verbatim.
  """
  rows = files.read_file(path)
  if not {"mr", "ref"} <= set(rows.fields):
    raise ValueError(f"{path}: expected the columns 'mr' and 'ref', found {list(rows.fields)}")
  return group_e2e_references((row.get("mr", ""), row.get("ref", "")) for row in rows.rows)
