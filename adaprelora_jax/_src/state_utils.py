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


def _spec_of(x: Any) -> tuple | None:
  sharding = getattr(x, "sharding", None)
  if not isinstance(sharding, NamedSharding):
    return None
  return tuple(sharding.spec) + (None,) * (len(x.shape) - len(sharding.spec))


def zeros_small(x: Any, batch_ndim: int, trailing: tuple[int, ...], dtype: Any) -> jax.Array:
  """Zeros of shape `x.shape[:batch_ndim] + trailing`, sharded like `x`'s batch axes.

  For per-pair r x r state (or a scalar per pair): the batch axes (stacked layers,
  experts) keep `x`'s sharding, the small trailing axes are replicated.
  """
  shape = tuple(x.shape[:batch_ndim]) + tuple(trailing)
  if isinstance(x, jax.core.Tracer):
    base = x[(slice(None),) * batch_ndim + (0,) * (x.ndim - batch_ndim)]
    base = jnp.zeros_like(base, dtype=dtype)
    return jnp.broadcast_to(base.reshape(base.shape + (1,) * len(trailing)), shape)
  spec = _spec_of(x)
  if spec is not None:
    sharding = NamedSharding(x.sharding.mesh, P(*spec[:batch_ndim], *([None] * len(trailing))))
    return jnp.zeros(shape, dtype, device=sharding)
  return jnp.zeros(shape, dtype)


def zeros_outer(a: Any, b: Any, batch_ndim: int, dtype: Any) -> jax.Array:
  """Zeros shaped like the adapted weight `batch + in + out` of a pair (`a` = lora_a, `b` = lora_b).

  Sharded like `a` on the batch and input axes and like `b` on the output axes: the
  layout of `a @ b`. Only LoRA-Pro's memory-hungry full mode keeps such state.
  """
  in_shape, out_shape = tuple(a.shape[batch_ndim:-1]), tuple(b.shape[batch_ndim + 1:])
  if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
    za = zeros_without_axis(a, a.ndim - 1, dtype)  # batch + in
    zb = zeros_without_axis(b, batch_ndim, dtype)  # batch + out
    za = za.reshape(za.shape + (1,) * len(out_shape))
    zb = zb.reshape(zb.shape[:batch_ndim] + (1,) * len(in_shape) + out_shape)
    return za + zb
  shape = tuple(a.shape[:batch_ndim]) + in_shape + out_shape
  sa, sb = _spec_of(a), _spec_of(b)
  if sa is not None or sb is not None:
    mesh = (a if sa is not None else b).sharding.mesh
    sa = sa if sa is not None else (None,) * len(a.shape)
    sb = sb if sb is not None else (None,) * len(b.shape)
    spec = _dedupe(sa[:-1] + sb[batch_ndim + 1:])
    return jnp.zeros(shape, dtype, device=NamedSharding(mesh, P(*spec)))
  return jnp.zeros(shape, dtype)


def _dedupe(spec: tuple) -> tuple:
  """`spec` with any mesh axis used a second time replaced by None (invalid otherwise)."""
  used, out = set(), []
  for entry in spec:
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    if any(n in used for n in names):
      out.append(None)
    else:
      used.update(names)
      out.append(entry)
  return tuple(out)
