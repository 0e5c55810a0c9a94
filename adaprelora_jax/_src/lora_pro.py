"""LoRA-Pro: factor gradients whose product best matches the full gradient (Wang et al., ICLR 2025)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adaprelora_jax._src import factor_ops as ops
from adaprelora_jax._src import linalg
from adaprelora_jax._src import pairing
from adaprelora_jax._src import paired
from adaprelora_jax._src import state_utils

_MODES = ("efficient", "full")


class LoRAProState(NamedTuple):
  """State of `scale_by_lora_pro`.

  Attributes:
    count: the number of steps taken (int32).
    mu: Adam's first moment. Efficient mode: of the adjusted factor gradients, a tree
      like the parameters (`mu_dtype`). Full mode: of each pair's equivalent W-gradient,
      an array of the adapted weight's shape `batch + in + out` at the pair's `lora_a`
      position and None at its `lora_b` position.
    nu: Adam's second moment, laid out like `mu` (the parameters' dtype).
  """

  count: chex.Array
  mu: Any
  nu: Any


def _eig_grams(bb, aa, damping):
  """Damped eigendecompositions of `B^T B` and `A A^T`: one `eigh` for both stacks.

  Returns `(U, lam, V, sig)` with `ridge(B^T B) = U diag(lam) U^T` and
  `ridge(A A^T) = V diag(sig) V^T`, `ridge(S) = S + (damping mean(diag S) + tiny) I`
  (eigenvalues clamped at 0 before the shift, against rounding).
  """
  k = bb.shape[0]
  w, v = linalg.eigh(jnp.concatenate([bb, aa]))
  shift = lambda s: (damping * jnp.mean(jnp.diagonal(s, axis1=-2, axis2=-1), -1)
                     + linalg.TINY)[..., None]
  lam = jnp.maximum(w[:k], 0.0) + shift(bb)
  sig = jnp.maximum(w[k:], 0.0) + shift(aa)
  return v[:k], lam, v[k:], sig


def _inverse(u, lam):
  return linalg.mm(u * (1.0 / lam)[..., None, :], linalg.mT(u))


def _sylvester(u, lam, v, sig, c):
  """`X` with `U diag(lam) U^T X + X V diag(sig) V^T = C`, through the eigenbases."""
  rotated = linalg.mm(linalg.mT(u), c, v) / (lam[..., :, None] + sig[..., None, :])
  return linalg.mm(u, rotated, linalg.mT(v))


def _coefficients(u, lam, v, sig, bt_gb, m, s):
  """The r x r maps of the LoRA-Pro closed form for gradients with `M = g_A A^T`.

  With `S_B^-1 = U diag(1/lam) U^T`, `S_A^-1 = V diag(1/sig) V^T` and `X` solving
  `S_B X + X S_A = -(1/s^2) S_B^-1 M`:
  `g^A = [X, S_B^-1 / s^2] [A; g_A]` and
  `g^B = [B, g_B] [-(S_B^-1 B^T g_B S_A^-1 / s^2 + X); S_A^-1 / s^2]`.
  """
  s2 = (s * s)[..., None, None]
  sb_inv, sa_inv = _inverse(u, lam), _inverse(v, sig)
  x = _sylvester(u, lam, v, sig, -linalg.mm(sb_inv, m) / s2)
  fc = jnp.concatenate([x, sb_inv / s2], axis=-1)
  fr = jnp.concatenate([-(linalg.mm(sb_inv, bt_gb, sa_inv) / s2 + x), sa_inv / s2], axis=-2)
  return fc, fr


def _projection(u, lam, v, sig, bt_gb, s):
  """The same maps with `X = 0` (the equivalent gradient `s(B g^A + g^B A)` needs no X)."""
  s2 = (s * s)[..., None, None]
  sb_inv, sa_inv = _inverse(u, lam), _inverse(v, sig)
  zero = jnp.zeros_like(sb_inv)
  fc = jnp.concatenate([zero, sb_inv / s2], axis=-1)
  fr = jnp.concatenate([-linalg.mm(sb_inv, bt_gb, sa_inv) / s2, sa_inv / s2], axis=-2)
  return fc, fr


def scale_by_lora_pro(
    *,
    lora_scale: pairing.LoRAScaleOrFn = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mode: str = "efficient",
    damping: float = 1e-6,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""Rescales LoRA factor gradients by the LoRA-Pro adjustment, then Adam.

  For each pair (paper layout `W = W0 + s B A`, `B = lora_b^T` (m x r),
  `A = lora_a^T` (r x n), gradients `g_A = s B^T G`, `g_B = s G A^T`), LoRA-Pro picks
  the factor gradients `(g^A, g^B)` whose equivalent W-gradient `s(B g^A + g^B A)` is
  closest to the full gradient `G`, and among those the one closest to `(g_A, g_B)`:

  .. math::
    g^A &= \tfrac{1}{s^2} S_B^{-1} g_A + X A, \qquad
    g^B = \tfrac{1}{s^2} (I - B S_B^{-1} B^T)\, g_B\, S_A^{-1} - B X, \\
    S_B X + X S_A &= -\tfrac{1}{s^2} S_B^{-1} g_A A^T,
    \qquad S_B = B^T B,\ S_A = A A^T.

  The Sylvester equation is solved through the eigendecompositions
  `S_B = U diag(lam) U^T`, `S_A = V diag(sig) V^T`:
  `X = U [(U^T C V) / (lam_i + sig_j)] V^T`, in float32 (or the parameters' wider dtype),
  with both Grams damped as `ridge(S) = S + (damping mean(diag S) + tiny) I` (the same
  eigenbases give `S_B^-1` and `S_A^-1`). One batched `eigh` per step holds both Grams
  of every pair of a rank. At `B = 0` (LoRA init) `g^A = 0` and `X = 0`.

  `mode="efficient"` (the default, as in the authors' code) applies Adam to
  `(g^A, g^B)`: state like the factors. `mode="full"` keeps Adam's moments of the
  equivalent W-gradient `\tilde G = s(B g^A + g^B A)` (the projection of `G` onto the
  tangent space at `BA`), takes Adam's direction `D` there and maps it back with the same
  closed form (`g_A = s B^T D`, `g_B = s D A^T`, then `g^A`, `g^B`): **this mode
  allocates and stores two m x n arrays per pair**, more than full fine-tuning's
  optimizer state; it exists as the memory-hungry reference point of the benchmarks,
  not for training large models.

  Args:
    lora_scale: the model's LoRA scale `s` (`alpha / r`), or `(parent key path) -> s`.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to the root of the second moment.
    mode: "efficient" (Adam on the adjusted factor gradients) or "full" (Adam on the
      m x n equivalent gradient; memory-hungry).
    damping: relative ridge of the two Gram matrices (the original code adds an absolute
      1e-8 before a pseudo-inverse).
    dimension_numbers: the batch-axis layout of the pairs (see `LoRADimensionNumbers`).
    mu_dtype: dtype of the first moment; None uses the parameter's dtype.

  Returns:
    An `optax.GradientTransformation` whose `update` needs `params`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adaprelora_jax as apl
    >>> params = {'lora_a': jnp.ones((8, 2)) + jnp.eye(8, 2), 'lora_b': jnp.zeros((2, 4))}
    >>> tx = apl.scale_by_lora_pro(lora_scale=2.0)
    >>> state = tx.init(params)
    >>> grads = {'lora_a': jnp.zeros((8, 2)), 'lora_b': jnp.ones((2, 4))}
    >>> updates, state = tx.update(grads, state, params)
    >>> bool(jnp.all(updates['lora_a'] == 0)), bool(jnp.all(jnp.isfinite(updates['lora_b'])))
    (True, True)

  References:
    Wang, Liang, Zhang, Tan, *LoRA-Pro: Are Low-Rank Adapters Properly Optimized?*,
    ICLR 2025 (arXiv:2407.18242).
  """
  if mode not in _MODES:
    raise ValueError(f"lora_pro: mode must be one of {_MODES}, got {mode!r}.")
  full = mode == "full"
  who = "lora_pro"
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

  def init_fn(params):
    layouts, treedef = pairing.pair_layouts(params, dimension_numbers, who=who)
    leaves = treedef.flatten_up_to(pairing.unwrap(params))
    specs = pairing.declared_specs(params)
    if not full:
      mu = state_utils.zeros_like_each(leaves, specs, mu_dtype)
      nu = state_utils.zeros_like_each(leaves, specs)
    else:
      mu, nu = [None] * len(leaves), [None] * len(leaves)
      for lay in layouts:
        a, b = leaves[lay.a_index], leaves[lay.b_index]
        dt = jnp.result_type(a.dtype, b.dtype)
        mu[lay.a_index] = state_utils.zeros_outer(a, b, lay.nb, mu_dtype or dt,
                                                   specs[lay.a_index], specs[lay.b_index])
        nu[lay.a_index] = state_utils.zeros_outer(a, b, lay.nb, dt, specs[lay.a_index],
                                                   specs[lay.b_index])
    return LoRAProState(count=jnp.zeros([], jnp.int32), mu=treedef.unflatten(mu),
                        nu=treedef.unflatten(nu))

  def update_fn(updates, state, params=None):
    paired.require_params(params, "scale_by_lora_pro")
    layouts, treedef = pairing.pair_layouts(params, dimension_numbers, who=who)
    params = treedef.flatten_up_to(pairing.unwrap(params))
    grads = paired.checked_grads(treedef, updates, params, "lora_pro")
    mu = treedef.flatten_up_to(state.mu)
    nu = treedef.flatten_up_to(state.nu)
    scales = pairing.resolve_lora_scales(lora_scale, layouts)
    count = optax.safe_increment(state.count)
    dts = [paired.compute_dtype(params[lay.a_index], params[lay.b_index]) for lay in layouts]
    groups = [(lay.rank, dt) for lay, dt in zip(layouts, dts)]
    batch_shapes = [lay.batch_shape for lay in layouts]

    # 1. Grams and the one eigendecomposition per step; the efficient mode's maps.
    cast = []
    for lay, dt in zip(layouts, dts):
      a, b = params[lay.a_index].astype(dt), params[lay.b_index].astype(dt)
      ga, gb = grads[lay.a_index].astype(dt), grads[lay.b_index].astype(dt)
      cast.append((a, b, ga, gb, ops.gram_row(lay, b), ops.gram_col(lay, a),
                   ops.gram_row(lay, b, gb), ops.gram_col(lay, ga, a)))

    def first(bb, aa, bt_gb, m, s, damping):
      eig = _eig_grams(bb, aa, damping)
      maps = _projection(*eig, bt_gb, s) if full else _coefficients(*eig, bt_gb, m, s)
      return eig, maps

    stage1 = linalg.map_stacked(
        first, batch_shapes, groups, *zip(*[c[4:] for c in cast]),
        scales, [damping] * len(layouts))

    out = [None] * len(grads)
    new_mu, new_nu = list(mu), list(nu)
    if not full:
      for lay, (a, b, ga, gb, *_), (_, (fc, fr)) in zip(layouts, cast, stage1):
        adjusted = {lay.a_index: ops.combine_col(lay, a, ga, fc),
                    lay.b_index: ops.combine_row(lay, b, gb, fr)}
        for idx, g in adjusted.items():
          d, new_mu[idx], new_nu[idx] = paired.adam_moments(
              g, mu[idx], nu[idx], count, b1, b2, eps)
          out[idx] = d.astype(params[idx].dtype)
    else:
      # 2. Adam on the m x n equivalent gradient, mapped back through the factors.
      back = []
      for lay, s, (a, b, ga, gb, *_), (_, (fc, fr)) in zip(layouts, scales, cast, stage1):
        g_a = ops.combine_col(lay, a, ga, fc)  # X = 0: the projection part only.
        g_b = ops.combine_row(lay, b, gb, fr)
        s = jnp.asarray(s, a.dtype)
        w_grad = s * (ops.outer(lay, g_a, b) + ops.outer(lay, a, g_b))
        i = lay.a_index
        d, new_mu[i], new_nu[i] = paired.adam_moments(w_grad, mu[i], nu[i], count, b1, b2, eps)
        da = s * ops.full_times_row(lay, d, b, like=a)  # s B^T D
        db = s * ops.col_times_full(lay, a, d, like=b)  # s D A^T
        back.append((da, db, ops.gram_row(lay, b, db), ops.gram_col(lay, da, a)))
      stage2 = linalg.map_stacked(
          _coefficients, batch_shapes, groups, *zip(*[e for e, _ in stage1]),
          [x[2] for x in back], [x[3] for x in back], scales)
      for lay, (a, b, *_), (da, db, *_), (fc, fr) in zip(layouts, cast, back, stage2):
        out[lay.a_index] = ops.combine_col(lay, a, da, fc).astype(params[lay.a_index].dtype)
        out[lay.b_index] = ops.combine_row(lay, b, db, fr).astype(params[lay.b_index].dtype)
    new_state = LoRAProState(count=count, mu=treedef.unflatten(new_mu),
                             nu=treedef.unflatten(new_nu))
    return jax.tree.unflatten(jax.tree.structure(updates), out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def lora_pro(
    learning_rate: optax.ScalarOrSchedule,
    *,
    lora_scale: pairing.LoRAScaleOrFn = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mode: str = "efficient",
    damping: float = 1e-6,
    mask: Any | None = None,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  """LoRA-Pro with AdamW: `scale_by_lora_pro`, decoupled weight decay, learning rate.

  `optax.chain(scale_by_lora_pro(...), optax.add_decayed_weights(weight_decay, mask),
  optax.scale_by_learning_rate(learning_rate))`; see `scale_by_lora_pro` for the math.
  `mode="full"` is the memory-hungry reference: it keeps Adam's moments of every
  pair's m x n equivalent W-gradient (registry name `lora_pro_full`). Weight decay here
  decays the factors; the original full mode also decays the frozen base weight, which
  is outside the optimizer.

  Args:
    learning_rate: a scalar or an optax schedule.
    lora_scale: the model's LoRA scale `s` (`alpha / r`), or `(parent key path) -> s`.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to the root of the second moment.
    weight_decay: decoupled weight decay on the factors.
    mode: "efficient" or "full" (m x n Adam state per pair: memory-hungry).
    damping: relative ridge of the two r x r Gram matrices.
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
    >>> tx = apl.lora_pro(0.1)
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
    Wang, Liang, Zhang, Tan, *LoRA-Pro: Are Low-Rank Adapters Properly Optimized?*,
    ICLR 2025 (arXiv:2407.18242).
  """
  return optax.chain(
      scale_by_lora_pro(lora_scale=lora_scale, b1=b1, b2=b2, eps=eps, mode=mode,
                        damping=damping, dimension_numbers=dimension_numbers,
                        mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
