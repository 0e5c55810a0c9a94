"""LoRA+: AdamW with a larger learning rate for `lora_b` (Hayou, Ghosh, Yu, ICML 2024)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from adaprelora_jax._src import pairing
from adaprelora_jax._src import paired


def scale_by_loraplus(
    lr_ratio: float = 16.0,
    *,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
) -> optax.GradientTransformation:
  r"""Multiplies the `lora_b` updates by `lr_ratio`, leaving the `lora_a` updates alone.

  The LoRA+ rule `\eta_B = \lambda \eta_A` as a transform: placed after the direction
  and the weight decay, and before `scale_by_learning_rate`, it gives `lora_b` the
  learning rate `lr_ratio * learning_rate` (weight decay included, as in PEFT's param
  groups). The pairing is the package's (`lora_pairs`): a leaf outside a
  `lora_a`/`lora_b` pair is a `ValueError` at `init`. Stateless.

  Args:
    lr_ratio: `eta_B / eta_A` (the paper recommends 2 to 2^4 and more for hard tasks).
    dimension_numbers: the batch-axis layout of the pairs (see `LoRADimensionNumbers`);
      only checked here.

  Returns:
    An `optax.GradientTransformation` (stateless; `update` does not need `params`).

  Example:
    >>> import jax.numpy as jnp
    >>> import adaprelora_jax as apl
    >>> grads = {'lora_a': jnp.ones((8, 2)), 'lora_b': jnp.ones((2, 4))}
    >>> tx = apl.scale_by_loraplus(4.0)
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> float(updates['lora_a'][0, 0]), float(updates['lora_b'][0, 0])
    (1.0, 4.0)

  References:
    Hayou, Ghosh, Yu, *LoRA+: Efficient Low Rank Adaptation of Large Models*, ICML 2024
    (arXiv:2402.12354).
  """

  def init_fn(params):
    pairing.pair_layouts(params, dimension_numbers, who="loraplus")
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    # The updates carry the parameters' key paths, hence their pairing.
    layouts, treedef = pairing.pair_layouts(updates, dimension_numbers, who="loraplus")
    leaves = treedef.flatten_up_to(pairing.unwrap(updates))
    for lay in layouts:
      b = leaves[lay.b_index]
      leaves[lay.b_index] = (b * lr_ratio).astype(b.dtype)
    return jax.tree.unflatten(jax.tree.structure(updates), leaves), state

  return optax.GradientTransformation(init_fn, update_fn)


def loraplus(
    learning_rate: optax.ScalarOrSchedule,
    *,
    lr_ratio: float = 16.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any | None = None,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  """LoRA+: AdamW in which `lora_b` has `lr_ratio` times the learning rate of `lora_a`.

  `optax.chain(optax.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype),
  optax.add_decayed_weights(weight_decay, mask), scale_by_loraplus(lr_ratio),
  optax.scale_by_learning_rate(learning_rate))`: for `lora_a` exactly
  `optax.adamw(learning_rate, ...)`, for `lora_b` the same with `lr_ratio *
  learning_rate` (decay included, as PEFT's `create_loraplus_optimizer` does with
  torch's AdamW param groups). `init` sees plain arrays, not NNX Variables.

  Args:
    learning_rate: the learning rate of `lora_a` (a scalar or an optax schedule).
    lr_ratio: `lora_b`'s learning rate over `lora_a`'s.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to the root of the second moment.
    weight_decay: decoupled weight decay on the factors.
    mask: a tree or callable selecting which leaves weight decay applies to.
    dimension_numbers: the batch-axis layout of the pairs (see `LoRADimensionNumbers`).
    mu_dtype: dtype of the first moment; None uses the parameter's dtype.

  Returns:
    An `optax.GradientTransformation`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adaprelora_jax as apl
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> target = jax.random.normal(k1, (16, 4)) @ jax.random.normal(k2, (4, 12))
    >>> params = {'lora_a': jax.random.normal(k3, (16, 4)) / 4,
    ...           'lora_b': jnp.zeros((4, 12))}
    >>> loss = lambda p: jnp.mean((p['lora_a'] @ p['lora_b'] - target) ** 2)
    >>> tx = apl.loraplus(0.01, lr_ratio=8.0)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> first = loss(params)
    >>> for _ in range(200):
    ...   params, state = step(params, state)
    >>> bool(loss(params) < 0.05 * first)
    True

  References:
    Hayou, Ghosh, Yu, *LoRA+: Efficient Low Rank Adaptation of Large Models*, ICML 2024
    (arXiv:2402.12354).
  """
  return paired.with_plain_init(optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, mask),
      scale_by_loraplus(lr_ratio, dimension_numbers=dimension_numbers),
      optax.scale_by_learning_rate(learning_rate),
  ), "loraplus")
