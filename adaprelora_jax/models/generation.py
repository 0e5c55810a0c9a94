"""Greedy and beam-search generation with a preallocated KV cache, matching
`transformers`' `generate(do_sample=False, ...)` token for token.

The whole loop (prefill, then one `decode` step per token) is one jitted
`lax.while_loop`; the cache holds every layer's keys and values along the stacked layer
axis. Beam search ports transformers 5's vectorised `_beam_search`: `2 * num_beams`
candidates per step, finished hypotheses scored `sum logprobs / generated_len **
length_penalty`, the same `early_stopping` heuristics, and the same output cropping.
Prompts may be left-padded (as for transformers) or right-padded.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaprelora_jax.models import sharding
from adaprelora_jax.models.attention import KVCache
from adaprelora_jax.models.base import CausalLM

_NEG = -1.0e9  # transformers' "very large negative" beam score


def generate(
    model: CausalLM,
    input_ids,
    *,
    max_new_tokens: int,
    attention_mask=None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    eos_token_id: int | tuple[int, ...] | None = None,
    pad_token_id: int | None = None,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
) -> jax.Array:
  """Token ids `(batch * num_return_sequences, prompt + generated)`, prompt included.

  Args:
    model: a `CausalLM` (`GPT2`, `Llama`).
    input_ids: `(batch, prompt)` prompt tokens.
    max_new_tokens: the most tokens to add.
    attention_mask: 1 for prompt tokens, 0 for padding; default all 1.
    num_beams: 1 for greedy search, more for beam search.
    length_penalty: beam search: a finished hypothesis scores
      `sum of logprobs / generated_length ** length_penalty`.
    no_repeat_ngram_size: if > 0, no n-gram of this size (prompt included) repeats.
    eos_token_id: end-of-sequence token(s); None: the model config's; `()`: none.
    pad_token_id: fills finished rows; None: the config's, else the first eos.
    early_stopping: beam search: True stops when `num_beams` hypotheses are finished;
      False and "never" are transformers' heuristics.
    num_return_sequences: beam search: how many of the best beams to return per row.

  Returns:
    The sequences, cropped like transformers' output (for greedy search, to the step where
    every row had finished; for beam search, to the longest returned hypothesis).
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
    raise ValueError("need num_beams >= 1 and 1 <= num_return_sequences <= num_beams")
  if num_beams == 1 and num_return_sequences != 1:
    raise ValueError("greedy search returns one sequence per row")
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
  if no_repeat_ngram_size < 0:
    raise ValueError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be (batch, seq), got shape {input_ids.shape}")
  mask = (jnp.ones(input_ids.shape, bool) if attention_mask is None
          else jnp.asarray(attention_mask).astype(bool))
  config = model.config
  if config.is_gpt2 and input_ids.shape[1] + max_new_tokens > config.max_position_embeddings:
    raise ValueError(f"prompt {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
                     f"GPT-2's {config.max_position_embeddings} positions")
  eos = config.eos_token_id if eos_token_id is None else eos_token_id
  eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(int(e) for e in eos)
  pad = config.pad_token_id if pad_token_id is None else pad_token_id
  if pad is None and eos:
    pad = eos[0]
  graphdef, state = nnx.split(model)
  # Plain arrays: the jitted loop builds a module per trace level from them.
  state = nnx.as_pure(state)
  if num_beams == 1:
    tokens, length = _greedy(graphdef, state, input_ids, mask, max_new_tokens=max_new_tokens,
                             eos=eos, pad=pad, ngram=no_repeat_ngram_size)
  else:
    # n ** length_penalty for n generated tokens, rounded to float32 as transformers does
    # (entry 0 is never used).
    denominators = tuple(float(np.float32(float(max(n, 1)) ** length_penalty))
                         for n in range(max_new_tokens + 1))
    tokens, length = _beam_search(
        graphdef, state, input_ids, mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
        eos=eos, pad=pad, ngram=no_repeat_ngram_size, denominators=denominators,
        length_penalty=float(length_penalty), early_stopping=early_stopping,
        num_return=num_return_sequences)
  return tokens[:, :int(length)]


