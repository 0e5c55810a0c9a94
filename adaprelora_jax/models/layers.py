"""Building blocks with Hugging Face's parameter layout in Flax names.

Every projection is a `Linear` holding `kernel` of shape `(in, out)` (Flax layout, the
layout LoRA's `lora_a (in, r)` / `lora_b (r, out)` pair with) and an optional `bias`.
Hugging Face stores `nn.Linear` weights as `(out, in)` and GPT-2's `Conv1D` weights as
`(in, out)`; `Linear.hf_transposed` records which, and loading transposes accordingly.
Parameter leaves map to Hugging Face names as `kernel`/`embedding`/`scale` -> `weight`,
`bias` -> `bias`.

`Linear` carries an optional LoRA adapter (`adaprelora_jax.lora.apply_lora` sets it):
factors `lora_a` `(in, r)` and `lora_b` `(r, out)` beside `kernel`, so that
`y = x @ kernel + bias + s * dropout(x) @ lora_a @ lora_b`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from adaprelora_jax.models import sharding
from adaprelora_jax.models.sharding import Spec

# Hugging Face leaf name of each parameter leaf name.
HF_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def param(value: jax.Array, spec: Spec) -> nnx.Param:
  """An `nnx.Param` whose `out_sharding` metadata is `spec` fitted to the current mesh."""
  spec = sharding.fit_spec(spec, value.shape)
  if spec is None:
    return nnx.Param(value)
  return nnx.Param(value, out_sharding=tuple(spec))


def _normal(rngs: nnx.Rngs, shape, std: float, dtype) -> jax.Array:
  return std * jax.random.normal(rngs.params(), shape, dtype)


class Linear(nnx.Module):
  """`y = x @ kernel + bias` with `kernel` `(in_features, out_features)`.

  `hf_transposed` is True for a Hugging Face `nn.Linear` (weight `(out, in)`) and False
  for GPT-2's `Conv1D` (weight `(in, out)`). `out_spec` is the activation spec of `y`.
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      use_bias: bool = False,
      hf_transposed: bool = True,
      kernel_spec: Spec = None,
      out_spec: Spec = None,
      init_std: float = 0.02,
      param_dtype=jnp.float32,
      dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.in_features = in_features
    self.out_features = out_features
    self.hf_transposed = hf_transposed
    self.out_spec = out_spec
    self.dtype = dtype
    self.kernel = param(_normal(rngs, (in_features, out_features), init_std, param_dtype),
                        kernel_spec)
    # The bias is laid out like the output's feature axis.
    bias_spec = None if out_spec is None else P(*tuple(out_spec)[-1:])
    self.bias = (param(jnp.zeros((out_features,), param_dtype), bias_spec)
                 if use_bias else None)
    init_lora_slots(self)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = sharding.matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                        self.out_spec)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    delta = lora_delta(self, x, self.dtype, self.out_spec)
    return y if delta is None else y + delta


def init_lora_slots(module: nnx.Module) -> None:
  """The LoRA adapter slots of a linear module, empty until `lora.apply_lora` fills them.

  The factors (`nnx.LoRAParam`), an `nnx.Dropout` on the adapter's input (None for rate
  0), the scale s, the `LoRAConfig` it came from, and whether it is folded into `kernel`.
  """
  module.lora_a = nnx.data(None)
  module.lora_b = nnx.data(None)
  module.lora_dropout = nnx.data(None)
  module.lora_scale = None
  module.lora_config = None
  module.lora_merged = False


def lora_delta(module: nnx.Module, x: jax.Array, dtype, out_spec: Spec = None):
  """`s * dropout(x) @ lora_a @ lora_b` of `module`'s LoRA adapter, in `dtype`; None
  when the module has none or it is merged into the kernel.

  The rank-r intermediate keeps the batch axes' spec of `out_spec` and is replicated
  along r; the result has the spec `out_spec`.
  """
  if module.lora_a is None or module.lora_merged:
    return None
  if module.lora_dropout is not None:
    x = module.lora_dropout(x)
  low_spec = None if out_spec is None else P(*tuple(out_spec)[:-1], None)
  h = sharding.matmul(x.astype(dtype), module.lora_a[...].astype(dtype), low_spec)
  return module.lora_scale * sharding.matmul(h, module.lora_b[...].astype(dtype), out_spec)


class Embed(nnx.Module):
  """A lookup table `embedding` of shape `(num_embeddings, features)`."""

  def __init__(
      self,
      num_embeddings: int,
      features: int,
      *,
      table_spec: Spec = None,
      out_spec: Spec = None,
      logits_spec: Spec = None,
      init_std: float = 0.02,
      param_dtype=jnp.float32,
      dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.num_embeddings = num_embeddings
    self.features = features
    self.out_spec = out_spec
    self.logits_spec = logits_spec
    self.dtype = dtype
    self.embedding = param(_normal(rngs, (num_embeddings, features), init_std, param_dtype),
                           table_spec)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return sharding.take(self.embedding[...], ids, self.out_spec).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """`x @ embedding.T`: the tied output head."""
    table = self.embedding[...].astype(self.dtype)
    return sharding.matmul(x.astype(self.dtype), table.T, self.logits_spec)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with `scale` and `bias`, computed in float32."""

  def __init__(self, features: int, *, eps: float, spec: Spec = None, param_dtype=jnp.float32,
               dtype=jnp.float32):
    self.eps = eps
    self.dtype = dtype
    self.scale = param(jnp.ones((features,), param_dtype), spec)
    self.bias = param(jnp.zeros((features,), param_dtype), spec)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm (Llama): `scale * x / sqrt(mean(x^2) + eps)`, normalised in float32."""

  def __init__(self, features: int, *, eps: float, spec: Spec = None, param_dtype=jnp.float32,
               dtype=jnp.float32):
    self.eps = eps
    self.dtype = dtype
    self.scale = param(jnp.ones((features,), param_dtype), spec)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return (self.scale[...].astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)


def _gelu_exact(x):
  return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def _gelu_fast(x):
  return 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATIONS = {
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_fast,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
