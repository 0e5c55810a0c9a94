"""GPT-2 (`GPT2LMHeadModel`) in Flax NNX.

Module paths follow Hugging Face's, with the layers stacked:

  HF `transformer.h.{i}.attn.c_attn.weight` (in, out)  <->  NNX
  `transformer.h.attn.c_attn.kernel` (layers, in, out)

Learned positions (`wpe`), Conv1D projections (already `(in, out)`), GELU-tanh and,
by default, an output head tied to `wte`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaprelora_jax.models import sharding
from adaprelora_jax.models.attention import Context, attend
from adaprelora_jax.models.base import CausalLM, check_sharding, layer_windows, scan_layers
from adaprelora_jax.models.base import stack_layers
from adaprelora_jax.models.config import ModelConfig
from adaprelora_jax.models.layers import ACTIVATIONS, Embed, LayerNorm, Linear
from adaprelora_jax.models.sharding import ShardingConfig


class GPT2Attention(nnx.Module):
  """Fused `c_attn` (d -> 3d) and output `c_proj` (d -> d)."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, rngs: nnx.Rngs):
    d, std = config.hidden_size, config.initializer_range
    common = dict(hf_transposed=False, init_std=std, param_dtype=param_dtype, dtype=dtype,
                  rngs=rngs)
    self.num_heads = config.num_heads
    self.head_dim = config.head_dim
    self.heads_spec = sharding_config.act_btnh
    # The fused output is gathered over its feature axis before the q/k/v split.
    act = sharding_config.act_btd
    self.c_attn = Linear(d, 3 * d, use_bias=config.qkv_bias,
                         kernel_spec=sharding_config.attn_qkv_df, out_spec=act, **common)
    self.c_proj = Linear(d, d, use_bias=config.o_bias, kernel_spec=sharding_config.attn_out_fd,
                         out_spec=sharding_config.act_btd, **common)

  def __call__(self, x, context: Context, *, window, scale, kv):
    b, t, d = x.shape
    q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
    heads = (b, t, self.num_heads, self.head_dim)
    q, k, v = (sharding.reshape(y, heads, self.heads_spec) for y in (q, k, v))
    out, kv = attend(q, k, v, context, window=window, scale=scale, kv=kv,
                     heads_spec=self.heads_spec)
    return self.c_proj(sharding.reshape(out, (b, t, d), None)), kv


class GPT2MLP(nnx.Module):
  """`c_fc` (d -> 4d), activation, `c_proj` (4d -> d)."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    common = dict(use_bias=config.mlp_bias, hf_transposed=False,
                  init_std=config.initializer_range, param_dtype=param_dtype, dtype=dtype,
                  rngs=rngs)
    self.act = config.activation
    self.c_fc = Linear(d, f, kernel_spec=sharding_config.mlp_in_df,
                       out_spec=sharding_config.act_btf, **common)
    self.c_proj = Linear(f, d, kernel_spec=sharding_config.mlp_out_fd,
                         out_spec=sharding_config.act_btd, **common)

  def __call__(self, x):
    return self.c_proj(ACTIVATIONS[self.act](self.c_fc(x)))


class GPT2Block(nnx.Module):
  """Pre-norm block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, rngs: nnx.Rngs):
    kw = dict(sharding_config=sharding_config, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
    norm = dict(eps=config.norm_eps, spec=sharding_config.norm_d, param_dtype=param_dtype,
                dtype=dtype)
    self.ln_1 = LayerNorm(config.hidden_size, **norm)
    self.attn = GPT2Attention(config, **kw)
    self.ln_2 = LayerNorm(config.hidden_size, **norm)
    self.mlp = GPT2MLP(config, **kw)

  def __call__(self, x, context: Context, *, window, scale, kv):
    h, kv = self.attn(self.ln_1(x), context, window=window, scale=scale, kv=kv)
    x = x + h
    return x + self.mlp(self.ln_2(x)), kv


class GPT2Model(nnx.Module):
  """Embeddings `wte`, `wpe`, stacked blocks `h`, final `ln_f`."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, remat: bool, rngs: nnx.Rngs):
    s = sharding_config
    std = config.initializer_range
    self.config = config
    self.remat = remat
    self.act_spec = s.act_btd
    self.wte = Embed(config.vocab_size, config.hidden_size, table_spec=s.embed_vd,
                     out_spec=s.act_btd, logits_spec=s.act_btv, init_std=std,
                     param_dtype=param_dtype, dtype=dtype, rngs=rngs)
    self.wpe = Embed(config.max_position_embeddings, config.hidden_size,
                     table_spec=s.pos_embed_pd, out_spec=s.act_btd, init_std=std,
                     param_dtype=param_dtype, dtype=dtype, rngs=rngs)
    self.h = stack_layers(
        lambda r: GPT2Block(config, sharding_config=s, param_dtype=param_dtype, dtype=dtype,
                            rngs=r),
        config.num_layers, rngs)
    self.ln_f = LayerNorm(config.hidden_size, eps=config.norm_eps, spec=s.norm_d,
                          param_dtype=param_dtype, dtype=dtype)

  def __call__(self, input_ids, context: Context, kv):
    cfg = self.config
    x = self.wte(input_ids) + self.wpe(context.positions)
    x = sharding.shard(x, self.act_spec)
    scale = cfg.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
    scales = np.array([scale / (i + 1) if cfg.scale_attn_by_inverse_layer_idx else scale
                       for i in range(cfg.num_layers)], np.float32)
    x, kv = scan_layers(self.h, x, context, windows=layer_windows(cfg), scales=scales, kv=kv,
                        remat=self.remat)
    return self.ln_f(x), kv


class GPT2(CausalLM):
  """GPT-2 language model; NNX `transformer` / `lm_head` as Hugging Face's
  `GPT2LMHeadModel` (no `lm_head` parameter when tied to `transformer.wte`)."""

  hf_layers_path = ("transformer", "h")

  def __init__(self, config: ModelConfig, *, param_dtype=jnp.float32, dtype=jnp.float32,
               sharding: ShardingConfig | None = None, remat: bool = False,
               rngs: nnx.Rngs):
    if not config.is_gpt2:
      raise ValueError(f"GPT2 needs a gpt2 config, got model_type {config.model_type!r}")
    self.config = config
    self.sharding = check_sharding(sharding)
    self.dtype = dtype
    self.transformer = GPT2Model(config, sharding_config=self.sharding, param_dtype=param_dtype,
                                 dtype=dtype, remat=remat, rngs=rngs)
    self.lm_head = None if config.tie_word_embeddings else Linear(
        config.hidden_size, config.vocab_size, kernel_spec=self.sharding.lm_head_dv,
        out_spec=self.sharding.act_btv, init_std=config.initializer_range,
        param_dtype=param_dtype, dtype=dtype, rngs=rngs)

  def backbone(self, input_ids, context, kv):
    return self.transformer(input_ids, context, kv)

  def logits(self, hidden: jax.Array) -> jax.Array:
    if self.lm_head is None:
      return self.transformer.wte.attend(hidden)
    return self.lm_head(hidden)
