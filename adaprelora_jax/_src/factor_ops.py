"""Factor-sized operations of one LoRA pair, in Flax layout, without any m x n array.

For a pair laid out by `PairLayout`, a *row-side* array has `lora_b`'s shape
`batch + (k,) + out` (k a rank-like axis, r or a stack of them) and a *column-side*
array has `lora_a`'s shape `batch + in + (k,)`. In the paper's layout these are the
transposes of `m x k` and `k x n` matrices. Every function is an einsum over the named
axes, so several in/out axes and sharded axes need no reshape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaprelora_jax._src import sharding
from adaprelora_jax._src.pairing import PairLayout

HIGHEST = jax.lax.Precision.HIGHEST


def _einsum(spec, x, y, out_sharding=None):
  return jnp.einsum(spec, x, y, precision=HIGHEST, out_sharding=out_sharding)


def gram_row(layout: PairLayout, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """`X^T Y` (batch + (k, l)) for row-side `x`, `y`, i.e. a contraction over `out`."""
  y = x if y is None else y
  b, o = layout.batch, layout.out
  return _einsum(f"{b}k{o},{b}l{o}->{b}kl", x, y, sharding.small_out(x, layout.nb))


def gram_col(layout: PairLayout, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """`X Y^T` (batch + (k, l)) for column-side `x`, `y`, a contraction over `in`."""
  y = x if y is None else y
  b, i = layout.batch, layout.inp
  return _einsum(f"{b}{i}k,{b}{i}l->{b}kl", x, y, sharding.small_out(x, layout.nb))


def apply_row(layout: PairLayout, k: jax.Array, x: jax.Array) -> jax.Array:
  """Row-side `(X K^T)^T = K x` for row-side `x` (paper: m x r) and an r x r `k`."""
  b, o = layout.batch, layout.out
  return _einsum(f"{b}kl,{b}l{o}->{b}k{o}", sharding.match_batch(k, x, layout.nb), x)


def apply_col(layout: PairLayout, k: jax.Array, x: jax.Array) -> jax.Array:
  """Column-side `(K X)^T` for column-side `x` (paper: r x n) and an r x r `k`."""
  b, i = layout.batch, layout.inp
  return _einsum(f"{b}{i}l,{b}kl->{b}{i}k", x, sharding.match_batch(k, x, layout.nb))


def symmetric_blocks(xx: jax.Array, xy: jax.Array, yy: jax.Array) -> jax.Array:
  """The symmetric 2r x 2r matrix `[[xx, xy], [xy^T, yy]]` (a Gram of `[X, Y]` from its blocks)."""
  return jnp.concatenate([jnp.concatenate([xx, xy], -1),
                          jnp.concatenate([jnp.swapaxes(xy, -1, -2), yy], -1)], -2)


def quad_row(layout: PairLayout, x: jax.Array, y: jax.Array, k: jax.Array) -> jax.Array:
  """`diag([X, Y] K [X, Y]^T)` (batch + out) for row-side `x`, `y`, symmetric 2r x 2r `k`.

  With `K = [[K11, K12], [K12^T, K22]]`, per row `x K11 x + 2 x K12 y + y K22 y`: three
  r x r maps (3r^2 multiply-adds per row rather than 4r^2), no stacked copy of x and y.
  """
  r = x.shape[layout.nb]
  kx = apply_row(layout, k[..., :r, :r], x) + apply_row(layout, 2 * k[..., :r, r:], y)
  return jnp.sum(kx * x + apply_row(layout, k[..., r:, r:], y) * y, axis=layout.nb)


def quad_col(layout: PairLayout, x: jax.Array, y: jax.Array, k: jax.Array) -> jax.Array:
  """`diag([X; Y]^T K [X; Y])` (batch + in) for column-side `x`, `y`, symmetric `k`."""
  r = x.shape[-1]
  kx = apply_col(layout, k[..., :r, :r], x) + apply_col(layout, 2 * k[..., :r, r:], y)
  return jnp.sum(kx * x + apply_col(layout, k[..., r:, r:], y) * y, axis=-1)


def combine_row(layout: PairLayout, x: jax.Array, y: jax.Array, f: jax.Array) -> jax.Array:
  """Row-side `([X, Y] F)^T` for row-side `x`, `y` (paper: m x r each) and `f` 2r x r."""
  r = x.shape[layout.nb]
  f_t = jnp.swapaxes(f, -1, -2)
  return apply_row(layout, f_t[..., :r], x) + apply_row(layout, f_t[..., r:], y)


def combine_col(layout: PairLayout, x: jax.Array, y: jax.Array, f: jax.Array) -> jax.Array:
  """Column-side `(F [X; Y])^T` for column-side `x`, `y` (paper: r x n each), `f` r x 2r."""
  r = x.shape[-1]
  return apply_col(layout, f[..., :r], x) + apply_col(layout, f[..., r:], y)


def row_stat(layout: PairLayout, v: jax.Array) -> jax.Array:
  """A row statistic (batch + out) broadcast against row-side arrays."""
  return jnp.expand_dims(v, layout.nb)


def col_stat(layout: PairLayout, v: jax.Array) -> jax.Array:
  """A column statistic (batch + in) broadcast against column-side arrays."""
  return v[..., None]


def per_pair(layout: PairLayout, x: jax.Array, extra_axes: int) -> jax.Array:
  """A per-pair value of shape `batch` broadcast against arrays with `extra_axes` more."""
  return x.reshape(x.shape + (1,) * extra_axes)


# Adapted-weight-sized (m x n) operations: only LoRA-Pro's full mode, the memory-hungry
# reference point of the family, uses these.


def outer(layout: PairLayout, x: jax.Array, y: jax.Array) -> jax.Array:
  """`x @ y` (batch + in + out) for column-side `x` and row-side `y`: a weight-shaped array."""
  b, i, o = layout.batch, layout.inp, layout.out
  return _einsum(f"{b}{i}k,{b}k{o}->{b}{i}{o}", x, y)


def full_times_row(layout: PairLayout, w: jax.Array, y: jax.Array, like: jax.Array) -> jax.Array:
  """Column-side `w @ y^T` for weight-shaped `w` and row-side `y` (sharded like `like`)."""
  b, i, o = layout.batch, layout.inp, layout.out
  return _einsum(f"{b}{i}{o},{b}k{o}->{b}{i}k", w, y, sharding.like(like))


def col_times_full(layout: PairLayout, x: jax.Array, w: jax.Array, like: jax.Array) -> jax.Array:
  """Row-side `x^T @ w` for column-side `x` and weight-shaped `w` (sharded like `like`)."""
  b, i, o = layout.batch, layout.inp, layout.out
  return _einsum(f"{b}{i}k,{b}{i}{o}->{b}k{o}", x, w, sharding.like(like))
