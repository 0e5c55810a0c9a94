"""The examples run and do what they print."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import numpy as np  # noqa: E402
import quickstart  # noqa: E402


def test_quickstart_loss_falls():
  losses = quickstart.main(["--steps", "60"])
  assert len(losses) == 60
  assert losses[-1] < 0.3 * losses[0]


def test_lora_gpt2_example_trains_only_lora_and_loss_falls():
  import lora_gpt2  # noqa: E402

  losses = lora_gpt2.main(["--steps", "40", "--batch", "8"])
  assert np.mean(losses[-5:]) < losses[0] - 0.2
