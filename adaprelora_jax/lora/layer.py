"""The LoRA-capable linear layers and the creation of an adapter's variables.

Two layer types take an adapter, both with the factors beside the kernel
(`{kernel, bias, lora_a, lora_b}`):
- `adaprelora_jax.models.Linear` (every projection of our models) carries the adapter
  natively;
- `flax.nnx.Linear` is replaced in its parent by `LoRALinear`, a subclass that holds the
  same `kernel` and `bias` Variables (same names and metadata) and the same settings, so
  its forward is `nnx.Linear`'s plus the adapter path.

A layer's kernel may have leading axes before `(in, out)` (layers stacked with
`nnx.vmap` and applied with `nnx.scan`): the factors and the dropout's RNG state get the
same leading axes, `lora_a (..., in, r)`, `lora_b (..., r, out)`, so each layer of the
stack has its own adapter.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from flax import nnx

from adaprelora_jax.lora.config import LoRAConfig
from adaprelora_jax.models import sharding as model_sharding
from adaprelora_jax.models.layers import Linear, init_lora_slots, lora_delta


class LoRALinear(nnx.Linear):
  """`nnx.Linear` with a LoRA adapter: `y = x @ kernel + bias + s * dropout(x) @ lora_a @ lora_b`.

  Built from an existing `nnx.Linear`, sharing its Variables and settings (the adapter is
  set by `apply_lora`):

  >>> from flax import nnx
  >>> base = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> layer = LoRALinear(base)
  >>> layer.kernel is base.kernel, layer.lora_a is None
  (True, True)
  """

  def __init__(self, base: nnx.Linear):
    if type(base) is not nnx.Linear:
      raise TypeError(f"LoRALinear wraps an nnx.Linear, got {type(base).__name__}")
    for name, value in vars(base).items():
      if name.startswith("_"):  # NNX's bookkeeping of the base object
        continue
      setattr(self, name, nnx.data(value) if name == "bias" and value is None else value)
    init_lora_slots(self)

  def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
    y = super().__call__(inputs, out_sharding)
    delta = lora_delta(self, inputs, y.dtype, getattr(out_sharding, "spec", out_sharding))
    return y if delta is None else y + delta


def is_linear(module) -> bool:
  """Whether `apply_lora` can adapt `module` (`models.Linear`, `nnx.Linear`)."""
  return isinstance(module, Linear | LoRALinear) or type(module) is nnx.Linear


def has_lora(module) -> bool:
  """Whether `module` carries a LoRA adapter."""
  return is_linear(module) and getattr(module, "lora_a", None) is not None


def stack_shape(module) -> tuple[int, ...]:
  """The leading (stacked-layer) axes of `module`'s kernel, before `(in, out)`."""
  return tuple(module.kernel.shape[:-2])


def _kernel_spec(kernel: nnx.Variable) -> tuple | None:
  """The kernel's partition spec, one entry per axis: its `out_sharding` metadata (a
  per-layer spec under stacking axes gets None for them), else the spec of its value's
  `NamedSharding`; None for an unsharded kernel."""
  ndim = len(kernel.shape)
  spec = kernel.get_metadata().get("out_sharding")
  if spec is not None:
    spec = tuple(spec)
    return (None,) * (ndim - len(spec)) + spec
  value_sharding = getattr(kernel.get_value(), "sharding", None)
  if isinstance(value_sharding, jax.sharding.NamedSharding):
    spec = tuple(value_sharding.spec)
    return spec + (None,) * (ndim - len(spec))
  return None


def _factor_specs(kernel: nnx.Variable):
  """Specs of `lora_a` and `lora_b`: `lora_a` shares the kernel's `in` axis (and leading
  axes), `lora_b` its `out` axis; the rank is replicated."""
  spec = _kernel_spec(kernel)
  if spec is None:
    return None, None
  return spec[:-1] + (None,), spec[:-2] + (None, spec[-1])


def _mesh_context(kernel: nnx.Variable):
  """The mesh to create the factors in: the current one, else the kernel's own."""
  if model_sharding.current_mesh() is not None:
    return contextlib.nullcontext()
  value_sharding = getattr(kernel.get_value(), "sharding", None)
  mesh = getattr(value_sharding, "mesh", None)
  if isinstance(mesh, jax.sharding.Mesh) and not mesh.empty:
    return jax.set_mesh(mesh)
  return contextlib.nullcontext()


def _lora_param(value: jax.Array, spec) -> nnx.LoRAParam:
  return nnx.LoRAParam(value) if spec is None else nnx.LoRAParam(value, out_sharding=spec)


def _dropout(rate: float, batch: tuple[int, ...], key: jax.Array | None) -> nnx.Dropout | None:
  """`nnx.Dropout(rate)` with its own RNG stream, one per stacked layer."""
  if rate == 0.0:
    return None

  def make(k):
    return nnx.Dropout(rate, rngs=nnx.Rngs(dropout=k))

  for _ in batch:
    make = nnx.vmap(make, in_axes=0, out_axes=0)
  keys = jax.random.split(key, math.prod(batch)).reshape(batch) if batch else key
  return make(keys)


def add_adapter(module, config: LoRAConfig, *, key: jax.Array, dropout_key: jax.Array | None,
                param_dtype) -> None:
  """Give the linear `module` LoRA factors (in place).

  `lora_a` is initialised like PEFT's default (`kaiming_uniform_(a=sqrt(5))` of the
  `(r, in)` weight: uniform in `+-1/sqrt(in)`), `lora_b` with zeros, so the adapted layer
  starts as the base layer.
  """
  kernel = module.kernel
  *batch, n, m = kernel.shape
  bound = 1.0 / math.sqrt(n)
  spec_a, spec_b = _factor_specs(kernel)
  # Values made inside the mesh are laid out on it, as NNX's eager sharding expects.
  with _mesh_context(kernel):
    a = jax.random.uniform(key, (*batch, n, config.rank), jnp.float32, -bound, bound)
    b = jnp.zeros((*batch, config.rank, m), param_dtype)
    module.lora_a = _lora_param(a.astype(param_dtype), spec_a)
    module.lora_b = _lora_param(b, spec_b)
    module.lora_dropout = _dropout(config.dropout, tuple(batch), dropout_key)
  module.lora_scale = config.scale
  module.lora_config = config
  module.lora_merged = False
