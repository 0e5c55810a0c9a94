"""Results files: round trip, and every metric recomputed from the saved predictions."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from adaprelora_jax import eval as ev


def test_round_trip_and_recompute(tmp_path):
  glue = {"preds": np.array([1, 0, 1, 1]), "labels": [1, 0, 0, 1]}
  arc = {"log_likelihoods": [jnp.array([-1.0, -3.0]), [-2.0, -1.0, -4.0]],
         "token_counts": [[1, 3], [2, 1, 4]], "labels": [0, 2]}
  gsm = {"predictions": ["so 72", "it is 5"], "answers": ["#### 72", "#### 6"]}
  e2e = {"predictions": ["the cat sat on the mat"], "references": [["the cat sat on a mat"]]}
  metrics = {
      "mrpc": ev.glue_metric("mrpc", glue["preds"], glue["labels"]),
      "arc": ev.multiple_choice_accuracy(arc["log_likelihoods"], arc["token_counts"],
                                         arc["labels"]),
      "gsm8k": {"exact_match": np.float32(ev.gsm8k_exact_match(**gsm))},
      "e2e": {"BLEU": ev.bleu(**e2e), "NIST": ev.nist(["a b"], [["a b"]])},  # NIST NaN
  }
  path = tmp_path / "run" / "results.json"
  ev.write_results(path, metrics, {"mrpc": glue, "arc": arc, "gsm8k": gsm, "e2e": e2e})
  assert json.loads(path.read_text(), parse_constant=lambda c: c)["format"]

  got_metrics, saved = ev.read_results(path)
  assert got_metrics["mrpc"] == pytest.approx(metrics["mrpc"])
  assert got_metrics["arc"] == metrics["arc"]
  assert math.isnan(got_metrics["e2e"]["NIST"])
  # Recompute each metric from the file alone.
  assert ev.glue_metric("mrpc", saved["mrpc"]["preds"], saved["mrpc"]["labels"]) == pytest.approx(
      got_metrics["mrpc"])
  a = saved["arc"]
  assert ev.multiple_choice_accuracy(a["log_likelihoods"], a["token_counts"], a["labels"]) == (
      got_metrics["arc"])
  assert ev.gsm8k_exact_match(**saved["gsm8k"]) == pytest.approx(
      got_metrics["gsm8k"]["exact_match"])
  assert ev.bleu(**saved["e2e"]) == got_metrics["e2e"]["BLEU"]


def test_bad_results(tmp_path):
  with pytest.raises(ValueError, match="metrics must be a dict"):
    ev.write_results(tmp_path / "r.json", [1.0], [])
  other = tmp_path / "other.json"
  other.write_text('{"metrics": {}}')
  with pytest.raises(ValueError, match="not a results file"):
    ev.read_results(other)
  with pytest.raises(TypeError, match="not JSON serializable"):
    ev.write_results(tmp_path / "r.json", {"a": object()}, [])
  assert not (tmp_path / "r.json").exists()
