"""Argument checks shared by the metrics: one clear `ValueError` per kind of bad input."""

from collections.abc import Sequence


def check_pairs(predictions: Sequence, targets: Sequence, what: str = "references") -> None:
  """Raise `ValueError` unless both sequences are non-empty and of the same length."""
  if len(predictions) == 0:
    raise ValueError("no predictions: the metric needs at least one example")
  if len(predictions) != len(targets):
    raise ValueError(
        f"{len(predictions)} predictions but {len(targets)} {what}: pass one entry per example"
    )


def check_references(references: Sequence[Sequence[str]]) -> list[list[str]]:
  """Check that every example has at least one reference string; return them as lists."""
  out = []
  for i, refs in enumerate(references):
    if isinstance(refs, str):
      raise ValueError(f"references[{i}] is a string; pass a list of reference strings per example")
    refs = list(refs)
    if not refs:
      raise ValueError(f"references[{i}] is empty: every example needs at least one reference")
    if not all(isinstance(r, str) for r in refs):
      raise ValueError(f"references[{i}] holds a non-string reference")
    out.append(refs)
  return out


def check_strings(predictions: Sequence[str]) -> list[str]:
  """Check that every prediction is a string."""
  for i, p in enumerate(predictions):
    if not isinstance(p, str):
      raise ValueError(f"predictions[{i}] is {type(p).__name__}, not a string")
  return list(predictions)
