"""The classification head of the GLUE runs, the per-family losses, and the callables the
evaluation takes (`class_logits`, `lm_logits`).

The head is Hugging Face's `*ForSequenceClassification.score`: a bias-free linear map of
the final hidden state (after the last norm, before the LM head) at the last real token,
`logits = h[b, last_b] @ W`, `W (hidden, num_labels)`, `last_b` the last position where
`attention_mask[b]` is 1. It lives on the model as `model.score`, its weight a `HeadParam`
(an `nnx.Param`), so the loop trains it beside the LoRA factors (AdamW, like every
trainable parameter that is not a LoRA factor), the checkpoints hold it, and the PEFT
adapter saves it as `modules_to_save` (`base_model.model.score.weight`).

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from adaprelora_jax.models import build_model, config_by_name
>>> model = build_model(config_by_name("tiny-llama"), rngs=nnx.Rngs(0))
>>> add_score_head(model, 3, rngs=nnx.Rngs(1)).kernel.shape
(64, 3)
>>> tokens = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
>>> class_logits(model, tokens, tokens > 0).shape
(2, 3)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adaprelora_jax.models.attention import make_context
from adaprelora_jax.models.base import CausalLM
from adaprelora_jax.models.sharding import DATA, FSDP
from adaprelora_jax.train.sharding import to_host
from adaprelora_jax.train.step import LossSums, causal_lm_loss

# Hugging Face's module name of the head (Llama, Mistral, Qwen2 and GPT-2 alike).
HEAD_NAME = "score"


class HeadParam(nnx.Param):
  """A parameter of a task head: trained, saved with the adapter, not part of the base."""


class ScoreHead(nnx.Module):
  """`y = x @ kernel`, `kernel (hidden, num_labels)` float32 (Hugging Face's bias-free
  `nn.Linear`, weight `(num_labels, hidden)`)."""

  hf_transposed = True

  def __init__(self, hidden: int, num_labels: int, *, init_std: float = 0.02,
               rngs: nnx.Rngs):
    self.kernel = HeadParam(init_std * jax.random.normal(rngs.params(), (hidden, num_labels),
                                                         jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) @ self.kernel[...]


def add_score_head(model: CausalLM, num_labels: int, *, rngs: nnx.Rngs) -> ScoreHead:
  """Puts a fresh `ScoreHead` on `model` as `model.score` (normal(0, initializer_range)
  init, like Hugging Face's) and returns it."""
  if num_labels < 2:
    raise ValueError(f"a classification head needs at least 2 labels, got {num_labels}")
  head = ScoreHead(model.config.hidden_size, num_labels,
                   init_std=model.config.initializer_range, rngs=rngs)
  setattr(model, HEAD_NAME, head)
  return head


def has_score_head(model) -> bool:
  return isinstance(getattr(model, HEAD_NAME, None), ScoreHead)


def last_token_hidden(model: CausalLM, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """The final hidden state `(b, d)` at the last position where `attention_mask` is 1
  (a one-hot contraction, not a gather, so a batch-sharded input stays sharded)."""
  mask = attention_mask.astype(jnp.int32)
  length = mask.shape[-1]
  last = length - 1 - jnp.argmax(mask[:, ::-1], axis=-1)
  context, _ = make_context(tokens, mask, None, None)
  hidden, _ = model.backbone(tokens, context, None)
  pick = jax.nn.one_hot(last, length, dtype=hidden.dtype)
  return jnp.einsum("btd,bt->bd", hidden, pick)


def class_logits(model: CausalLM, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """`float32 (b, num_labels)`: the head on the last real token's final hidden state."""
  return model.score(last_token_hidden(model, tokens, attention_mask))


def lm_logits(model: CausalLM, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """`float32 (b, L, vocab)`: the LM logits of right- or left-padded `tokens`."""
  return model(tokens, attention_mask).astype(jnp.float32)


# The loss of each record family: `loss(model, *micro_batch, label_smoothing) -> LossSums`
# (text and choice: `step.causal_lm_loss`).


def classification_loss(model, tokens, attention_mask, labels, weights,
                        label_smoothing: float = 0.0) -> LossSums:
  """Cross-entropy of the head's logits against `labels`, summed with `weights`; the
  count is the weight sum (examples)."""
  logits = class_logits(model, tokens, attention_mask)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  nll = optax.softmax_cross_entropy(logits, targets)
  weights = weights.astype(jnp.float32)
  return LossSums(jnp.sum(nll * weights), jnp.sum(weights))


LOSSES: dict[str, Callable[..., LossSums]] = {
    "text": causal_lm_loss, "choice": causal_lm_loss, "classification": classification_loss}


def jitted(fn: Callable, model: nnx.Module, mesh: jax.sharding.Mesh | None = None
           ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`fn(model, tokens, attention_mask)` as a jitted callable of the two arrays (the
  model's state an argument, not a constant baked into the program). With the `mesh` the
  model lives on, calls run in it, the batch split over its data-parallel axes (padded
  to a multiple of their size; the padding rows are dropped from the result) and the
  result comes back as a host NumPy array, gathered from every host."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, tokens, attention_mask):
    return fn(nnx.merge(graphdef, state), tokens, attention_mask)

  def call(tokens, attention_mask):
    tokens = np.asarray(tokens, np.int32)
    attention_mask = np.asarray(attention_mask, bool)
    if mesh is None:
      return run(state, tokens, attention_mask)
    n, parallel = len(tokens), mesh.shape[DATA] * mesh.shape[FSDP]
    pad = -n % parallel
    tokens, attention_mask = (np.concatenate([x, np.repeat(x[:1], pad, 0)])
                              for x in (tokens, attention_mask))
    batch = NamedSharding(mesh, P((DATA, FSDP), None))
    with jax.set_mesh(mesh):
      out = run(state, jax.device_put(tokens, batch), jax.device_put(attention_mask, batch))
    return to_host(out)[:n]

  return call


def class_logits_fn(model: CausalLM, mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The evaluation's `class_logits(tokens int32[b, L], attention_mask bool[b, L]) ->
  float32[b, num_labels]` of a model with a head (on `mesh`, if it lives on one)."""
  if not has_score_head(model):
    raise ValueError("the model has no classification head (add_score_head)")
  return jitted(class_logits, model, mesh)


def lm_logits_fn(model: CausalLM, mesh: jax.sharding.Mesh | None = None
                 ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The evaluation's `lm_logits(tokens int32[b, L], attention_mask bool[b, L]) ->
  float32[b, L, vocab]` (on `mesh`, if the model lives on one)."""
  return jitted(lm_logits, model, mesh)


def eval_callables(model: CausalLM, mesh: jax.sharding.Mesh | None, family: str
                   ) -> dict[str, Callable[[jax.Array, jax.Array], jax.Array]]:
  """The keyword arguments of `train.eval_run.evaluate_run` for a run of record `family`:
  `class_logits` for classification, `lm_logits` for multiple choice, none for text."""
  if family == "classification":
    return {"class_logits": class_logits_fn(model, mesh)}
  if family == "choice":
    return {"lm_logits": lm_logits_fn(model, mesh)}
  return {}