def ban_repeated_ngrams(tokens: jax.Array, length: jax.Array, scores: jax.Array,
                        n: int) -> jax.Array:
  """transformers' `NoRepeatNGramLogitsProcessor`: `-inf` for every token that would
  repeat an n-gram of `tokens[:, :length]`; `tokens` `(rows, slots)`, `scores`
  `(rows, vocab)`."""
  if n == 0:
    return scores
  rows, slots = tokens.shape
  vocab = scores.shape[-1]
  num_windows = slots - n + 1
  if num_windows <= 0:
    return scores
  windows = tokens[:, np.arange(num_windows)[:, None] + np.arange(n)[None, :]]
  prefix = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(length + 1 - n, 0), n - 1, axis=1)
  complete = (jnp.arange(num_windows) + n) <= length
  match = jnp.all(windows[:, :, :-1] == prefix[:, None, :], axis=-1) & complete[None]
  banned_ids = jnp.where(match, jnp.minimum(windows[:, :, -1], vocab), vocab)
  banned = jnp.zeros((rows, vocab + 1), bool).at[jnp.arange(rows)[:, None], banned_ids].set(True)
  banned = banned[:, :vocab] & (length >= n)
  return jnp.where(banned, -jnp.inf, scores)


def _last_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """The logits after each row's last real prompt token."""
  last = jnp.max(jnp.where(mask, jnp.arange(mask.shape[1]), 0), axis=1)
  logits = sharding.replicate(logits)
  return logits[jnp.arange(logits.shape[0]), last].astype(jnp.float32)


def _next_logits(logits: jax.Array) -> jax.Array:
  """The logits of a one-token decode step, replicated for the search bookkeeping."""
  return sharding.replicate(logits[:, 0].astype(jnp.float32))


def _is_eos(tokens: jax.Array, eos: tuple[int, ...]) -> jax.Array:
  if not eos:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(eos, tokens.dtype))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos", "pad", "ngram"))
def _greedy(graphdef, state, input_ids, mask, *, max_new_tokens, eos, pad, ngram):
  model = nnx.merge(graphdef, state)
  batch, prompt = input_ids.shape
  slots = prompt + max_new_tokens
  cache = model.init_cache(batch, slots)
  logits, cache = model.decode(input_ids, cache, attention_mask=mask)
  fill = 0 if pad is None else pad
  tokens = jnp.full((batch, slots), fill, jnp.int32).at[:, :prompt].set(input_ids)

  def cond(carry):
    step, _, _, _, unfinished = carry
    return (step < max_new_tokens) & jnp.any(unfinished)

  def body(carry):
    step, tokens, cache, logits, unfinished = carry
    length = prompt + step
    scores = ban_repeated_ngrams(tokens, length, logits, ngram)
    next_tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    if eos:
      next_tokens = jnp.where(unfinished, next_tokens, pad)
      unfinished = unfinished & ~_is_eos(next_tokens, eos)
    tokens = jax.lax.dynamic_update_slice(tokens, next_tokens[:, None], (0, length))
    # A module per trace level: NNX refuses Variables from the enclosing trace.
    out, cache = nnx.merge(graphdef, state).decode(next_tokens[:, None], cache)
    return step + 1, tokens, cache, _next_logits(out), unfinished

  carry = (jnp.zeros((), jnp.int32), tokens, cache, _last_logits(logits, mask),
           jnp.ones((batch,), bool))
  step, tokens, _, _, _ = jax.lax.while_loop(cond, body, carry)
  return tokens, prompt + step


def _gather_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
  """`x[b, indices[b, j], ...]`: select beams along axis 1."""
  indices = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, indices, axis=1)


def _reorder_cache(cache: KVCache, rows: jax.Array) -> KVCache:
  return KVCache(k=sharding.take_keep_sharding(cache.k, rows, 1),
                 v=sharding.take_keep_sharding(cache.v, rows, 1),
                 mask=sharding.take_keep_sharding(cache.mask, rows, 0), index=cache.index)


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "max_new_tokens", "num_beams", "eos", "pad", "ngram", "denominators",
    "length_penalty", "early_stopping", "num_return"))
