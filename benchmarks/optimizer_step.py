"""Optimizer step time and state size on Llama-7B-shaped LoRA factors.

One jitted step (update and apply, parameters and state donated) over the LoRA factors
of q/k/v/o/gate/up/down projections (hidden 4096, MLP 11008, rank 16, layers stacked),
every optimizer interleaved in one run so they see the same machine state. Reports the
min and median step time and the state bytes, each as a ratio to `optax.adamw` (the
registry's `adamw`). Optimizers by their registry names (`adaprelora_jax.optimizers`).

    python benchmarks/optimizer_step.py                 # the README table
    python benchmarks/optimizer_step.py --hidden 256 --mlp 688 --repeats 5   # quick
    python benchmarks/optimizer_step.py --optimizers adamw,lora_pro,lora_pro_full
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaprelora_jax as apl

BASELINE = "adamw"


# Keyword arguments beyond the learning rate, per registry name (the model's LoRA scale).
KWARGS = {"adaprelora": dict(lora_scale=2.0), "lora_pro": dict(lora_scale=2.0),
          "lora_pro_full": dict(lora_scale=2.0)}


def optimizers(names):
  """Every optimizer of the registry (`adaprelora_jax.optimizers`) by name."""
  unknown = set(names) - set(apl.optimizers)
  if unknown:
    raise SystemExit(f"unknown optimizers {sorted(unknown)}; known: {sorted(apl.optimizers)}")
  return {name: apl.optimizers[name](1e-4, **KWARGS.get(name, {})) for name in names}


def lora_factors(hidden, mlp, rank, layers, dtype=jnp.float32, seed=0):
  """Stacked LoRA factors of one Llama block per layer: name -> (lora_a, lora_b)."""
  shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden),
            "v_proj": (hidden, hidden), "o_proj": (hidden, hidden),
            "gate_proj": (hidden, mlp), "up_proj": (hidden, mlp), "down_proj": (mlp, hidden)}
  key = jax.random.key(seed)
  params = {}
  for name, (n, m) in shapes.items():
    key, ka, kb = jax.random.split(key, 3)
    params[name] = {
        "lora_a": (jax.random.normal(ka, (layers, n, rank)) / np.sqrt(n)).astype(dtype),
        "lora_b": (jax.random.normal(kb, (layers, rank, m)) * 1e-3).astype(dtype)}
  return params


def state_bytes(state):
  """Bytes of the optimizer state's arrays (scalars such as step counts excluded)."""
  return sum(x.nbytes for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0)


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hidden", type=int, default=4096)
  parser.add_argument("--mlp", type=int, default=11008)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=21)
  parser.add_argument("--optimizers", default=",".join(
      name for name in apl.optimizers if name != "lora_pro_full"),
      help="comma-separated registry names; lora_pro_full (m x n Adam state, several GB "
           "at the default sizes) only when asked for")
  args = parser.parse_args(argv)

  names = args.optimizers.split(",")
  if BASELINE not in names:
    names.insert(0, BASELINE)
  txs = optimizers(names)
  grads = lora_factors(args.hidden, args.mlp, args.rank, args.layers, seed=1)
  runs = {}
  for name, tx in txs.items():
    params = lora_factors(args.hidden, args.mlp, args.rank, args.layers)
    state = tx.init(params)
    step = make_step(tx)
    t0 = time.perf_counter()
    params, state = jax.block_until_ready(step(params, state, grads))
    compile_s = time.perf_counter() - t0
    runs[name] = dict(step=step, params=params, state=state, times=[],
                      bytes=state_bytes(state), compile_s=compile_s)
  for _ in range(args.repeats):  # Interleaved: each repeat times every optimizer once.
    for run in runs.values():
      t0 = time.perf_counter()
      run["params"], run["state"] = jax.block_until_ready(
          run["step"](run["params"], run["state"], grads))
      run["times"].append(time.perf_counter() - t0)

  base = runs[BASELINE]
  n_params = sum(x.size for x in jax.tree.leaves(base["params"]))
  print(f"# {args.layers} stacked layers, hidden {args.hidden}, MLP {args.mlp}, r = "
        f"{args.rank}: {n_params / 1e6:.2f} M LoRA parameters; {args.repeats} repeats; "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  print("| optimizer | min step (ms) | median step (ms) | time vs adamw (min / median) "
        "| state (MiB) | state vs adamw | compile (s) |")
  print("|---|---|---|---|---|---|---|")
  for name, run in runs.items():
    tmin, tmed = min(run["times"]), statistics.median(run["times"])
    print(f"| {name} | {1e3 * tmin:.2f} | {1e3 * tmed:.2f} | "
          f"{tmin / min(base['times']):.2f} / {tmed / statistics.median(base['times']):.2f} | "
          f"{run['bytes'] / 2**20:.1f} | {run['bytes'] / base['bytes']:.4f} | "
          f"{run['compile_s']:.1f} |")
  return runs


if __name__ == "__main__":
  main()
