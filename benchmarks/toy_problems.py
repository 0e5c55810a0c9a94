"""Classic factorization problems where the LoRA optimizers differ, each with a learning-rate sweep.

Three problems, all from LoRA init (`lora_a` random, `lora_b = 0`), rank-r factors:

* `regression`: ill-conditioned low-rank matrix regression, `min ||a b - T||^2` with
  `T` of rank r and singular values spread over [1e-2, 1] (condition number 100).
* `sensing`: matrix sensing, `min mean_i (<X_i, a b> - y_i)^2` from 5 r (n + m) random
  Gaussian measurements of an ill-conditioned rank-r matrix.
* `network`: a small nonlinear network, `tanh(x (W1 + a1 b1)) (W2 + a2 b2)`, fit to a
  teacher whose weights differ from the frozen ones by ill-conditioned rank-r changes.

Every optimizer of the registry runs every learning rate of a log-spaced grid (the whole
sweep is one `vmap` over `optax.inject_hyperparams`' learning rate); the best of the
sweep is what counts, since only tuned baselines are fair. Reported per problem: the best
final loss (relative to the initial loss) with its learning rate, and the fewest steps to
reach `--tol` times the initial loss with its learning rate. Writes a markdown table and a
plot (loss curves at each optimizer's best learning rate) to `docs/`.

    python benchmarks/toy_problems.py                       # docs/toy_problems.{md,png}
    python benchmarks/toy_problems.py --steps 200 --out /tmp  # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaprelora_jax as apl

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import lora_runs  # noqa: E402  (the named optimizer settings, VARIANTS)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Problem:
  name: str
  title: str
  params: Any  # The initial LoRA factors.
  loss: Callable[[Any], jax.Array]


def _ill_conditioned(rng, n, m, r, cond):
  u, _ = np.linalg.qr(rng.normal(size=(n, r)))
  v, _ = np.linalg.qr(rng.normal(size=(m, r)))
  return (u * np.geomspace(1.0, 1.0 / cond, r)) @ v.T


def _lora_init(rng, n, m, r):
  return {"lora_a": jnp.asarray(rng.normal(size=(n, r)) / math.sqrt(n), jnp.float32),
          "lora_b": jnp.zeros((r, m), jnp.float32)}


def regression(seed=0, n=48, m=40, r=4, cond=100.0) -> Problem:
  rng = np.random.default_rng(seed)
  target = jnp.asarray(_ill_conditioned(rng, n, m, r, cond) * math.sqrt(n * m) / 4,
                       jnp.float32)
  loss = lambda p: 0.5 * jnp.mean((p["lora_a"] @ p["lora_b"] - target) ** 2)
  return Problem("regression", f"low-rank regression (cond {cond:g})",
                 _lora_init(rng, n, m, r), loss)


def sensing(seed=1, n=24, m=24, r=3, cond=100.0) -> Problem:
  rng = np.random.default_rng(seed)
  target = _ill_conditioned(rng, n, m, r, cond) * math.sqrt(n * m) / 4
  k = 5 * r * (n + m)
  sensors = jnp.asarray(rng.normal(size=(k, n, m)), jnp.float32)
  y = jnp.einsum("knm,nm->k", sensors, jnp.asarray(target, jnp.float32))
  loss = lambda p: 0.5 * jnp.mean(
      (jnp.einsum("knm,nm->k", sensors, p["lora_a"] @ p["lora_b"]) - y) ** 2)
  return Problem("sensing", f"matrix sensing ({k} measurements, cond {cond:g})",
                 _lora_init(rng, n, m, r), loss)


def network(seed=2, d=32, hidden=64, out=16, r=4, cond=30.0, samples=512) -> Problem:
  rng = np.random.default_rng(seed)
  w1 = rng.normal(size=(d, hidden)) / math.sqrt(d)
  w2 = rng.normal(size=(hidden, out)) / math.sqrt(hidden)
  t1 = w1 + _ill_conditioned(rng, d, hidden, r, cond)
  t2 = w2 + _ill_conditioned(rng, hidden, out, r, cond)
  x = rng.normal(size=(samples, d))
  y = jnp.asarray(np.tanh(x @ t1) @ t2, jnp.float32)
  x, w1, w2 = (jnp.asarray(v, jnp.float32) for v in (x, w1, w2))

  def loss(p):
    h = jnp.tanh(x @ (w1 + p["l1"]["lora_a"] @ p["l1"]["lora_b"]))
    return 0.5 * jnp.mean((h @ (w2 + p["l2"]["lora_a"] @ p["l2"]["lora_b"]) - y) ** 2)

  params = {"l1": _lora_init(rng, d, hidden, r), "l2": _lora_init(rng, hidden, out, r)}
  return Problem("network", f"2-layer tanh network (LoRA rank {r}, cond {cond:g})",
                 params, loss)


PROBLEMS = {"regression": regression, "sensing": sensing, "network": network}
# Shape-deciding arguments that `inject_hyperparams` must not trace.
STATIC = {"adafactor": ("min_dim_size_to_factor",)}


def sweep(problem: Problem, name: str, lrs: np.ndarray, steps: int) -> np.ndarray:
  """Loss curves (len(lrs), steps + 1): the loss before each update and after the last
  (`name`: a registry optimizer or a `lora_runs.VARIANTS` setting)."""
  registry_name, options = lora_runs.resolve(name)
  tx = optax.inject_hyperparams(apl.optimizers[registry_name],
                                static_args=STATIC.get(registry_name, ()))(
      learning_rate=1.0, **options)

  def train(lr):
    state = tx.init(problem.params)
    state = state._replace(hyperparams={**state.hyperparams,
                                        "learning_rate": jnp.asarray(lr, jnp.float32)})

    def body(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(problem.loss)(params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(body, (problem.params, state), None, length=steps)
    return jnp.concatenate([losses, problem.loss(params)[None]])

  curves = np.asarray(jax.jit(jax.vmap(train))(jnp.asarray(lrs, jnp.float32)), np.float64)
  return np.where(np.isfinite(curves), curves, np.inf)


def summarize(curves: np.ndarray, lrs: np.ndarray, tol: float) -> dict:
  rel = curves / curves[0, 0]
  # A run that blew up at any point does not count, even if it came back.
  rel = np.where(np.all(np.isfinite(rel), axis=1, keepdims=True), rel, np.inf)
  final = rel[:, -1]
  best = int(np.argmin(final))
  hit = [np.flatnonzero(r <= tol) for r in rel]
  first = np.array([h[0] if len(h) else np.inf for h in hit])
  fastest = int(np.argmin(first))
  return dict(final=final[best], final_lr=lrs[best], curve=rel[best],
              steps_to_tol=first[fastest], tol_lr=lrs[fastest] if np.isfinite(first[fastest])
              else None)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--tol", type=float, default=1e-4,
                      help="steps-to-tolerance threshold, relative to the initial loss")
  parser.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,0.1,0.3,1.0")
  parser.add_argument("--problems", default=",".join(PROBLEMS))
  parser.add_argument("--optimizers", default=",".join([*apl.optimizers, *lora_runs.VARIANTS]))
  parser.add_argument("--out", default=str(ROOT / "docs"))
  args = parser.parse_args(argv)

  lrs = np.array([float(x) for x in args.lrs.split(",")])
  names = args.optimizers.split(",")
  results = {}
  for pname in args.problems.split(","):
    problem = PROBLEMS[pname]()
    for name in names:
      t0 = time.perf_counter()
      results[pname, name] = summarize(sweep(problem, name, lrs, args.steps), lrs, args.tol)
      print(f"{pname:10s} {name:14s} best final {results[pname, name]['final']:.2e} "
            f"({time.perf_counter() - t0:.1f} s)", flush=True)
    results[pname] = problem

  lines = [f"Best of a {len(lrs)}-point learning-rate sweep ({lrs.min():g} to {lrs.max():g}), "
           f"{args.steps} steps from LoRA init (`lora_b = 0`); losses relative to the "
           f"initial loss; steps to reach {args.tol:g} x the initial loss (fewest over the "
           "sweep). Regenerate with `python benchmarks/toy_problems.py`.", ""]
  pnames = args.problems.split(",")
  header = "| optimizer | " + " | ".join(
      f"{p}: final loss (lr) | {p}: steps to tol (lr)" for p in pnames) + " | mean rank |"
  lines += [header, "|---" * (2 * len(pnames) + 2) + "|"]
  ranks = {}
  for p in pnames:
    order = sorted(names, key=lambda n: (results[p, n]["steps_to_tol"], results[p, n]["final"]))
    for i, n in enumerate(order):
      ranks.setdefault(n, []).append(i + 1)
  for name in sorted(names, key=lambda n: np.mean(ranks[n])):
    cells = []
    for p in pnames:
      r = results[p, name]
      cells.append(f"{r['final']:.1e} ({r['final_lr']:g})")
      cells.append("—" if r["tol_lr"] is None else f"{int(r['steps_to_tol'])} ({r['tol_lr']:g})")
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(ranks[name]):.2f} |")
  lines += ["", "Rank per problem: by steps to tolerance, ties (never reached) by final loss."]
  table = "\n".join(lines)
  print(table)

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "toy_problems.md").write_text(
      "# Toy problems: the optimizers on three factorization problems\n\n" + table + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(pnames), figsize=(5.2 * len(pnames), 4.2))
  for ax, p in zip(np.atleast_1d(axes), pnames):
    for name in names:
      r = results[p, name]
      ax.semilogy(np.clip(r["curve"], 1e-12, None), label=f"{name} ({r['final_lr']:g})",
                  lw=1.4, ls="--" if name in ("adamw", "adafactor") else "-")
    ax.axhline(args.tol, color="gray", lw=0.8, ls=":")
    ax.set_title(results[p].title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("loss / initial loss")
    ax.legend(fontsize=7)
  fig.suptitle("LoRA optimizers at their best learning rate (legend), from LoRA init")
  fig.tight_layout()
  fig.savefig(out / "toy_problems.png", dpi=120)
  print(f"wrote {out / 'toy_problems.md'} and {out / 'toy_problems.png'}")
  return results


if __name__ == "__main__":
  main()
