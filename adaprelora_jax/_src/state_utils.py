"""Optimizer-state zeros that keep the parameters' sharding, for arrays and ShapeDtypeStructs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P


def zeros_without_axis(x: Any, axis: int | None, dtype: Any) -> jax.Array:
  """Zeros shaped like `x` with `axis` removed (None: same shape), sharded like `x`.

  The state leaf indexes the same axes as `x` but one, so it takes `x`'s partition
  spec without that axis. `x` may be a concrete array, a tracer (under `jit` or
  `eval_shape`: the sharding then follows from the indexing) or a
  `jax.ShapeDtypeStruct` (zeros are created directly in the derived sharding).
  """
  if isinstance(x, jax.core.Tracer):
    if axis is not None:
      x = lax.index_in_dim(x, 0, axis, keepdims=False)
    return jnp.zeros_like(x, dtype=dtype)
  shape = tuple(x.shape)
  sharding = getattr(x, "sharding", None)
  if axis is not None:
    shape = shape[:axis] + shape[axis + 1:]
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (len(x.shape) - len(sharding.spec))
    if axis is not None:
      spec = spec[:axis] + spec[axis + 1:]
    return jnp.zeros(shape, dtype, device=NamedSharding(sharding.mesh, P(*spec)))
  if sharding is not None and not isinstance(x, jax.ShapeDtypeStruct):
    return jnp.zeros(shape, dtype, device=sharding)
  return jnp.zeros(shape, dtype)
