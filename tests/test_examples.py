"""The examples run and do what they print."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import quickstart  # noqa: E402


def test_quickstart_loss_falls():
  losses = quickstart.main(["--steps", "60"])
  assert len(losses) == 60
  assert losses[-1] < 0.3 * losses[0]
