"""Pieces shared by the paired transforms of the LoRA family (beyond `pairing`).

The dtypes of the computation, the flattening of an update tree against the parameters'
pairing, Adam's moment update on a factor-sized array, and a wrapper that hands optax
transforms plain arrays at `init` (not NNX Variables, whose sharding metadata would
otherwise be copied onto state leaves).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adaprelora_jax._src import pairing


def compute_dtype(*xs) -> Any:
  """`promote_types(dtype of xs, float32)`: float32 for bf16/f32 factors, float64 under x64."""
  return jnp.promote_types(jnp.result_type(*[x.dtype for x in xs]), jnp.float32)


def flatten_like(treedef, tree, name: str) -> list[Any]:
  """The leaves of `tree` (NNX Variables unwrapped) flattened up to the params' treedef."""
  try:
    return treedef.flatten_up_to(pairing.unwrap(tree))
  except (ValueError, TypeError) as e:
    raise ValueError(f"The {name} tree does not match the structure of params: {e}") from e


def checked_grads(treedef, updates, params: list[Any], who: str,
                  cast: bool = True) -> list[Any]:
  """The gradient leaves flattened like `params`, each checked against its parameter.

  A gradient whose shape differs from its parameter's, or whose dtype is not floating,
  is a `ValueError` naming the leaf; a floating gradient of another dtype is cast to the
  parameter's dtype when `cast` (masked holes, None, pass through).
  """
  grads = flatten_like(treedef, updates, "updates")
  paths = None
  out = []
  for i, (g, p) in enumerate(zip(grads, params)):
    if g is None or p is None or isinstance(g, optax.MaskedNode):
      out.append(g)
      continue
    problem = None
    if tuple(jnp.shape(g)) != tuple(p.shape):
      problem = f"has shape {tuple(jnp.shape(g))} but its parameter has shape {tuple(p.shape)}"
    elif not jnp.issubdtype(jnp.result_type(g), jnp.floating):
      problem = f"has dtype {jnp.result_type(g)}; gradients must be floating point"
    if problem is not None:
      if paths is None:
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(
            jax.tree.unflatten(treedef, list(range(len(params)))))[0]]
      raise ValueError(f"{who}: the gradient of {pairing.path_str(paths[i])} {problem}.")
    out.append(g.astype(p.dtype) if cast and jnp.result_type(g) != p.dtype else g)
  return out


def require_params(params, who: str):
  if params is None:
    raise ValueError(f"{who} needs the current LoRA factors: call "
                     "update(grads, state, params).")


def adam_moments(g, mu, nu, count, b1, b2, eps):
  """One Adam step on `g` (optax `scale_by_adam` semantics, eps outside the root).

  Args:
    g: the (preconditioned) gradient, in the compute dtype.
    mu, nu: the first and second moments (any float dtype; computed in `g`'s dtype).
    count: the step number after the increment (t >= 1).
    b1, b2, eps: Adam's hyperparameters (floats or traced scalars).

  Returns:
    `(direction, new mu, new nu)`: the direction in `g`'s dtype, the moments in the
    dtypes of `mu` and `nu`.
  """
  dt = g.dtype
  t = count.astype(dt)
  b1, b2 = jnp.asarray(b1, dt), jnp.asarray(b2, dt)
  new_mu = (1.0 - b1) * g + b1 * mu.astype(dt)
  new_nu = (1.0 - b2) * g * g + b2 * nu.astype(dt)
  mu_hat = new_mu / (1.0 - b1 ** t)
  nu_hat = new_nu / (1.0 - b2 ** t)
  direction = mu_hat / (jnp.sqrt(nu_hat) + jnp.asarray(eps, dt))
  return direction, new_mu.astype(mu.dtype), new_nu.astype(nu.dtype)


def with_plain_init(tx: optax.GradientTransformation, who: str) -> optax.GradientTransformation:
  """`tx` whose `init` sees plain arrays and whose `update` checks the gradients.

  `nnx.Optimizer` hands `init` the Variables of the model. optax transforms build
  their state with `jax.tree.map` over them, which copies each parameter's metadata
  (its `out_sharding` among it) onto state leaves, including leaves of another shape
  (e.g. `optax.adafactor`'s factored or placeholder statistics), which then fail to
  shard. Plain arrays keep their sharding through `zeros_like`, so nothing is lost.
  When `update` gets `params`, each gradient is checked against its parameter first
  (`checked_grads`), since optax would broadcast a wrong-shaped gradient silently or
  fail deep inside with a `TypeError`.
  """

  def init_fn(params):
    return tx.init(pairing.unwrap(params))

  def update_fn(updates, state, params=None, **extra):
    if params is not None:
      plain = pairing.unwrap(params)
      treedef = jax.tree.structure(plain)
      grads = checked_grads(treedef, updates, jax.tree.leaves(plain), who)
      updates = jax.tree.unflatten(treedef, grads)
    return tx.update(updates, state, params, **extra)

  if isinstance(tx, optax.GradientTransformationExtraArgs):
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
  return optax.GradientTransformation(init_fn, lambda u, s, p=None: update_fn(u, s, p))
