"""GLUE classification metrics: accuracy, Matthews correlation (CoLA), F1 (MRPC)."""

from collections.abc import Sequence
import math

from adaprelora_jax.eval import _checks

_TASK_METRICS = {
    "mnli": ("accuracy",),
    "sst2": ("accuracy",),
    "qnli": ("accuracy",),
    "cola": ("matthews_correlation",),
    "mrpc": ("f1", "accuracy"),
}


def _labels(preds, labels):
  _checks.check_pairs(preds, labels, "labels")
  out = []
  for name, values in (("preds", preds), ("labels", labels)):
    ints = [int(v) for v in values]
    if any(i != v for i, v in zip(ints, values)):
      raise ValueError(f"{name} must be class ids (integers); take the argmax of scores first")
    out.append(ints)
  return out


def _binary_counts(preds, labels):
  preds, labels = _labels(preds, labels)
  for name, values in (("preds", preds), ("labels", labels)):
    if not set(values) <= {0, 1}:
      raise ValueError(f"{name} must be binary 0/1 labels, found {sorted(set(values))}")
  tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels))
  tn = sum(p == 0 and y == 0 for p, y in zip(preds, labels))
  fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels))
  fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels))
  return tp, tn, fp, fn


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
  """`1/N sum_i [pred_i == label_i]`.

  Example:
    >>> accuracy([0, 1, 2, 1], [0, 1, 1, 1])
    0.75
  """
  preds, labels = _labels(preds, labels)
  return sum(p == y for p, y in zip(preds, labels)) / len(preds)


def f1_score(preds: Sequence[int], labels: Sequence[int]) -> float:
  """Binary F1 of the positive class 1: `2 TP / (2 TP + FP + FN)` (0 when that is 0/0).

  Example:
    >>> f1_score([1, 1, 0, 0], [1, 0, 1, 0])  # TP = FP = FN = 1
    0.5
  """
  tp, _, fp, fn = _binary_counts(preds, labels)
  denom = 2 * tp + fp + fn
  return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
  """Binary Matthews correlation, `(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))`.

  0 when a factor of the denominator is 0 (a constant prediction or label), as scikit-learn.

  Example:
    >>> matthews_corrcoef([1, 0, 1, 0], [1, 0, 0, 0])  # TP=1, TN=2, FP=1, FN=0
    0.5773502691896258
  """
  tp, tn, fp, fn = _binary_counts(preds, labels)
  denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
  return (tp * tn - fp * fn) / math.sqrt(denom) if denom else 0.0


def glue_metric(task: str, preds: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
  """The metrics GLUE defines for `task` (the subset LoRA-Pro reports).

  `mnli`, `sst2`, `qnli`: accuracy; `cola`: Matthews correlation; `mrpc`: F1 and accuracy.
  Task names are case-insensitive and may be written `SST-2`.

  Args:
    task: the GLUE task.
    preds: predicted class ids.
    labels: gold class ids.

  Returns:
    dict: `{metric name: value}`.

  Example:
    >>> glue_metric("MRPC", [1, 1, 0, 0], [1, 0, 1, 0])
    {'f1': 0.5, 'accuracy': 0.5}
  """
  key = task.lower().replace("-", "").replace("_", "")
  if key not in _TASK_METRICS:
    raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(_TASK_METRICS)}")
  fns = {"accuracy": accuracy, "f1": f1_score, "matthews_correlation": matthews_corrcoef}
  return {name: fns[name](preds, labels) for name in _TASK_METRICS[key]}