def _beam_search(graphdef, state, input_ids, mask, *, max_new_tokens, num_beams, eos, pad,
                 ngram, denominators, length_penalty, early_stopping, num_return):
  model = nnx.merge(graphdef, state)
  batch, prompt = input_ids.shape
  beams = num_beams
  max_length = prompt + max_new_tokens
  keep = max(2, 1 + len(eos)) * beams  # candidates per step
  top_beam_mask = jnp.arange(keep) < beams
  denominators = jnp.asarray(denominators, jnp.float32)  # [n] = n ** length_penalty

  flat_ids = jnp.repeat(input_ids, beams, axis=0)
  flat_mask = jnp.repeat(mask, beams, axis=0)
  cache = model.init_cache(batch * beams, max_length)
  logits, cache = model.decode(flat_ids, cache, attention_mask=flat_mask)
  logits = _last_logits(logits, flat_mask)
  vocab = logits.shape[-1]

  fill = ((pad if pad else eos[0]) if eos else -1)
  running = jnp.full((batch, beams, max_length), fill, jnp.int32)
  running = running.at[:, :, :prompt].set(input_ids[:, None, :])
  running_scores = jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(_NEG)
  running_origin = jnp.full((batch, beams, max_new_tokens), -1, jnp.int32)
  carry = dict(
      length=jnp.asarray(prompt, jnp.int32), running=running, running_scores=running_scores,
      running_origin=running_origin, sequences=running,
      scores=jnp.full((batch, beams), _NEG, jnp.float32), origin=running_origin,
      finished=jnp.zeros((batch, beams), bool), can_improve=jnp.ones((batch, 1), bool),
      done=jnp.zeros((), bool), cache=cache, logits=logits)

  def body(c):
    length = c["length"]
    step = length - prompt
    log_probs = jax.nn.log_softmax(c["logits"], axis=-1)
    log_probs = ban_repeated_ngrams(c["running"].reshape(batch * beams, max_length), length,
                                    log_probs, ngram)
    log_probs = log_probs.reshape(batch, beams, vocab) + c["running_scores"][:, :, None]
    top_scores, top_index = jax.lax.top_k(log_probs.reshape(batch, beams * vocab), keep)
    top_beam = top_index // vocab
    top_token = (top_index % vocab).astype(jnp.int32)
    top_seqs = _gather_beams(c["running"], top_beam)
    top_seqs = jax.lax.dynamic_update_slice(top_seqs, top_token[:, :, None], (0, 0, length))
    origin = (top_beam + jnp.arange(batch)[:, None] * beams).astype(jnp.int32)
    top_origin = jax.lax.dynamic_update_slice(
        _gather_beams(c["running_origin"], top_beam), origin[:, :, None], (0, 0, step))
    hits = (length + 1 >= max_length) | _is_eos(top_token, eos)

    # Running beams: the best candidates that did not just finish.
    running_candidates = top_scores + hits.astype(jnp.float32) * _NEG
    _, next_index = jax.lax.top_k(running_candidates, beams)
    running = _gather_beams(top_seqs, next_index)
    running_scores = _gather_beams(running_candidates, next_index)
    running_origin = _gather_beams(top_origin, next_index)

    # Finished hypotheses: merge the candidates that just finished among the top beams.
    just_finished = hits & top_beam_mask[None, :]
    finished_scores = top_scores / denominators[step + 1]
    full = jnp.all(c["finished"], axis=-1, keepdims=True) & (early_stopping is True)
    finished_scores = finished_scores + full.astype(jnp.float32) * _NEG
    finished_scores = finished_scores + (~c["can_improve"]).astype(jnp.float32) * _NEG
    finished_scores = finished_scores + (~just_finished).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([c["scores"], finished_scores], axis=1)
    _, best = jax.lax.top_k(merged_scores, beams)
    sequences = _gather_beams(jnp.concatenate([c["sequences"], top_seqs], axis=1), best)
    scores = _gather_beams(merged_scores, best)
    origins = _gather_beams(jnp.concatenate([c["origin"], top_origin], axis=1), best)
    finished = _gather_beams(jnp.concatenate([c["finished"], just_finished], axis=1), best)

    cache = _reorder_cache(c["cache"], running_origin[:, :, step].reshape(-1))
    length = length + 1
    # Can a running beam still beat the worst finished one?
    if early_stopping == "never" and length_penalty > 0.0:
      best_length = jnp.asarray(max_new_tokens)
    else:
      best_length = length - prompt
    best_running = running_scores[:, :1] / denominators[best_length]
    worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _NEG)
    can_improve = c["can_improve"] & jnp.any(best_running > worst_finished, axis=-1,
                                             keepdims=True)
    open_beam = ~(jnp.all(finished) & (early_stopping is True))
    done = ~(jnp.any(can_improve) & open_beam & ~jnp.all(hits))

    last_tokens = jax.lax.dynamic_slice_in_dim(running, length - 1, 1, axis=2)
    out, cache = nnx.merge(graphdef, state).decode(last_tokens.reshape(batch * beams, 1), cache)
    return dict(length=length, running=running, running_scores=running_scores,
                running_origin=running_origin, sequences=sequences, scores=scores,
                origin=origins, finished=finished, can_improve=can_improve, done=done,
                cache=cache, logits=_next_logits(out))

  c = jax.lax.while_loop(lambda c: ~c["done"], body, carry)
  sequences = c["sequences"][:, :num_return].reshape(batch * num_return, max_length)
  origin = c["origin"][:, :num_return].reshape(batch * num_return, max_new_tokens)
  generated = jnp.max(jnp.sum(origin != -1, axis=1))
  return sequences, prompt + generated
