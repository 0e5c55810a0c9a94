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


def mT(x: jax.Array) -> jax.Array:
  """The transpose of the last two axes."""
  return jnp.swapaxes(x, -1, -2)


def mm(*xs: jax.Array) -> jax.Array:
  """`xs[0] @ xs[1] @ ...` left to right (the order matters where entries ~ 1/TINY meet
  exact zeros), at full float32 precision on every backend."""
  out = xs[0]
  for x in xs[1:]:
    out = jnp.matmul(out, x, precision=lax.Precision.HIGHEST)
  return out


def ridge(s: jax.Array, damping) -> jax.Array:
  """`S + (damping * mean(diag(S)) + TINY) I` over the last two axes (`damping`: scalar or batch)."""
  shift = damping * jnp.mean(jnp.diagonal(s, axis1=-2, axis2=-1), axis=-1) + TINY
  return s + shift[..., None, None] * jnp.eye(s.shape[-1], dtype=s.dtype)


def spd_inverse(s: jax.Array) -> jax.Array:
  """Inverse of symmetric positive definite matrices `s` of shape (..., r, r).

  The sweep operator: sweeping pivot k maps `X` to `X - X[:, k] X[k, :] / X[k, k]` off
  row and column k, `X[k, :] / X[k, k]` and `X[:, k] / X[k, k]` on them and
  `-1 / X[k, k]` at (k, k); sweeping every pivot of an SPD matrix gives `-S^-1`. No
  pivoting is needed for SPD input (each pivot is a Schur complement, hence positive);
  pivots are floored at `TINY` so rounding on near-singular input cannot divide by 0.
  """
  return -lax.fori_loop(0, s.shape[-1], _sweep, s, unroll=False)


def _sweep(k, x):
  """Sweeps pivot `k` of `x` (..., r, r). Module-level, so eager loops reuse its compilation."""
  idx = jnp.arange(x.shape[-1])
  row = lax.dynamic_index_in_dim(x, k, axis=x.ndim - 2, keepdims=False)  # (..., r)
  col = lax.dynamic_index_in_dim(x, k, axis=x.ndim - 1, keepdims=False)  # (..., r)
  pivot = lax.dynamic_index_in_dim(row, k, axis=row.ndim - 1, keepdims=True)
  d = jnp.maximum(pivot, TINY)[..., None]  # (..., 1, 1)
  row, col = row[..., None, :], col[..., :, None]
  is_row, is_col = (idx == k)[:, None], (idx == k)[None, :]
  out = jnp.where(is_row, row / d, x - col * row / d)
  out = jnp.where(is_col, col / d, out)
  return jnp.where(is_row & is_col, -1.0 / d, out)


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



def gram_rounding(s: jax.Array) -> jax.Array:
  """The rounding level of Gram matrices `s` (..., r, r): `10 r eps max(diag s)` per matrix.

  A Gram of r columns computed in `s.dtype` carries rounding of about `r eps` of its
  largest entry; a pivot or ridge within 10x of that is rounding, not a direction of
  the factor (float32, r = 8: 1e-5 of the largest entry; float64: 2e-14).
  """
  r = s.shape[-1]
  return 10.0 * r * jnp.finfo(s.dtype).eps * jnp.max(jnp.diagonal(s, axis1=-2, axis2=-1),
                                                      axis=-1)


def cholesky(s: jax.Array, rtol=0.0, drop_rounding: bool = False) -> jax.Array:
  """Lower Cholesky factors `L` (`S = L L^T`) of PSD matrices `s` (..., r, r), in lax ops.

  The outer-product (right-looking) form: r rank-one downdates of the Schur complement,
  vectorised over the leading axes. A pivot is kept only when it is positive, above
  `rtol` times its own original diagonal entry (else the column is numerically in the
  span of the earlier ones) and, with `drop_rounding`, above the matrix's rounding
  `gram_rounding(s)` (which is relative to the whole matrix: a column that is small only
  because the factor is nearly rank-deficient would pass the first test on rounding
  alone, and inverting that pivot overflowed in LoRA-RITE). A dropped pivot's column of `L` is zero and the remaining Schur
  complement ignores it. For full-rank input this is the Cholesky factor; for
  rank-deficient input (e.g. a zero LoRA factor) it is the factor of the well-determined
  part, and `tril_inverse` then acts as a pseudo-inverse.

  Args:
    s: symmetric positive semi-definite matrices, shape (..., r, r).
    rtol: pivot tolerance relative to the pivot's own diagonal entry (a scalar, or an
      array broadcasting against the leading axes).
    drop_rounding: also drop pivots at or below `gram_rounding(s)`.

  Returns:
    Lower-triangular `L` of the same shape, with a non-negative diagonal (zero where a
    pivot was dropped).
  """
  r = s.shape[-1]
  idx = jnp.arange(r)
  diag0 = jnp.diagonal(s, axis1=-2, axis2=-1)
  rounding = gram_rounding(s) if drop_rounding else jnp.zeros(s.shape[:-2], s.dtype)
  rtol = jnp.asarray(rtol, s.dtype)

  def step(k, carry):
    a, l = carry
    col = lax.dynamic_index_in_dim(a, k, axis=a.ndim - 1, keepdims=False)  # (..., r)
    pivot = lax.dynamic_index_in_dim(col, k, axis=col.ndim - 1, keepdims=False)
    ref = lax.dynamic_index_in_dim(diag0, k, axis=diag0.ndim - 1, keepdims=False)
    keep = (pivot > 0) & (pivot > rtol * ref) & (pivot > rounding)
    d = jnp.sqrt(jnp.where(keep, pivot, 1.0))
    lcol = jnp.where((idx >= k) & keep[..., None], col / d[..., None], 0.0)
    a = a - lcol[..., :, None] * lcol[..., None, :]
    l = jnp.where(idx[None, :] == k, lcol[..., :, None], l)
    return a, l

  _, l = lax.fori_loop(0, r, step, (s, jnp.zeros_like(s)))
  return l


def tril_inverse(l: jax.Array) -> jax.Array:
  """Inverse of lower-triangular matrices `l` (..., r, r) by forward substitution.

  A zero diagonal entry (a pivot `cholesky` dropped) gives a zero row in the result,
  so for a Cholesky factor of a singular matrix this is a generalised inverse that
  annihilates the dropped directions rather than an overflow.
  """
  r = l.shape[-1]
  idx = jnp.arange(r)
  eye = jnp.eye(r, dtype=l.dtype)

  def step(k, y):
    row = lax.dynamic_index_in_dim(l, k, axis=l.ndim - 2, keepdims=False)  # (..., r)
    pivot = lax.dynamic_index_in_dim(row, k, axis=row.ndim - 1, keepdims=False)
    below = jnp.where(idx < k, row, 0.0)
    rhs = eye[k] - jnp.einsum("...j,...jc->...c", below, y, precision=lax.Precision.HIGHEST)
    ok = pivot > 0
    new = jnp.where(ok[..., None], rhs / jnp.where(ok, pivot, 1.0)[..., None], 0.0)
    return jnp.where(idx[:, None] == k, new[..., None, :], y)

  return lax.fori_loop(0, r, step, jnp.zeros_like(l))


def eigh(s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues (ascending) and eigenvectors of symmetric matrices `s` (..., r, r).

  One `jnp.linalg.eigh` call on the symmetrised stack: callers stack every r x r matrix
  of a step into one call (see `map_stacked`), since several batched LAPACK calls in
  one jitted step can deadlock on small CPU hosts with jaxlib 0.10.
  """
  return jnp.linalg.eigh(0.5 * (s + jnp.swapaxes(s, -1, -2)))
