"""Picking and building the model of a config."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from adaprelora_jax.models.base import CausalLM
from adaprelora_jax.models.config import ModelConfig
from adaprelora_jax.models.gpt2 import GPT2
from adaprelora_jax.models.llama import Llama
from adaprelora_jax.models.sharding import ShardingConfig


def model_class(config: ModelConfig) -> type[CausalLM]:
  """`GPT2` for gpt2, `Llama` for llama, mistral and qwen2."""
  return GPT2 if config.is_gpt2 else Llama


def build_model(
    config: ModelConfig,
    *,
    dtype=jnp.float32,
    compute_dtype=jnp.float32,
    sharding: ShardingConfig | None = None,
    remat: bool = False,
    rngs: nnx.Rngs | None = None,
) -> CausalLM:
  """A randomly initialised model of `config` (normal(0, initializer_range) weights).

  Args:
    config: the architecture.
    dtype: parameter dtype.
    compute_dtype: activation dtype (float32 by default, also for bf16 parameters).
    sharding: partition specs; a sharded model is built inside `jax.set_mesh(mesh)`.
    remat: rematerialise each layer in the backward pass.
    rngs: initialisation keys (default `nnx.Rngs(0)`).

  Works under `nnx.eval_shape` without allocating:

  >>> from flax import nnx
  >>> from adaprelora_jax.models import config_by_name
  >>> abstract = nnx.eval_shape(lambda: build_model(config_by_name("mistral-7b"),
  ...                                               dtype=jnp.bfloat16))
  >>> abstract.model.layers.self_attn.q_proj.kernel.shape
  (32, 4096, 4096)
  """
  rngs = nnx.Rngs(0) if rngs is None else rngs
  return model_class(config)(config, param_dtype=dtype, dtype=compute_dtype, sharding=sharding,
                             remat=remat, rngs=rngs)
