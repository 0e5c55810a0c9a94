"""benchmarks/quality.py and benchmarks/lora_runs.py at toy size: the learning rate held
in the optimizer state is exact and never recompiles, the sweep brackets the best rate,
the tables say where AdaPreLoRA loses."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import lora_runs  # noqa: E402
import quality  # noqa: E402

import adaprelora_jax as apl  # noqa: E402
from adaprelora_jax.train.config import OptimConfig  # noqa: E402
from adaprelora_jax.train.optim import make_schedule  # noqa: E402


@pytest.mark.parametrize("name, registry, options", [
    ("adaprelora", "adaprelora", {}), ("loraplus", "loraplus", {}),
    ("adaprelora_b1_none", "adaprelora", {"b1": None})])
def test_peak_in_state_equals_the_plain_optimizer(name, registry, options):
  """The suite's optimizer (peak learning rate in `inject_hyperparams` state, the step
  built at peak 1) gives the updates of the registry optimizer on `peak * unit` (a
  variant: with its keyword arguments)."""
  spec = lora_runs.RunSpec(steps=6, batch_size=1, warmup_steps=2)
  rng = np.random.default_rng(0)
  params = {"layer": {"lora_a": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
                      "lora_b": jnp.asarray(rng.normal(size=(2, 5)) * 0.1, jnp.float32)}}
  peak = 3e-3
  built = lora_runs.make_optimizer(name, params, lora_scale=2.0, spec=spec, peak=1.0)
  state = lora_runs.make_optimizer(name, params, lora_scale=2.0, spec=spec,
                                   peak=peak).init(params)
  unit = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=2), 6)
  kwargs = dict(options, **({"lora_scale": 2.0} if registry == "adaprelora" else {}))
  plain = optax.chain(optax.clip_by_global_norm(1.0),
                      apl.optimizers[registry](lambda i: peak * unit(i), **kwargs))
  ref_state = plain.init(params)
  update1, update2 = jax.jit(built.update), jax.jit(plain.update)
  p1, p2 = params, params
  for i in range(4):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    u1, state = update1(grads, state, p1)
    u2, ref_state = update2(grads, ref_state, p2)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  assert max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(u1)) > 0
  # Momentum state exists exactly when b1 is not None.
  has_mu = any(getattr(s, "mu", None) is not None for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, apl.AdaPreLoRAState)))
  if registry == "adaprelora":
    assert has_mu == ("b1" not in options)


def test_unknown_optimizer_names_the_known_ones():
  with pytest.raises(ValueError, match="adaprelora_b1_none"):
    lora_runs.resolve("adaprelora_b2")


@dataclasses.dataclass
class _FakeRun:
  val_loss: float
  seconds: float = 0.0
  seed: int = 0


class _FakeHarness:
  """Validation loss a parabola in log10(lr) with its minimum at `best`."""

  def __init__(self, best):
    self.best, self.calls = best, []

  def run(self, name, lr, seed, train, val):
    self.calls.append(lr)
    loss = (np.log10(lr) - np.log10(self.best)) ** 2 if lr < 0.5 else float("nan")
    return _FakeRun(loss, seed=seed)


def _task():
  return quality.Task("fake", "fake", None, None, None, None, "accuracy", "")


@pytest.mark.parametrize("best, max_extend, expect_edge", [
    (1e-3, 0, False),  # the prior's bracket holds it
    (1e-2, 2, False),  # an extension upward reaches past it
    (1e-1, 1, True),  # one is not enough: reported at the edge
    (1e-5, 3, True),  # the grid's end
    (3e-1, 5, False),  # above it the run diverges (NaN): counted as worst
])
def test_sweep_brackets_the_best_rate(best, max_extend, expect_edge):
  harness = _FakeHarness(best)
  out = quality.sweep(harness, _task(), "adaprelora", max_extend=max_extend,
                      print_fn=lambda _: None)
  found = quality.RATES[out["best_index"]]
  assert out["edge"] == expect_edge
  assert len(harness.calls) == len(set(harness.calls)) <= 3 + max_extend
  if not expect_edge:
    assert found == pytest.approx(best)
  else:
    assert found == max(harness.calls) or found == min(harness.calls)


def _results(adaprelora_acc, b1_none_acc=None):
  out = {}
  rows = [("adaprelora", adaprelora_acc), ("adamw", 0.8), ("lora_rite", 0.7)]
  if b1_none_acc is not None:
    rows.append(("adaprelora_b1_none", b1_none_acc))
  for name, acc in rows:
    out[name] = {"best_lr": 1e-3, "edge": name == "lora_rite", "sweep": {"0.001": 1.0},
                 "seeds": [{"seed": s, "val_loss": 1.0 + s, "losses": [(1, 2.0), (2, 1.5)],
                            "metrics": {"accuracy": acc + 0.01 * s}} for s in range(3)]}
  return out


def test_table_and_verdict_say_when_adaprelora_loses():
  task = _task()
  table, order, summary = quality.task_table(task, _results(0.6))
  assert order == ["adamw", "lora_rite", "adaprelora"]
  assert summary["adaprelora"]["accuracy"][0] == pytest.approx(0.61)
  assert summary["adaprelora"]["accuracy"][1] == pytest.approx(0.01)  # sample std
  assert "-0.2000" in table and "(edge)" in table
  text = quality.verdict(task, order, summary)
  assert "ranks 3 of 3" in text and "**loses** to adamw" in text and "behind AdamW" in text
  _, order, summary = quality.task_table(task, _results(0.9))
  text = quality.verdict(task, order, summary)
  assert "ranks 1 of 3" in text and "loses" not in text and "ahead of AdamW" in text
  # Both AdaPreLoRA rows get their own sentence, with the momentum setting named.
  _, order, summary = quality.task_table(task, _results(0.6, b1_none_acc=0.9))
  first, second = quality.verdict(task, order, summary).split("). ")
  assert "b1 = 0.9" in first and "ranks 4 of 4" in first and "behind AdamW" in first
  assert "b1 = None" in second and "ranks 1 of 4" in second and "ahead of AdamW" in second


def test_runs_reuse_one_compiled_step(package_base):
  """Rates and seeds change the run, never the compiled step; a tiny review task runs
  through training, validation and the label-likelihood accuracy."""
  spec = lora_runs.RunSpec(steps=2, batch_size=2, warmup_steps=1, log_every=1, rank=2,
                           alpha=4.0)
  harness = lora_runs.Harness(spec, base_path=package_base)
  task = quality.glue_task(spec, n_train=16, n_val=4, n_test=4, seq_len=96)
  runs = [harness.run("adamw", lr, seed, task.train, task.val)
          for lr, seed in ((1e-3, 0), (1e-2, 0), (1e-3, 1))]
  assert harness.train_step("adamw")._cache_size() == 1
  assert all(np.isfinite(r.val_loss) and len(r.losses) == 2 for r in runs)
  b = lambda r: np.concatenate([np.ravel(x) for p, x in jax.tree_util.tree_flatten_with_path(
      r.params)[0] if "lora_b" in str(p[-1])])
  # 10x the rate: 10x the first (warmup) step of lora_b, which starts at 0 (AdamW).
  assert np.linalg.norm(b(runs[1])) > 3 * np.linalg.norm(b(runs[0])) > 0
  assert runs[2].losses[0][1] != runs[0].losses[0][1]  # another seed: other data and init
  metrics = task.evaluate(harness, runs[0].params)
  assert 0.0 <= metrics["accuracy"] <= 1.0
