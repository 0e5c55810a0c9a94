"""What GPT-2 and the Llama family share: stacked layers applied with `nnx.scan`, and
the causal-LM entry points (`__call__`, `decode`, `init_cache`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaprelora_jax.models import sharding
from adaprelora_jax.models.attention import NO_WINDOW, Context, KVCache, make_context
from adaprelora_jax.models.config import ModelConfig
from adaprelora_jax.models.sharding import ShardingConfig


def check_sharding(config: ShardingConfig | None) -> ShardingConfig:
  """`config` (default: no sharding); a sharded one needs a mesh set with `jax.set_mesh`."""
  config = ShardingConfig() if config is None else config
  if config != ShardingConfig() and sharding.current_mesh() is None:
    raise ValueError("a sharded model is built inside `with jax.set_mesh(mesh):`")
  return config


def stack_layers(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int,
                 rngs: nnx.Rngs) -> nnx.Module:
  """`num_layers` layers as one module whose parameters have a leading layer axis."""

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
  def create(rngs: nnx.Rngs) -> nnx.Module:
    return make_layer(rngs)

  return create(rngs)


def scan_layers(layers: nnx.Module, x: jax.Array, context: Context, *, windows: np.ndarray,
                scales: np.ndarray, kv, remat: bool):
  """Apply the stacked `layers` in order; `kv` is the cache's `(k, v)` or None."""

  def body(x, layer, window, scale, layer_kv):
    return layer(x, context, window=window, scale=scale, kv=layer_kv)

  if remat:
    body = nnx.remat(body)
  run = nnx.scan(body, in_axes=(nnx.Carry, 0, 0, 0, 0), out_axes=(nnx.Carry, 0))
  return run(x, layers, jnp.asarray(windows), jnp.asarray(scales), kv)


def layer_windows(config: ModelConfig) -> np.ndarray:
  return np.array([NO_WINDOW if w is None else w for w in config.layer_windows()], np.int32)


class CausalLM(nnx.Module):
  """A decoder-only language model: `model(input_ids) -> logits`.

  Subclasses set `config`, `sharding` and `dtype` (the compute dtype) and implement
  `backbone` (embeddings, stacked layers, final norm: `(input_ids, context, kv) ->
  (hidden, kv)`) and `logits(hidden)`.
  """

  config: ModelConfig
  sharding: ShardingConfig
  # Hugging Face module path of the stacked layers, e.g. ("model", "layers").
  hf_layers_path: tuple[str, ...]

  def backbone(self, input_ids, context: Context, kv):
    raise NotImplementedError

  def logits(self, hidden: jax.Array) -> jax.Array:
    raise NotImplementedError

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """Logits `(batch, seq, vocab)` of `input_ids` `(batch, seq)`.

    Args:
      input_ids: token ids.
      attention_mask: 1 for real tokens, 0 for padding (left or right); default all 1.
      positions: position ids; default: the count of real tokens before each token.
    """
    context, _ = make_context(input_ids, attention_mask, positions, None)
    hidden, _ = self.backbone(input_ids, context, None)
    return self.logits(hidden)

  def decode(self, input_ids: jax.Array, cache: KVCache, attention_mask: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Like `__call__`, for tokens appended after those in `cache` (the first call, on
    the prompt, is the prefill); returns the logits and the updated cache."""
    context, key_mask = make_context(input_ids, attention_mask, positions, cache)
    hidden, (k, v) = self.backbone(input_ids, context, (cache.k, cache.v))
    cache = KVCache(k=k, v=v, mask=key_mask, index=cache.index + input_ids.shape[1])
    return self.logits(hidden), cache

  def init_cache(self, batch_size: int, slots: int, dtype=None) -> KVCache:
    """An empty cache for `batch_size` rows of up to `slots` tokens."""
    cfg = self.config
    dtype = self.dtype if dtype is None else dtype
    shape = (batch_size, slots, cfg.num_kv_heads, cfg.head_dim)
    spec = self.sharding.cache_bsnh
    layer_spec = None if spec is None else jax.sharding.PartitionSpec(None, *spec)
    zeros = sharding.zeros((cfg.num_layers,) + shape, dtype, layer_spec)
    return KVCache(k=zeros, v=zeros, mask=jnp.zeros((batch_size, slots), bool),
                   index=jnp.zeros((), jnp.int32))
