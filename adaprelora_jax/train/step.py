"""The train step, written once for every model and optimizer of the package.

The model is split into a graph, the trainable parameters (a nested dict of arrays, what
the optimizer and the checkpoints see) and the frozen rest. One jitted step with the
parameters and optimizer state donated: causal-LM cross-entropy on the target tokens
(optional label smoothing), gradients accumulated over `grad_accum` micro-batches with
`lax.scan` and weighted by their target-token counts (so k micro-batches give exactly
the gradient of one k-times larger batch), then the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Params = dict[str, Any]


class StepMetrics(NamedTuple):
  """What one step reports (device scalars)."""

  # Mean cross-entropy per target token over the whole step.
  loss: jax.Array
  # Global norm of the gradient, before clipping.
  grad_norm: jax.Array
  # Target tokens in the step.
  target_tokens: jax.Array


class LossSums(NamedTuple):
  """Summed cross-entropy and the number of target tokens it sums over."""

  loss: jax.Array
  tokens: jax.Array


@dataclasses.dataclass(frozen=True)
class SplitModel:
  """A model as graph, abstract trainable state (the template), and frozen state."""

  graphdef: Any
  template: nnx.State
  frozen: nnx.State

  def merge(self, params: Params, frozen: nnx.State | None = None) -> nnx.Module:
    """The model with trainable values `params` (works inside `jit` and `scan`: the
    frozen Variables are rebuilt at the current trace level)."""
    frozen = jax.tree.map(lambda x: x, self.frozen if frozen is None else frozen)
    return nnx.merge(self.graphdef, state_from_pure(self.template, params), frozen)


def split_model(model: nnx.Module, trainable) -> tuple[SplitModel, Params]:
  """`(SplitModel, params)`: `params` is the trainable state (`trainable` an NNX filter)
  as a nested dict of arrays."""
  graphdef, state, frozen = nnx.split(model, trainable, ...)
  if not jax.tree.leaves(state):
    raise ValueError(f"the model has no parameter matching {trainable}")
  template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)
  return SplitModel(graphdef, template, frozen), nnx.to_pure_dict(state)


def state_from_pure(template: nnx.State, params: Params) -> nnx.State:
  """An `nnx.State` shaped like `template` holding the arrays of the nested dict `params`."""
  def get(path):
    node = params
    for key in path:
      node = node[key]
    return node

  return nnx.from_flat_state(
      [(path, var.replace(get(path))) for path, var in nnx.to_flat_state(template)])


def loss_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array,
              label_smoothing: float = 0.0) -> LossSums:
  """Cross-entropy of `logits (b, t, v)` against `labels (b, t)`, summed where `mask`.

  A one-hot product rather than a gather, so vocab-sharded logits stay sharded.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  nll = -jnp.sum(logp * onehot, axis=-1)
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  mask = mask.astype(jnp.float32)
  return LossSums(jnp.sum(nll * mask), jnp.sum(mask))


def causal_lm_loss(model, inputs, labels, loss_mask, label_smoothing: float = 0.0) -> LossSums:
  """The default loss: causal-LM cross-entropy of `model(inputs)` on the target tokens."""
  return loss_sums(model(inputs), labels, loss_mask, label_smoothing)


def _micro_loss(split: SplitModel, params, frozen, batch, loss_fn, label_smoothing):
  model = split.merge(params, frozen)
  sums = loss_fn(model, *batch, label_smoothing)
  return sums.loss, sums


def make_train_step(split: SplitModel, optimizer: optax.GradientTransformation, *,
                    label_smoothing: float = 0.0, loss_fn=causal_lm_loss):
  """`step(params, opt_state, frozen, *batch) -> (params, opt_state, StepMetrics)`,
  jitted, `params` and `opt_state` donated. The batch arrays are `(grad_accum,
  micro_batch, ...)`: `inputs, labels, loss_mask` for the default causal-LM loss, or
  whatever `loss_fn(model, *micro_batch, label_smoothing) -> LossSums` takes (the
  classification loss: tokens, attention mask, labels, weights); gradients are weighted
  by the counts it returns."""
  grad_fn = jax.grad(_micro_loss, argnums=1, has_aux=True)

  def step(params, opt_state, frozen, *arrays):
    def micro(carry, batch):
      grads, total = carry
      g, sums = grad_fn(split, params, frozen, batch, loss_fn, label_smoothing)
      grads = jax.tree.map(jnp.add, grads, g)
      return (grads, LossSums(total.loss + sums.loss, total.tokens + sums.tokens)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    start = LossSums(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, total), _ = jax.lax.scan(micro, (zeros, start), arrays)
    denom = jnp.maximum(total.tokens, 1.0)
    grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, StepMetrics(total.loss / denom, grad_norm, total.tokens)

  return jax.jit(step, donate_argnums=(0, 1))


def make_eval_step(split: SplitModel, loss_fn=causal_lm_loss):
  """`eval_step(params, frozen, *batch) -> LossSums` on one micro-batch `(1, b, ...)` (no
  label smoothing: the evaluation loss is the plain mean cross-entropy)."""

  def eval_step(params, frozen, *arrays):
    model = split.merge(params, frozen)
    return loss_fn(model, *(x[0] for x in arrays))

  return jax.jit(eval_step)
