"""Optimizer-state zeros that keep the parameters' sharding.

A state leaf indexes some of a parameter's axes (all of them, all but the rank, only the
batch axes, ...), so it takes the parameter's partition spec restricted to those axes.
The parameter may be a concrete array, a `jax.ShapeDtypeStruct`, or a tracer (under
`jit`, `eval_shape` or `nnx.eval_shape`); its spec comes from its `NamedSharding`, from
its type on Explicit mesh axes, or else from the `out_sharding` an NNX Variable declared
(`declared`, see `pairing.declared_specs`), which is all a tracer on Auto axes has.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

Spec = tuple | None


def zeros_without_axis(x: Any, axis: int | None, dtype: Any, declared: Spec = None):
  """Zeros shaped like `x` without `axis` (None: same shape), sharded like `x` there."""
  shape, spec = tuple(x.shape), _spec(x, declared)
  if axis is not None:
    shape = shape[:axis] + shape[axis + 1:]
    spec = None if spec is None else spec[:axis] + spec[axis + 1:]
  return _zeros(shape, dtype, spec, x)


def zeros_like_each(leaves, declared, dtype: Any = None) -> list[jax.Array]:
  """`zeros_without_axis(x, None, dtype or x.dtype, d)` for each leaf and declared spec."""
  return [zeros_without_axis(x, None, dtype or x.dtype, d) for x, d in zip(leaves, declared)]


def zeros_small(x: Any, batch_ndim: int, trailing: tuple[int, ...], dtype: Any,
                declared: Spec = None):
  """Zeros `x.shape[:batch_ndim] + trailing`: per-pair r x r state (or a scalar per pair).

  The batch axes (stacked layers, experts) keep `x`'s sharding; the trailing ones are
  replicated.
  """
  spec = _spec(x, declared)
  spec = None if spec is None else spec[:batch_ndim] + (None,) * len(trailing)
  return _zeros(tuple(x.shape[:batch_ndim]) + tuple(trailing), dtype, spec, x)


def zeros_outer(a: Any, b: Any, batch_ndim: int, dtype: Any, declared_a: Spec = None,
                declared_b: Spec = None):
  """Zeros shaped like the adapted weight `batch + in + out` of a pair (`a @ b`).

  Sharded like `a` on the batch and input axes and like `b` on the output axes. Only
  LoRA-Pro's memory-hungry full mode keeps such state.
  """
  shape = tuple(a.shape[:-1]) + tuple(b.shape[batch_ndim + 1:])
  sa, sb = _spec(a, declared_a), _spec(b, declared_b)
  spec = None
  if sa is not None or sb is not None:
    sa = sa if sa is not None else (None,) * a.ndim
    sb = sb if sb is not None else (None,) * b.ndim
    spec = _dedupe(sa[:-1] + sb[batch_ndim + 1:])
  return _zeros(shape, dtype, spec, a if sa is not None else b)


def _pad(spec, ndim: int) -> tuple:
  spec = tuple(spec)
  return spec + (None,) * (ndim - len(spec))


def _spec(x: Any, declared: Spec) -> Spec:
  """`x`'s partition spec (one entry per axis), or None when nothing says how it is laid out."""
  if isinstance(x, jax.core.Tracer):
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and not mesh.empty and AxisType.Explicit in tuple(mesh.axis_types):
      return _pad(sharding.spec, x.ndim)
  elif isinstance(getattr(x, "sharding", None), NamedSharding):
    return _pad(x.sharding.spec, len(x.shape))
  if declared is not None and any(s is not None for s in declared):
    return _pad(declared, len(x.shape))
  return None


def _zeros(shape, dtype, spec: Spec, like: Any) -> jax.Array:
  """Zeros laid out by `spec` on `like`'s mesh, or on the mesh in context for tracers."""
  zeros = lambda: jnp.zeros(shape, dtype)
  if isinstance(like, jax.core.Tracer):
    mesh = getattr(getattr(jax.typeof(like), "sharding", None), "mesh", None)
  else:
    mesh = getattr(getattr(like, "sharding", None), "mesh", None)
  if mesh is None or mesh.empty:
    mesh = jax.sharding.get_abstract_mesh()
  if spec is None or mesh.empty:
    return zeros()
  sharding = NamedSharding(mesh, P(*spec))
  if not isinstance(like, jax.core.Tracer) and isinstance(mesh, jax.sharding.Mesh):
    return jax.jit(zeros, out_shardings=sharding)()  # Placed directly, eagerly or traced.
  if AxisType.Explicit in tuple(mesh.axis_types):
    return jax.sharding.reshard(zeros(), sharding)
  return lax.with_sharding_constraint(zeros(), sharding)


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
