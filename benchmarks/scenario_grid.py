"""Rank-deficient and degenerate LoRA problems: every optimizer of the registry over a grid.

The regimes a real fine-tune meets first (LoRA init `B = 0`, then factors whose rank is
that of the first gradients), as whole training trajectories. One problem shape for all
scenarios: a stack of two LoRA-adapted linear layers, `pred = X (W0 + s A0 B0) +
gate X (W1 + s A1 B1)`, `loss = mean((pred - Y)^2)`, from LoRA init. Scenarios:

* `ones`: every token is the all-ones vector (rank-1 inputs; the nnx tutorial reproduction).
* `rank1_residual`: targets that make the initial residual exactly rank 1.
* `few_tokens`: fewer (non-zero) tokens than the LoRA rank.
* `subspace`: inputs on a 2-dimensional subspace.
* `outlier_feature`: one input feature 1000x larger than the rest.
* `zero_layer`: `gate = 0`, so the second stacked pair's gradient is exactly zero.
* `normal`: Gaussian inputs, a low-rank teacher: the control.

Every (scenario, seed, learning rate, lora_scale) run of one optimizer is one `vmap` over
`optax.inject_hyperparams` (one compilation per optimizer and dtype). A run *blows up*
when its final loss is above 2x its initial loss; *non-finite* when any loss is NaN/inf.

    python benchmarks/scenario_grid.py                 # full size, every optimizer
    python benchmarks/scenario_grid.py --in 64 --out 128 --rank 8 --steps 40  # test size
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaprelora_jax as apl
from toy_problems import STATIC  # shape-deciding arguments inject_hyperparams must not trace

SCENARIOS = ("ones", "rank1_residual", "few_tokens", "subspace", "outlier_feature",
             "zero_layer", "normal")


@dataclasses.dataclass(frozen=True)
class GridShape:
  n: int = 64  # input features
  m: int = 128  # output features
  r: int = 8  # LoRA rank
  tokens: int = 16
  steps: int = 40


def scenario_data(name: str, seed: int, shape: GridShape) -> dict[str, np.ndarray]:
  """Inputs `x` (tokens, n), targets `y` (tokens, m), frozen `w0` (2, n, m), `gate`, `a0`."""
  rng = np.random.default_rng([seed, SCENARIOS.index(name)])
  n, m, r, t = shape.n, shape.m, shape.r, shape.tokens
  w0 = rng.normal(size=(2, n, m)) / math.sqrt(n)
  a0 = rng.normal(size=(2, n, r)) / math.sqrt(n)
  teacher = (rng.normal(size=(n, r)) @ rng.normal(size=(r, m))) / math.sqrt(n * r)
  gate = 1.0
  x = rng.normal(size=(t, n))
  if name == "ones":
    x = np.ones((t, n))
  elif name == "few_tokens":
    x[r // 2:] = 0.0
  elif name == "subspace":
    x = rng.normal(size=(t, 2)) @ rng.normal(size=(2, n))
  elif name == "outlier_feature":
    x[:, 0] *= 1000.0
  elif name == "zero_layer":
    gate = 0.0
  base = x @ w0[0] + gate * (x @ w0[1])
  if name == "rank1_residual":
    y = base + np.outer(rng.normal(size=t), rng.normal(size=m))
  elif name == "ones":
    y = np.ones((t, m))
  else:
    y = base + x @ teacher
  scale = np.sqrt(np.mean((base - y) ** 2))  # initial loss ~ 1 whatever the scenario
  return dict(x=x / scale, y=y / scale, w0=w0 / scale, gate=np.float64(gate), a0=a0)


def loss_fn(params, data, s):
  """Mean squared error of the two-layer LoRA stack (`s` the LoRA scale)."""
  a, b = params["lora_a"].astype(jnp.float32), params["lora_b"].astype(jnp.float32)
  w = data["w0"] + s * jnp.einsum("lnr,lrm->lnm", a, b)
  pred = data["x"] @ w[0] + data["gate"] * (data["x"] @ w[1])
  return jnp.mean((pred - data["y"]) ** 2)


def make_optimizer(name: str, mu_dtype=None) -> optax.GradientTransformation:
  fn = apl.optimizers[name]
  kwargs = dict(learning_rate=1.0)
  accepted = inspect.signature(fn).parameters
  if "lora_scale" in accepted:
    kwargs["lora_scale"] = 1.0
  static = STATIC.get(name, ())
  if mu_dtype is not None and "mu_dtype" in accepted:
    kwargs["mu_dtype"] = mu_dtype
    static = static + ("mu_dtype",)  # a dtype is callable: it would pass for a schedule
  return optax.inject_hyperparams(fn, static_args=static)(**kwargs)


def run_grid(name: str, scenarios=SCENARIOS, seeds=(0, 1, 2), lrs=(1e-3, 3e-3, 1e-2),
             scales=(1.0, 16.0), shape: GridShape = GridShape(), dtype=jnp.float32,
             mu_dtype=None) -> dict[str, np.ndarray]:
  """Loss curves of every run of one optimizer.

  Returns:
    `curves` (scenario, seed, lr, scale, steps + 1) in float64, NaN where non-finite,
    and the grid's axes.
  """
  tx = make_optimizer(name, mu_dtype)
  configs = [(sc, seed, lr, s) for sc in scenarios for seed in seeds for lr in lrs
             for s in scales]
  datas = [scenario_data(sc, seed, shape) for sc, seed, _, _ in configs]
  batch = {k: jnp.asarray(np.stack([d[k] for d in datas]), jnp.float32)
           for k in ("x", "y", "w0", "gate")}
  a0 = jnp.asarray(np.stack([d["a0"] for d in datas]), dtype)
  lr = jnp.asarray([c[2] for c in configs], jnp.float32)
  sc = jnp.asarray([c[3] for c in configs], jnp.float32)

  def train(data, a_init, lr, s):
    params = {"lora_a": a_init, "lora_b": jnp.zeros((2, shape.r, shape.m), dtype)}
    state = tx.init(params)
    hyper = dict(state.hyperparams, learning_rate=lr)
    if "lora_scale" in hyper:
      hyper["lora_scale"] = s
    state = state._replace(hyperparams=hyper)

    def body(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, data, s)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(body, (params, state), None, length=shape.steps)
    return jnp.concatenate([losses, loss_fn(params, data, s)[None]])

  curves = np.asarray(jax.jit(jax.vmap(train))(batch, a0, lr, sc), np.float64)
  curves = np.where(np.isfinite(curves), curves, np.nan)
  dims = (len(scenarios), len(seeds), len(lrs), len(scales), shape.steps + 1)
  return dict(curves=curves.reshape(dims), scenarios=tuple(scenarios), seeds=tuple(seeds),
              lrs=tuple(lrs), scales=tuple(scales))


def counts(grid: dict) -> dict[str, int]:
  """Runs, non-finite runs, and blow-ups (finite, final loss above 2x the initial)."""
  c = grid["curves"]
  finite = np.all(np.isfinite(c), axis=-1)
  blown = finite & (c[..., -1] > 2.0 * c[..., 0])
  return dict(runs=int(finite.size), nonfinite=int(np.sum(~finite)), blowups=int(np.sum(blown)))


def best_of_sweep(grid: dict) -> np.ndarray:
  """(scenario, seed, scale): the lowest final loss over the learning rates (inf if none finite)."""
  final = np.where(np.isfinite(grid["curves"][..., -1]), grid["curves"][..., -1], np.inf)
  return np.min(final, axis=2)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--in", dest="n", type=int, default=256)
  parser.add_argument("--out", dest="m", type=int, default=512)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--tokens", type=int, default=64)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--optimizers", default=",".join(apl.optimizers))
  parser.add_argument("--bf16", action="store_true", help="bf16 factors, f32 momentum")
  args = parser.parse_args(argv)
  shape = GridShape(args.n, args.m, args.rank, args.tokens, args.steps)
  dtype, mu = (jnp.bfloat16, jnp.float32) if args.bf16 else (jnp.float32, None)
  seeds = tuple(range(args.seeds))
  print(f"shape {shape}, {'bf16' if args.bf16 else 'float32'} factors, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}")
  results = {}
  for name in args.optimizers.split(","):
    small = GridShape(32, 48, 4, 16, args.steps) if name == "lora_pro_full" else shape
    start = time.perf_counter()
    results[name] = run_grid(name, seeds=seeds, shape=small, dtype=dtype, mu_dtype=mu)
    c = counts(results[name])
    print(f"{name:14s} runs {c['runs']:4d}  non-finite {c['nonfinite']:3d}  "
          f"blow-ups {c['blowups']:3d}  ({time.perf_counter() - start:.0f} s)")
  if "adaprelora" in results and "adamw" in results:
    ratio = best_of_sweep(results["adaprelora"]) / best_of_sweep(results["adamw"])
    print("\nadaprelora best-of-sweep final loss / adamw's, per scenario (max over seeds, scales):")
    for i, sc in enumerate(SCENARIOS):
      print(f"  {sc:16s} {np.max(ratio[i]):.3g}")
  return results


if __name__ == "__main__":
  main()
