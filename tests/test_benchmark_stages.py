"""`benchmarks/optimizer_step.py`: its per-stage AdaPreLoRA functions compute the real step,
and its multiply-add formulas count what XLA counts."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import optimizer_step  # noqa: E402

import adaprelora_jax as apl  # noqa: E402

SHAPES = {"up": (24, 40)}  # (in, out): m != n
RANK, LAYERS = 4, 2


@pytest.fixture(scope="module")
def stages_and_step():
  params = optimizer_step.lora_factors(SHAPES, RANK, LAYERS)
  grads = optimizer_step.lora_factors(SHAPES, RANK, LAYERS, seed=1)
  tx = apl.scale_by_adaprelora(lora_scale=optimizer_step.LORA_SCALE)
  state = tx.init(params)
  stages = optimizer_step.adaprelora_stages(params, grads, state.nu, state.mu)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  return stages, updates


def test_stage_chain_equals_the_step(stages_and_step):
  stages, updates = stages_and_step
  for name, ((_, out_a), (_, out_b)) in zip(sorted(SHAPES), stages[-1].value()):  # tree order
    np.testing.assert_allclose(out_a, updates[name]["lora_a"], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(out_b, updates[name]["lora_b"], rtol=2e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(out_b))) > 0  # a real step, not zeros on both sides


def test_stage_formulas_count_what_xla_counts(stages_and_step):
  stages, _ = stages_and_step
  gemm = [s for s in stages if "r^2" in s.formula]
  assert len(gemm) == 5
  for s in gemm:
    assert 2 * s.macs <= s.xla["flops"], (s.name, s.macs, s.xla)  # every product counted
    if not s.name.startswith("4 "):  # (stage 4's EMA and roots are elementwise work)
      # XLA adds only the elementwise work around the products: under 25% at r = 4.
      assert s.xla["flops"] <= 1.25 * 2 * s.macs, (s.name, s.macs, s.xla)
  total = sum(s.macs for s in stages)
  m = LAYERS * sum(out for _, out in SHAPES.values())
  n = LAYERS * sum(inp for inp, _ in SHAPES.values())
  pairs = LAYERS * len(SHAPES)
  assert total == (15 * m + 14 * n) * RANK ** 2 + 6 * pairs * RANK ** 3
