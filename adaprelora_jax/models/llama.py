"""The Llama family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`) in
Flax NNX; the config's flags select the variant (Mistral: sliding window; Qwen2: q/k/v
biases, per-layer sliding windows, tied embeddings on small sizes).

Module paths follow Hugging Face's, with the layers stacked:

  HF `model.layers.{i}.self_attn.q_proj.weight` (out, in)  <->  NNX
  `model.layers.self_attn.q_proj.kernel` (layers, in, out)

RMSNorm, RoPE (with the checkpoint's theta and scaling), SwiGLU MLP, grouped-query
attention.
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
from adaprelora_jax.models.layers import ACTIVATIONS, Embed, Linear, RMSNorm
from adaprelora_jax.models.rope import apply_rope, inv_frequencies
from adaprelora_jax.models.sharding import ShardingConfig


class LlamaAttention(nnx.Module):
  """`q_proj`, `k_proj`, `v_proj` (d -> heads * head_dim) and `o_proj` back to d."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, rngs: nnx.Rngs):
    d, h = config.hidden_size, config.head_dim
    s = sharding_config
    common = dict(init_std=config.initializer_range, param_dtype=param_dtype, dtype=dtype,
                  rngs=rngs)
    qkv = dict(use_bias=config.qkv_bias, kernel_spec=s.attn_qkv_df, out_spec=s.act_btf,
               **common)
    self.num_heads = config.num_heads
    self.num_kv_heads = config.num_kv_heads
    self.head_dim = h
    self.heads_spec = s.act_btnh
    self.inv_freq = tuple(float(f) for f in inv_frequencies(config.rope, h))
    self.q_proj = Linear(d, config.num_heads * h, **qkv)
    self.k_proj = Linear(d, config.num_kv_heads * h, **qkv)
    self.v_proj = Linear(d, config.num_kv_heads * h, **qkv)
    self.o_proj = Linear(config.num_heads * h, d, use_bias=config.o_bias,
                         kernel_spec=s.attn_out_fd, out_spec=s.act_btd, **common)

  def __call__(self, x, context: Context, *, window, scale, kv):
    b, t, _ = x.shape
    q = sharding.reshape(self.q_proj(x), (b, t, self.num_heads, self.head_dim), self.heads_spec)
    kv_shape = (b, t, self.num_kv_heads, self.head_dim)
    k = sharding.reshape(self.k_proj(x), kv_shape, self.heads_spec)
    v = sharding.reshape(self.v_proj(x), kv_shape, self.heads_spec)
    inv_freq = np.asarray(self.inv_freq, np.float32)
    q = apply_rope(q, context.positions, inv_freq)
    k = apply_rope(k, context.positions, inv_freq)
    out, kv = attend(q, k, v, context, window=window, scale=scale, kv=kv,
                     heads_spec=self.heads_spec)
    out = sharding.reshape(out, (b, t, self.num_heads * self.head_dim), None)
    return self.o_proj(out), kv


class LlamaMLP(nnx.Module):
  """SwiGLU: `down_proj(act(gate_proj(x)) * up_proj(x))`."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    s = sharding_config
    common = dict(use_bias=config.mlp_bias, init_std=config.initializer_range,
                  param_dtype=param_dtype, dtype=dtype, rngs=rngs)
    self.act = config.activation
    self.gate_proj = Linear(d, f, kernel_spec=s.mlp_in_df, out_spec=s.act_btf, **common)
    self.up_proj = Linear(d, f, kernel_spec=s.mlp_in_df, out_spec=s.act_btf, **common)
    self.down_proj = Linear(f, d, kernel_spec=s.mlp_out_fd, out_spec=s.act_btd, **common)

  def __call__(self, x):
    return self.down_proj(ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
  """`x + self_attn(input_layernorm(x))`, then `x + mlp(post_attention_layernorm(x))`."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, rngs: nnx.Rngs):
    kw = dict(sharding_config=sharding_config, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
    norm = dict(eps=config.norm_eps, spec=sharding_config.norm_d, param_dtype=param_dtype,
                dtype=dtype)
    self.input_layernorm = RMSNorm(config.hidden_size, **norm)
    self.self_attn = LlamaAttention(config, **kw)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm)
    self.mlp = LlamaMLP(config, **kw)

  def __call__(self, x, context: Context, *, window, scale, kv):
    h, kv = self.self_attn(self.input_layernorm(x), context, window=window, scale=scale, kv=kv)
    x = x + h
    return x + self.mlp(self.post_attention_layernorm(x)), kv


class LlamaModel(nnx.Module):
  """`embed_tokens`, stacked `layers`, final `norm`."""

  def __init__(self, config: ModelConfig, *, sharding_config: ShardingConfig, param_dtype,
               dtype, remat: bool, rngs: nnx.Rngs):
    s = sharding_config
    self.config = config
    self.remat = remat
    self.embed_tokens = Embed(config.vocab_size, config.hidden_size, table_spec=s.embed_vd,
                              out_spec=s.act_btd, logits_spec=s.act_btv,
                              init_std=config.initializer_range, param_dtype=param_dtype,
                              dtype=dtype, rngs=rngs)
    self.layers = stack_layers(
        lambda r: LlamaDecoderLayer(config, sharding_config=s, param_dtype=param_dtype,
                                    dtype=dtype, rngs=r),
        config.num_layers, rngs)
    self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, spec=s.norm_d,
                        param_dtype=param_dtype, dtype=dtype)

  def __call__(self, input_ids, context: Context, kv):
    cfg = self.config
    x = self.embed_tokens(input_ids)
    scales = np.full((cfg.num_layers,), cfg.head_dim ** -0.5, np.float32)
    x, kv = scan_layers(self.layers, x, context, windows=layer_windows(cfg), scales=scales,
                        kv=kv, remat=self.remat)
    return self.norm(x), kv


class Llama(CausalLM):
  """Llama / Mistral / Qwen2 language model; NNX `model` / `lm_head` as Hugging Face's
  `*ForCausalLM` (no `lm_head` parameter when tied to `model.embed_tokens`)."""

  hf_layers_path = ("model", "layers")

  def __init__(self, config: ModelConfig, *, param_dtype=jnp.float32, dtype=jnp.float32,
               sharding: ShardingConfig | None = None, remat: bool = False,
               rngs: nnx.Rngs):
    if config.is_gpt2:
      raise ValueError("Llama needs a llama, mistral or qwen2 config, got gpt2")
    self.config = config
    self.sharding = check_sharding(sharding)
    self.dtype = dtype
    self.model = LlamaModel(config, sharding_config=self.sharding, param_dtype=param_dtype,
                            dtype=dtype, remat=remat, rngs=rngs)
    self.lm_head = None if config.tie_word_embeddings else Linear(
        config.hidden_size, config.vocab_size, kernel_spec=self.sharding.lm_head_dv,
        out_spec=self.sharding.act_btv, init_std=config.initializer_range,
        param_dtype=param_dtype, dtype=dtype, rngs=rngs)

  def backbone(self, input_ids, context, kv):
    return self.model(input_ids, context, kv)

  def logits(self, hidden: jax.Array) -> jax.Array:
    if self.lm_head is None:
      return self.model.embed_tokens.attend(hidden)
    return self.lm_head(hidden)
