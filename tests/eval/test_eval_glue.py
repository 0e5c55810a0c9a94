"""GLUE metrics against confusion-matrix arithmetic written out here."""

import math

import numpy as np
import pytest

from adaprelora_jax import eval as ev

# Ten binary examples: TP = 3, TN = 4, FP = 2, FN = 1.
PREDS = [1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
LABELS = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
TP, TN, FP, FN = 3, 4, 2, 1


def test_binary_metrics_by_hand():
  assert ev.accuracy(PREDS, LABELS) == pytest.approx((TP + TN) / 10)             # 0.7
  assert ev.f1_score(PREDS, LABELS) == pytest.approx(2 * TP / (2 * TP + FP + FN))  # 6/9
  mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
  assert mcc == pytest.approx(10 / math.sqrt(600))
  assert ev.matthews_corrcoef(PREDS, LABELS) == pytest.approx(mcc)
  # Perfect and inverted predictions; constant predictions have no correlation.
  assert ev.matthews_corrcoef(LABELS, LABELS) == pytest.approx(1.0)
  assert ev.matthews_corrcoef([1 - y for y in LABELS], LABELS) == pytest.approx(-1.0)
  assert ev.matthews_corrcoef([1] * 10, LABELS) == 0.0
  assert ev.f1_score([0, 0], [0, 0]) == 0.0


def test_glue_metric_dispatch():
  acc = (TP + TN) / 10
  assert ev.glue_metric("cola", PREDS, LABELS) == {
      "matthews_correlation": pytest.approx(10 / math.sqrt(600))}
  assert ev.glue_metric("MRPC", PREDS, LABELS) == {"f1": pytest.approx(6 / 9),
                                                   "accuracy": pytest.approx(acc)}
  for task in ("sst2", "SST-2", "qnli"):
    got = ev.glue_metric(task, np.array(PREDS), np.array(LABELS))
    assert got == {"accuracy": pytest.approx(acc)}
  # MNLI: three classes, 4 of 6 right.
  assert ev.glue_metric("mnli", [0, 1, 2, 2, 1, 0], [0, 1, 2, 0, 2, 0]) == {
      "accuracy": pytest.approx(4 / 6)}


def test_glue_bad_input():
  with pytest.raises(ValueError, match="unknown GLUE task 'stsb'"):
    ev.glue_metric("stsb", [1], [1])
  with pytest.raises(ValueError, match="2 predictions but 1 labels"):
    ev.glue_metric("sst2", [1, 0], [1])
  with pytest.raises(ValueError, match="no predictions"):
    ev.accuracy([], [])
  with pytest.raises(ValueError, match="class ids"):
    ev.glue_metric("sst2", [0.7, 0.2], [1, 0])
  with pytest.raises(ValueError, match="binary"):
    ev.glue_metric("cola", [0, 2], [0, 1])
