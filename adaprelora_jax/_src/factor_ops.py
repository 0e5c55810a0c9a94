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


def quad_row(layout: PairLayout, x: jax.Array, k: jax.Array) -> jax.Array:
  """`diag(X K X^T)` (batch + out) for row-side `x` (paper: m x 2r) and `k` 2r x 2r."""
  b, o = layout.batch, layout.out
  k = sharding.match_batch(k, x, layout.nb)
  return jnp.sum(_einsum(f"{b}kl,{b}l{o}->{b}k{o}", k, x) * x, axis=layout.nb)


def quad_col(layout: PairLayout, x: jax.Array, k: jax.Array) -> jax.Array:
  """`diag(X^T K X)` (batch + in) for column-side `x` (paper: 2r x n) and `k` 2r x 2r."""
  b, i = layout.batch, layout.inp
  k = sharding.match_batch(k, x, layout.nb)
  return jnp.sum(_einsum(f"{b}{i}l,{b}kl->{b}{i}k", x, k) * x, axis=-1)


def combine_row(layout: PairLayout, y: jax.Array, f: jax.Array) -> jax.Array:
  """Row-side `(Y F)^T` for row-side `y` (paper: m x 2r) and `f` of shape 2r x r."""
  b, o = layout.batch, layout.out
  f = sharding.match_batch(f, y, layout.nb)
  return _einsum(f"{b}jk,{b}j{o}->{b}k{o}", f, y)


def combine_col(layout: PairLayout, y: jax.Array, f: jax.Array) -> jax.Array:
  """Column-side `(F Y)^T` for column-side `y` (paper: 2r x n) and `f` of shape r x 2r."""
  b, i = layout.batch, layout.inp
  f = sharding.match_batch(f, y, layout.nb)
  return _einsum(f"{b}{i}j,{b}kj->{b}{i}k", y, f)


def stack_row(layout: PairLayout, *xs: jax.Array) -> jax.Array:
  """Row-side arrays stacked along the rank axis (paper: `[X1, X2, ...]`, m x kr)."""
  return jnp.concatenate(xs, axis=layout.nb)


def stack_col(layout: PairLayout, *xs: jax.Array) -> jax.Array:
  """Column-side arrays stacked along the rank axis (paper: `[X1; X2; ...]`, kr x n)."""
  return jnp.concatenate(xs, axis=-1)


def row_stat(layout: PairLayout, v: jax.Array) -> jax.Array:
  """A row statistic (batch + out) broadcast against row-side arrays."""
  return jnp.expand_dims(v, layout.nb)


def col_stat(layout: PairLayout, v: jax.Array) -> jax.Array:
  """A column statistic (batch + in) broadcast against column-side arrays."""
  return v[..., None]


def per_pair(layout: PairLayout, x: jax.Array, extra_axes: int) -> jax.Array:
  """A per-pair value of shape `batch` broadcast against arrays with `extra_axes` more."""
  return x.reshape(x.shape + (1,) * extra_axes)
