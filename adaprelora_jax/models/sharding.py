"""Sharding of the models: one frozen config of partition specs, the mesh helper, and
the activation constraints that make a forward pass work on both mesh axis types.

Field names carry their dimensions, one letter each: `v` vocab, `p` positions,
`d` model width, `f` a projection's output (heads * head_dim or MLP width), `b` batch,
`t` sequence, `n` heads, `h` head dim, `s` cache slots. Parameter specs describe one
layer; `nnx.vmap` adds the (unsharded) leading layer axis. A spec whose mesh axes do not
divide a dimension is relaxed for that dimension (`fit_spec`), so e.g. GPT-2's odd
vocabulary stays whole.

>>> mesh = make_mesh(1)  # e.g. make_mesh(8, fsdp=2, tensor=4) on 8 devices
>>> dict(mesh.shape)
{'data': 1, 'fsdp': 1, 'tensor': 1}
>>> ShardingConfig.fsdp_tp().mlp_in_df
P('fsdp', 'tensor')
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

Spec = P | None


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """Partition specs of the parameters and activations (None: replicated/unconstrained)."""

  # Token embedding (vocab, d); also the tied output head.
  embed_vd: Spec = None
  # GPT-2's learned position embedding (positions, d).
  pos_embed_pd: Spec = None
  # Column-parallel attention input kernels (d, f): q/k/v_proj, GPT-2's c_attn.
  attn_qkv_df: Spec = None
  # Row-parallel attention output kernels (f, d): o_proj, GPT-2's attn.c_proj.
  attn_out_fd: Spec = None
  # Column-parallel MLP input kernels (d, f): gate/up_proj, GPT-2's c_fc.
  mlp_in_df: Spec = None
  # Row-parallel MLP output kernels (f, d): down_proj, GPT-2's mlp.c_proj.
  mlp_out_fd: Spec = None
  # Untied output head (d, vocab).
  lm_head_dv: Spec = None
  # Norm scales and biases (d,).
  norm_d: Spec = None
  # Residual stream (batch, seq, d).
  act_btd: Spec = None
  # Projection outputs (batch, seq, f).
  act_btf: Spec = None
  # Per-head activations (batch, seq, heads, head_dim).
  act_btnh: Spec = None
  # Logits (batch, seq, vocab).
  act_btv: Spec = None
  # One layer's KV cache (batch, slots, kv_heads, head_dim).
  cache_bsnh: Spec = None

  def __post_init__(self):
    for field in dataclasses.fields(self):
      spec = getattr(self, field.name)
      if spec is None:
        continue
      if not isinstance(spec, P):
        raise TypeError(f"{field.name} must be a PartitionSpec or None, got {spec!r}")
      rank = len(field.name.rsplit("_", 1)[1])
      if len(spec) > rank:
        raise ValueError(f"{field.name} has {rank} dimensions, got spec {spec}")

  @classmethod
  def fsdp_tp(cls, *, data: str = DATA, fsdp: str = FSDP, tensor: str = TENSOR) -> ShardingConfig:
    """Weights sharded over `fsdp` (ZeRO-3 style) and `tensor` (Megatron column/row
    parallel); the batch over `data` and `fsdp`."""
    batch = (data, fsdp)
    return cls(
        embed_vd=P(tensor, fsdp),
        pos_embed_pd=P(None, fsdp),
        attn_qkv_df=P(fsdp, tensor),
        attn_out_fd=P(tensor, fsdp),
        mlp_in_df=P(fsdp, tensor),
        mlp_out_fd=P(tensor, fsdp),
        lm_head_dv=P(fsdp, tensor),
        norm_d=P(None),
        act_btd=P(batch, None, None),
        act_btf=P(batch, None, tensor),
        act_btnh=P(batch, None, tensor, None),
        act_btv=P(batch, None, tensor),
        cache_bsnh=P(batch, None, tensor, None),
    )


def make_mesh(
    num_devices: int | None = None,
    *,
    fsdp: int | None = None,
    tensor: int = 1,
    data: int | None = None,
    axis_types: AxisType = AxisType.Explicit,
    devices=None,
) -> jax.sharding.Mesh:
  """A `(data, fsdp, tensor)` mesh over the first `num_devices` devices (default all).

  Unset sizes are filled in: with neither `data` nor `fsdp` given, all devices not
  used by `tensor` go to `fsdp`. `axis_types` (one type for all axes) may be
  `AxisType.Explicit` (JAX's default) or `AxisType.Auto`.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices) if num_devices is None else num_devices
  if n > len(devices):
    raise ValueError(f"asked for {n} devices, only {len(devices)} available")
  if tensor <= 0 or n % tensor:
    raise ValueError(f"tensor={tensor} does not divide {n} devices")
  if fsdp is None and data is None:
    data = 1
  if fsdp is None:
    fsdp = n // (tensor * data)
  if data is None:
    data = n // (tensor * fsdp)
  if data * fsdp * tensor != n:
    raise ValueError(f"data={data} x fsdp={fsdp} x tensor={tensor} != {n} devices")
  if not isinstance(axis_types, AxisType):
    raise TypeError(f"axis_types must be one jax.sharding.AxisType, got {axis_types!r}")
  return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=(axis_types,) * 3,
                       devices=devices[:n])


