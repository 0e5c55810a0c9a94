"""Small r x r linear algebra in plain `lax` ops, batched over every pair of a step.

LAPACK-backed `jnp.linalg` calls on batches of tiny matrices are slow on accelerators and,
on CPU with jaxlib 0.10, can deadlock when several run inside one jitted step. The
inverse here is a Gauss-Jordan sweep: r rank-one updates of an r x r matrix, vectorised
over any leading axes, which fuses well everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from adaprelora_jax._src import sharding

# Added to every ridge: a small *normal* number (a subnormal would flush to zero and turn
# the B = 0 step into 0 * inf = NaN).
TINY = 1e-30


def ridge(s: jax.Array, damping) -> jax.Array:
  """`S + (damping * mean(diag(S)) + TINY) I` over the last two axes (`damping`: scalar or batch)."""
  r = s.shape[-1]
  diag_mean = jnp.mean(jnp.diagonal(s, axis1=-2, axis2=-1), axis=-1)
  shift = damping * diag_mean + TINY
  return s + shift[..., None, None] * jnp.eye(r, dtype=s.dtype)


def spd_inverse(s: jax.Array) -> jax.Array:
  """Inverse of symmetric positive definite matrices `s` of shape (..., r, r).

  The sweep operator: sweeping pivot k maps `X` to `X - X[:, k] X[k, :] / X[k, k]` off
  row and column k, `X[k, :] / X[k, k]` and `X[:, k] / X[k, k]` on them and
  `-1 / X[k, k]` at (k, k); sweeping every pivot of an SPD matrix gives `-S^-1`. No
  pivoting is needed for SPD input (each pivot is a Schur complement, hence positive);
  pivots are floored at `TINY` so rounding on near-singular input cannot divide by 0.
  """
  r = s.shape[-1]
  idx = jnp.arange(r)

  def sweep(k, x):
    row = lax.dynamic_index_in_dim(x, k, axis=x.ndim - 2, keepdims=False)  # (..., r)
    col = lax.dynamic_index_in_dim(x, k, axis=x.ndim - 1, keepdims=False)  # (..., r)
    pivot = lax.dynamic_index_in_dim(row, k, axis=row.ndim - 1, keepdims=True)
    d = jnp.maximum(pivot, TINY)[..., None]  # (..., 1, 1)
    row, col = row[..., None, :], col[..., :, None]
    is_row, is_col = (idx == k)[:, None], (idx == k)[None, :]
    out = jnp.where(is_row, row / d, x - col * row / d)
    out = jnp.where(is_col, col / d, out)
    return jnp.where(is_row & is_col, -1.0 / d, out)

  return -lax.fori_loop(0, r, sweep, s, unroll=False)


def map_stacked(fn: Callable[..., Any], batch_shapes: Sequence[tuple[int, ...]],
                groups: Sequence[int], *per_pair: Sequence[Any]) -> list[Any]:
  """Runs the r x r function `fn` once per group of pairs, on their stacked arrays.

  Args:
    fn: maps arrays with one leading stack axis (and r x r trailing axes, or none for
      per-pair scalars) to a pytree of such arrays.
    batch_shapes: each pair's batch shape (stacked layers, experts).
    groups: a group id per pair; pairs of one group (same rank) are stacked together.
    *per_pair: for each argument of `fn`, a list with one entry per pair: an array of
      shape `batch + trailing`, or a scalar that is broadcast over the batch.

  Returns:
    `fn`'s output for each pair, reshaped back to that pair's batch shape.
  """
  results: list[Any] = [None] * len(batch_shapes)
  for group in dict.fromkeys(groups):
    members = [i for i, g in enumerate(groups) if g == group]
    sizes = [math.prod(batch_shapes[i]) for i in members]

    def flat(i, x):
      x = sharding.replicate(jnp.asarray(x))
      b = batch_shapes[i]
      if x.ndim == 0:
        return jnp.broadcast_to(x, (math.prod(b),))
      return x.reshape((-1,) + x.shape[len(b):])

    stacked = [jnp.concatenate([flat(i, arg[i]) for i in members]) for arg in per_pair]
    out = fn(*stacked)
    offsets = [0]
    for size in sizes:
      offsets.append(offsets[-1] + size)
    for j, i in enumerate(members):
      results[i] = jax.tree.map(
          lambda y: y[offsets[j]:offsets[j + 1]].reshape(batch_shapes[i] + y.shape[1:]),
          out)
  return results

