"""Helpers that keep the transforms correct on meshes with Explicit axes.

Under `jax.sharding.AxisType.Explicit` a contraction over a sharded axis must name its
output sharding, and operands of one op must agree on the sharding of shared axes. Under
`Auto` axes, or without a mesh, every helper here is the identity (or returns None).
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, PartitionSpec as P


def _explicit_sharding(x):
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
    return None
  return sharding


def _spec(x) -> tuple:
  sharding = _explicit_sharding(x)
  spec = tuple(sharding.spec) if sharding is not None else ()
  return spec + (None,) * (x.ndim - len(spec))


def small_out(x, batch_ndim: int, trailing: int = 2):
  """`out_sharding` for a contraction of `x` giving `batch + trailing` small axes.

  The batch axes keep `x`'s sharding; the small trailing axes (r x r, a scalar per
  pair) are replicated. None when `x` has no Explicit mesh axes.
  """
  if _explicit_sharding(x) is None:
    return None
  return P(*_spec(x)[:batch_ndim], *([None] * trailing))


def replicate(x):
  """`x` fully replicated when it lives on Explicit mesh axes; `x` otherwise."""
  if _explicit_sharding(x) is None or all(s is None for s in _spec(x)):
    return x
  return jax.sharding.reshard(x, P())


def match_batch(x, ref, batch_ndim: int):
  """`x` (small trailing axes) resharded so its batch axes match `ref`'s (Explicit only)."""
  if _explicit_sharding(ref) is None:
    return x
  want = _spec(ref)[:batch_ndim] + (None,) * (x.ndim - batch_ndim)
  if _explicit_sharding(x) is not None and _spec(x) == want:
    return x
  return jax.sharding.reshard(x, P(*want))


def like(x):
  """`out_sharding` giving `x`'s partition spec (Explicit axes only; None otherwise)."""
  if _explicit_sharding(x) is None:
    return None
  return P(*_spec(x))
