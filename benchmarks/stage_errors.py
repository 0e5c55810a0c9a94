"""Per-stage errors of AdaPreLoRA against the float64 dense formulas, on a rank-deficient trajectory.

The `nnx.LoRALinear` tutorial problem (64 -> 128, rank 8, every token the all-ones
vector, targets ones) from LoRA init: after one step `B` is rank 1 up to rounding. At each
step the float32 implementation's stages, computed on the trajectory's parameters and
gradients, are compared with the SPEC section 3 formulas in float64 on the same inputs
(`||x - ref|| / ||ref||`): the row/column statistics `rho`, `gamma` and the EMAs `R`, `C`;
the preconditioned Grams `B^T P B`, `A Q A^T`; the solve `dA`, `dB` before clipping (fed
the reference's `P`, `Q` to isolate it); the clipping norm `||U||^2`; the final step.

    python benchmarks/stage_errors.py [--lr 3e-3] [--damping 1e-3] [--steps 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adaprelora_jax as apl
from adaprelora_jax._src import adaprelora as impl
from adaprelora_jax._src import factor_ops as ops
from adaprelora_jax._src import pairing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference  # noqa: E402  (the tests' independent float64 reference)

COLUMNS = ("rho", "gamma", "R", "C", "B^T P B", "A Q A^T", "dA (solve)", "dB (solve)",
           "clip norm^2", "step")


def _rel(x, ref):
  x = np.asarray(x, np.float64)
  norm = np.linalg.norm(ref)
  return float(np.linalg.norm(x - ref) / norm) if norm > 0 else float(np.linalg.norm(x))


def stage_errors(lr: float, damping: float, steps: int) -> list[dict]:
  model = nnx.LoRALinear(64, 128, lora_rank=8, rngs=nnx.Rngs(0))
  x, y = jnp.ones((16, 64)), jnp.ones((16, 128))
  params = {"lora_a": model.lora.lora_a[...], "lora_b": model.lora.lora_b[...]}
  w0 = model.kernel[...]
  loss = lambda p: jnp.mean((x @ (w0 + p["lora_a"] @ p["lora_b"]) - y) ** 2)
  tx = apl.adaprelora(lr, damping=damping)
  state = tx.init(params)
  lay = pairing.pair_layouts(params, None)[0][0]
  ref_state = reference.init_state(128, 64, 8)
  rows = []
  for t in range(1, steps + 1):
    g = jax.grad(loss)(params)
    a, b, ga, gb = params["lora_a"], params["lora_b"], g["lora_a"], g["lora_b"]
    A, B, gA, gB = (np.asarray(v, np.float64).T for v in (a, b, ga, gb))
    gt = reference.tangent_projection(A, B, gA, gB, 1.0, damping)
    dA_ref, dB_ref, new_ref, extra = reference.adaprelora_step(
        A, B, gA, gB, ref_state, t, damping=damping)
    p_ref, q_ref = extra["p"], extra["q"]
    sb = reference.ridge(B.T @ np.diag(p_ref) @ B, damping)
    sa = reference.ridge(A @ np.diag(q_ref) @ A.T, damping)
    m_ref = gA @ A.T
    da0 = np.linalg.solve(sb, gA / q_ref - 0.5 * m_ref @ np.linalg.solve(sa, A))
    db0 = (gB / p_ref[:, None] - 0.5 * B @ np.linalg.solve(sb, m_ref)) @ np.linalg.inv(sa)
    u_ref = B @ da0 + db0 @ A

    pair = impl._Pair(a, b, ga, gb, jnp.float32(1.0), damping)
    grams = impl._FirstGrams(ops.gram_row(lay, b), ops.gram_row(lay, b, gb),
                             ops.gram_col(lay, a), ops.gram_col(lay, ga, a))
    inverses = impl._tangent_inverses(grams.btb, grams.aat, damping)
    rho, gamma = impl._tangent_statistics(lay, pair, grams, inverses)
    beta2 = 1.0 - t ** -0.8
    nu = state[0].nu
    row = beta2 * nu["lora_b"] + (1 - beta2) * (rho + 1e-30)
    col = beta2 * nu["lora_a"] + (1 - beta2) * (gamma + 1e-30)
    p = jnp.asarray(p_ref, jnp.float32)
    q = jnp.asarray(q_ref, jnp.float32)
    bpb = ops.gram_row(lay, b * jnp.sqrt(p)[None, :])
    aqa = ops.gram_col(lay, a * jnp.sqrt(q)[:, None])
    fc, fr = impl._balanced_maps(bpb, aqa, grams.ga_at, damping)
    da = ops.combine_col(lay, a, ga / q[:, None], fc)
    db = ops.combine_row(lay, b, gb / p[None, :], fr)
    sq = impl._update_sq_norm(lay, pair, grams, da, db)
    updates, state = tx.update(g, state, params)
    got = -np.concatenate([np.ravel(np.asarray(updates["lora_a"], np.float64).T),
                           np.ravel(np.asarray(updates["lora_b"], np.float64).T)]) / lr
    want = np.concatenate([np.ravel(dA_ref), np.ravel(dB_ref)])
    sv = np.linalg.svd(B, compute_uv=False)
    rows.append(dict(
        t=t, cond_b=sv[0] / sv[-1] if sv[-1] > 0 else np.inf,
        errors=(_rel(rho, np.mean(gt ** 2, 1)), _rel(gamma, np.mean(gt ** 2, 0)),
                _rel(row, new_ref.R), _rel(col, new_ref.C),
                _rel(bpb, B.T @ np.diag(p_ref) @ B), _rel(aqa, A @ np.diag(q_ref) @ A.T),
                _rel(np.asarray(da).T, da0), _rel(np.asarray(db).T, db0),
                abs(float(sq) - np.sum(u_ref ** 2)) / np.sum(u_ref ** 2), _rel(got, want)),
        finite=bool(np.all(np.isfinite(got)))))
    ref_state = new_ref
    params = jax.tree.map(lambda v, u: v + u, params, updates)
  return rows


def markdown(rows) -> str:
  lines = ["| t | cond(B) | " + " | ".join(COLUMNS) + " | finite |",
           "|---" * (len(COLUMNS) + 3) + "|"]
  for r in rows:
    cells = [str(r["t"]), f"{r['cond_b']:.1e}"] + [f"{e:.1e}" for e in r["errors"]]
    lines.append("| " + " | ".join(cells + [str(r["finite"])]) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--damping", type=float, default=1e-3)
  parser.add_argument("--steps", type=int, default=6)
  args = parser.parse_args(argv)
  print(f"float32, lr {args.lr:g}, damping {args.damping:g}, jax {jax.__version__}")
  print(markdown(stage_errors(args.lr, args.damping, args.steps)))


if __name__ == "__main__":
  main()
