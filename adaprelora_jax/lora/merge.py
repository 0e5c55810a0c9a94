"""Folding adapters into the base weights and back: `merge_lora`, `unmerge_lora`.

Merging computes `kernel + s * lora_a @ lora_b` in float32 (per layer for stacked
layers) and casts it to the kernel's dtype; the factors stay, so `unmerge_lora`
subtracts the same product. In float32 the round trip is exact to rounding (about 1e-7
relative); with bf16 base weights each fold rounds the kernel to bf16, so unmerging does
not give back the original bits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from adaprelora_jax.lora.apply import lora_modules


@functools.partial(jax.jit, static_argnums=(3,))
def _fold(kernel, lora_a, lora_b, scale):
  delta = jnp.matmul(lora_a.astype(jnp.float32), lora_b.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)


def _set_merged(model: nnx.Module, merged: bool) -> nnx.Module:
  modules = lora_modules(model)
  if not modules:
    raise ValueError(f"{type(model).__name__} has no LoRA adapter: call apply_lora first")
  for _, module in modules:
    if module.lora_merged == merged:
      continue
    sign = 1.0 if merged else -1.0
    kernel = module.kernel.get_value()
    folded = _fold(kernel, module.lora_a.get_value(), module.lora_b.get_value(),
                   sign * float(module.lora_scale))
    if isinstance(kernel, jax.Array) and folded.sharding != kernel.sharding:
      folded = jax.device_put(folded, kernel.sharding)
    module.kernel.set_value(folded)
    module.lora_merged = merged
  return model


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Folds every adapter into its base weight, in place: `kernel += s * lora_a @ lora_b`.

  A merged layer computes `x @ kernel + bias` only (the adapter path is off), so the
  outputs are unchanged up to rounding and inference costs no extra matmul. The factors
  are kept for `unmerge_lora` and PEFT export. Layers already merged are left alone, so
  merging twice is a no-op. Do not train a merged model (its factors get no gradient):
  unmerge first.

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from adaprelora_jax.lora import LoRAConfig, apply_lora, unmerge_lora
  >>> class Net(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.proj = nnx.Linear(4, 3, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.proj(x)
  >>> model = apply_lora(Net(nnx.Rngs(0)), LoRAConfig(2, 2, ["proj"]), rngs=nnx.Rngs(1))
  >>> model.proj.lora_b[...] = jnp.ones((2, 3))
  >>> x = jnp.ones((1, 4))
  >>> y = model(x)
  >>> model = merge_lora(model)
  >>> model.proj.lora_merged, bool(jnp.allclose(model(x), y, atol=1e-6))
  (True, True)
  >>> model = unmerge_lora(model)
  >>> model.proj.lora_merged, bool(jnp.allclose(model(x), y, atol=1e-6))
  (False, True)
  """
  return _set_merged(model, True)


def unmerge_lora(model: nnx.Module) -> nnx.Module:
  """Takes every merged adapter back out of its base weight, in place:
  `kernel -= s * lora_a @ lora_b`, and turns the adapter path back on. Layers not merged
  are left alone."""
  return _set_merged(model, False)
