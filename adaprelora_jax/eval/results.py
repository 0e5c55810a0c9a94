"""Results files: metrics beside the saved predictions they were computed from, as JSON."""

import json
import os
from typing import Any

import numpy as np

FORMAT = "adaprelora_jax.eval.results/1"


def _plain(x):
  if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and hasattr(x, "shape")):  # jax too
    return np.asarray(x).tolist()
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"{type(x).__name__} is not JSON serializable")


def write_results(path: str | os.PathLike, metrics: dict[str, Any], predictions: Any, *,
                  info: dict[str, Any] | None = None) -> None:
  """Writes `{"format", "metrics", "predictions"}` (and `"info"`, if given) as JSON, atomically.

  Save in `predictions` everything the metrics need (e.g. per E2E MR its generated text and
  references; per ARC question the choice log-likelihoods, token counts and label), so that
  every metric can be recomputed from the file alone. NumPy and JAX arrays and scalars
  become lists and numbers; NaN is written as `NaN` (Python's JSON).

  Args:
    path: the file to write (parent folders are created).
    metrics: the metric values (nested dicts allowed).
    predictions: JSON-serializable predictions.
    info: what was evaluated and how (task, split, source, settings); optional.
  """
  if not isinstance(metrics, dict):
    raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  record = {"format": FORMAT, "metrics": metrics, "predictions": predictions}
  if info is not None:
    record["info"] = info
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, default=_plain, indent=1, ensure_ascii=False)
    f.write("\n")
  os.replace(tmp, path)


def read_results(path: str | os.PathLike) -> tuple[dict[str, Any], Any]:
  """Reads a file written by `write_results`.

  Returns:
    `(metrics, predictions)`.
  """
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise ValueError(f"{path} is not a results file of format {FORMAT!r}")
  return record["metrics"], record["predictions"]