def current_mesh():
  """The mesh set by `jax.set_mesh`, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def fit_spec(spec: Spec, shape: tuple[int, ...], mesh=None) -> P | None:
  """`spec` for an array of `shape`, keeping only the mesh axes that exist and divide
  their dimension (each mesh axis used once). None when there is no mesh."""
  mesh = current_mesh() if mesh is None else mesh
  if spec is None or mesh is None:
    return None
  sizes = dict(mesh.shape)
  used: set[str] = set()
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    kept = []
    for name in names:
      split = math.prod(sizes[k] for k in kept) * sizes.get(name, 0)
      if name in sizes and name not in used and dim % split == 0:
        kept.append(name)
    used.update(kept)
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*out)


def _explicit(mesh) -> bool:
  return mesh is not None and mesh.are_all_axes_explicit


def shard(x: jax.Array, spec: Spec) -> jax.Array:
  """Constrain `x` to `spec` (fitted) under the current mesh; a no-op without one."""
  spec = fit_spec(spec, x.shape)
  if spec is None:
    return x
  if _explicit(current_mesh()):
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)


def out_sharding(spec: Spec, shape: tuple[int, ...]) -> P | None:
  """The `out_sharding=` argument for an op producing `shape`: the fitted spec on an
  Explicit mesh (where JAX cannot always infer it), else None."""
  if not _explicit(current_mesh()):
    return None
  return fit_spec(spec, shape)


def matmul(x: jax.Array, w: jax.Array, spec: Spec) -> jax.Array:
  """`x @ w` whose output has the activation spec `spec`."""
  shape = x.shape[:-1] + w.shape[-1:]
  y = jnp.matmul(x, w, out_sharding=out_sharding(spec, shape))
  return shard(y, spec)


def reshape(x: jax.Array, shape: tuple[int, ...], spec: Spec) -> jax.Array:
  """`x.reshape(shape)` with output spec `spec`."""
  y = jnp.reshape(x, shape, out_sharding=out_sharding(spec, shape))
  return shard(y, spec)


def take(x: jax.Array, indices: jax.Array, spec: Spec) -> jax.Array:
  """`x[indices]` (a gather along axis 0) with output spec `spec`."""
  shape = indices.shape + x.shape[1:]
  y = x.at[indices].get(out_sharding=out_sharding(spec, shape))
  return shard(y, spec)


def replicate(x: jax.Array) -> jax.Array:
  """`x` replicated over the current mesh (a no-op without one)."""
  return shard(x, P())


def take_keep_sharding(x: jax.Array, indices: jax.Array, axis: int) -> jax.Array:
  """`jnp.take(x, indices, axis)` with `indices` 1-D, keeping `x`'s sharding."""
  spec = jax.typeof(x).sharding.spec if _explicit(current_mesh()) else None
  index = (slice(None),) * axis + (indices,)
  return x.at[index].get(out_sharding=spec)


def zeros(shape: tuple[int, ...], dtype, spec: Spec) -> jax.Array:
  """Zeros laid out as `spec`."""
  return jnp.zeros(shape, dtype, out_sharding=out_sharding(spec, shape)) if _explicit(
      current_mesh()) else shard(jnp.zeros(shape, dtype), spec)
