"""Causal dot-product attention with padding masks, sliding windows, grouped-query heads
and a preallocated KV cache.

Tokens live in *slots* (columns of the input or of the cache). A query in slot `i`
sees a key in slot `j` when the key is a real token (not padding), `j <= i`, and, for a
sliding-window layer, `i - j < window`, as in Hugging Face's masks. Positions (for RoPE
or GPT-2's position table) count real tokens only, so a left-padded row computes the
same as the unpadded one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from adaprelora_jax.models import sharding
from adaprelora_jax.models.sharding import Spec

# Window of a layer without sliding-window attention.
NO_WINDOW = 2**30


class KVCache(NamedTuple):
  """Keys and values of all layers, preallocated for `slots` tokens."""

  # Keys, (layers, batch, slots, kv_heads, head_dim).
  k: jax.Array
  # Values, same shape as k.
  v: jax.Array
  # (batch, slots) bool: the slot holds a real (non-padding) token.
  mask: jax.Array
  # () int32: the next slot to write.
  index: jax.Array


class Context(NamedTuple):
  """What every layer needs besides its input: positions and the attention mask."""

  # (batch, seq) int32 positions of the input tokens.
  positions: jax.Array
  # (batch, seq, keys) bool: causal and padding mask (no sliding window yet).
  mask: jax.Array
  # (seq,) int32 slot of each query.
  query_slots: jax.Array
  # () int32 slot where this call's keys/values are written; None without a cache.
  cache_index: jax.Array | None


def make_context(
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    positions: jax.Array | None,
    cache: KVCache | None,
) -> tuple[Context, jax.Array | None]:
  """The layers' `Context` and, with a cache, the cache's updated slot mask."""
  batch, seq = input_ids.shape
  new_mask = (jnp.ones((batch, seq), bool) if attention_mask is None
              else jnp.asarray(attention_mask).astype(bool))
  if cache is None:
    count = jnp.zeros((batch, 1), jnp.int32)
    index = jnp.zeros((), jnp.int32)
    key_mask = new_mask
  else:
    count = jnp.sum(cache.mask, axis=1, dtype=jnp.int32)[:, None]
    index = cache.index
    key_mask = jax.lax.dynamic_update_slice(cache.mask, new_mask, (0, index))
  if positions is None:
    running = count + jnp.cumsum(new_mask, axis=1, dtype=jnp.int32) - 1
    positions = jnp.where(new_mask, running, 0) if attention_mask is not None else running
  query_slots = index + jnp.arange(seq, dtype=jnp.int32)
  key_slots = jnp.arange(key_mask.shape[1], dtype=jnp.int32)
  mask = key_mask[:, None, :] & (key_slots[None, None, :] <= query_slots[None, :, None])
  context = Context(positions=jnp.asarray(positions, jnp.int32), mask=mask,
                    query_slots=query_slots,
                    cache_index=None if cache is None else index)
  return context, (None if cache is None else key_mask)


def _heads_spec(spec: Spec, groups: bool) -> Spec:
  """(b, t, n, h) spec -> (b, t, kv_heads, groups, h) spec when `groups`."""
  if spec is None or not groups:
    return spec
  entries = tuple(spec) + (None,) * (4 - len(spec))
  return P(entries[0], entries[1], entries[2], None, entries[3])


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    context: Context,
    *,
    window: jax.Array,
    scale: jax.Array | float,
    kv: tuple[jax.Array, jax.Array] | None,
    heads_spec: Spec = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
  """Attention of `q` `(b, t, n, h)` over `k`, `v` `(b, t, kv_heads, h)` (written into
  this layer's cache `kv` first, when given); returns `(b, t, n, h)` and the new `kv`."""
  if kv is not None:
    k_cache, v_cache = kv
    start = (0, context.cache_index, 0, 0)
    k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
    v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
    kv = (k, v)
  key_slots = jnp.arange(k.shape[1], dtype=jnp.int32)
  in_window = (context.query_slots[:, None] - key_slots[None, :]) < window
  mask = context.mask & in_window[None]
  out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, scale=scale,
                              heads_spec=heads_spec)
  return out, kv


def dot_product_attention(q, k, v, mask, *, scale, heads_spec: Spec = None) -> jax.Array:
  """softmax(q k^T * scale, masked) v with grouped-query heads; `mask` `(b, t, s)`."""
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  groups = n // kv_heads
  q = sharding.reshape(q, (b, t, kv_heads, groups, h), _heads_spec(heads_spec, True))
  k = sharding.shard(k, heads_spec)
  v = sharding.shard(v, heads_spec)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k) * scale
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(scores.dtype).min)
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
  return sharding.reshape(out, (b, t, n, h), heads_spec)
