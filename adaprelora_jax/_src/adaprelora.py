"""AdaPreLoRA: Adafactor-preconditioned LoRA (Liu, Bian, Cai, arXiv:2605.08734)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adaprelora_jax._src import factor_ops as ops
from adaprelora_jax._src import linalg
from adaprelora_jax._src import paired
from adaprelora_jax._src import pairing
from adaprelora_jax._src import sharding
from adaprelora_jax._src import state_utils

class AdaPreLoRAState(NamedTuple):
  """State of `scale_by_adaprelora`.

  Attributes:
    count: the number of steps taken (int32).
    mu: the momentum of each factor, shaped like the parameters (`mu_dtype`), or None
      when `b1` is None.
    nu: the Adafactor statistics, a tree like the parameters whose `lora_b` leaf holds
      the row statistics `R` (batch + out axes) and whose `lora_a` leaf holds the column
      statistics `C` (batch + in axes), in float32 (float64 under x64 parameters).
  """

  count: chex.Array
  mu: Any
  nu: Any


# The default relative ridge by the precision of the factors and their gradients (see
# `default_damping` and docs/optimizers.md, "Rank-deficient factors", for the measurements).
DAMPING_BY_PRECISION = (
    (1e-15, 1e-6),  # float64: the SPEC's value; the ridged problem has condition ~ r / 1e-6.
    (2e-7, 1e-2),  # float32
    (1.0, 1e-1),  # bfloat16, float16
)


def default_damping(*dtypes) -> float:
  """The relative ridge `damping=None` means for factors and gradients of these dtypes.

  A relative ridge `d` bounds the condition of every r x r solve by about `r / d`, and
  the rounding of the least precise input (`eps` of its dtype) in the gradient's
  components outside the factors' range is amplified by up to `1 / d`: so `d` must
  grow as the precision falls. float64 keeps the SPEC's 1e-6.
  """
  eps = max(float(jnp.finfo(dt).eps) for dt in dtypes)
  return next(d for bound, d in DAMPING_BY_PRECISION if eps <= bound)


class _Pair(NamedTuple):
  """One pair's factors and gradients in the compute dtype (Flax layout), and its settings."""

  a: jax.Array  # lora_a = A^T, batch + in + (r,)
  b: jax.Array  # lora_b = B^T, batch + (r,) + out
  ga: jax.Array
  gb: jax.Array
  s2: jax.Array  # lora_scale ** 2
  damping: Any


class _FirstGrams(NamedTuple):
  """r x r Grams of the first pass over the factors and gradients."""

  btb: jax.Array  # B^T B
  bt_gb: jax.Array  # B^T g_B
  aat: jax.Array  # A A^T
  ga_at: jax.Array  # M = g_A A^T


class _Preconditioned(NamedTuple):
  """The new Adafactor statistics and the preconditioned gradients of one pair."""

  row: jax.Array  # R
  col: jax.Array  # C
  gb_p: jax.Array  # P^-1 g_B
  ga_q: jax.Array  # g_A Q^-1
  bpb: jax.Array  # B^T P B
  aqa: jax.Array  # A Q A^T


class _TangentInverses(NamedTuple):
  """`Sb^-1 = ridge(B^T B)^-1` and `Sa^-1 = ridge(A A^T)^-1`."""

  sbi: jax.Array
  sai: jax.Array


def _tangent_inverses(btb, aat, damping) -> _TangentInverses:
  """The r x r inverses of the tangent projection: one batched inverse for both."""
  inv = linalg.spd_inverse(jnp.stack([linalg.ridge(btb, damping), linalg.ridge(aat, damping)]))
  return _TangentInverses(sbi=inv[0], sai=inv[1])


def _tangent_statistics(lay, pair: _Pair, grams: _FirstGrams, inv: _TangentInverses):
  """`rho = mean_j G_T^2` (batch + out) and `gamma = mean_i G_T^2` (batch + in).

  `s G_T = s (B Z1 + Y1 A) = W1 g_A + U1 V1` with the factor-sized `W1 = B Sb^-1`,
  `U1 = g_B - W1 B^T g_B` (m x r) and `V1 = Sa^-1 A` (r x n), `Sb = ridge(B^T B)`,
  `Sa = ridge(A A^T)`. `G_T` is never formed: `||s G_T[i, :]||^2 = [W1, U1]_i K
  [W1, U1]_i^T` with `K` the Gram of `[g_A; V1]`, and column-wise with the Gram of
  `[W1, U1]`. Each inverse is applied to the factor it belongs with, so the directions
  the ridge dominates are annihilated there (`B Sb^-1` is bounded, and exactly 0 at
  `B = 0`), instead of meeting rounding-level Gram entries in a 2r x 2r product (the
  cancellation that made rank-deficient `B` return NaN). The Grams are taken of the
  explicit `W1`, `U1`, `V1`: r x r shortcuts such as `Sb^-1 B^T B Sb^-1` for `W1^T W1`
  carry the Gram's rounding through `Sb^-1` twice (float64 steps on exactly
  rank-deficient `A` measured 2e-6 off the dense formulas that way, 9e-7 this way).
  """
  w1 = ops.apply_row(lay, inv.sbi, pair.b)  # B Sb^-1, row side
  # (I - B Sb^-1 B^T) g_B as g_B - (B Sb^-1) (B^T g_B), through the bounded W1
  # (`B (Sb^-1 B^T g_B)` measured 2x further from the float64 dense formulas).
  u1 = pair.gb - ops.apply_row(lay, linalg.mT(grams.bt_gb), w1)
  v1 = ops.apply_col(lay, inv.sai, pair.a)  # Sa^-1 A, column side
  k_rows = ops.symmetric_blocks(ops.gram_col(lay, pair.ga), ops.gram_col(lay, pair.ga, v1),
                                ops.gram_col(lay, v1))
  k_cols = ops.symmetric_blocks(ops.gram_row(lay, w1), ops.gram_row(lay, w1, u1),
                                ops.gram_row(lay, u1))
  rho = ops.quad_row(lay, w1, u1, k_rows) / (pair.s2 * lay.n)
  gamma = ops.quad_col(lay, pair.ga, v1, k_cols) / (pair.s2 * lay.m)
  return jnp.maximum(rho, 0.0), jnp.maximum(gamma, 0.0)


def _balanced_maps(bpb, aqa, ga_at, damping):
  """The r x 2r and 2r x r coefficients of the balanced factor solve (times `s^2`).

  `dA = [C2, S_B^-1] [A; g_A Q^-1]`, `dB = [B, P^-1 g_B] [C2; S_A^-1]` with
  `C2 = -S_B^-1 M S_A^-1 / 2`, `S_B = ridge(B^T P B)`, `S_A = ridge(A Q A^T)`.
  """
  inv = linalg.spd_inverse(jnp.stack(
      [linalg.ridge(bpb, damping), linalg.ridge(aqa, damping)]))
  sbi, sai = inv[0], inv[1]
  c2 = -0.5 * linalg.mm(sbi, ga_at, sai)
  return jnp.concatenate([c2, sbi], axis=-1), jnp.concatenate([c2, sai], axis=-2)


def _update_sq_norm(lay, pair: _Pair, grams: _FirstGrams, da, db):
  """`||B dA + dB A||_F^2` per pair from the Grams of the explicit factor steps."""
  trace = lambda x, y: jnp.sum(x * linalg.mT(y), axis=(-2, -1))  # tr(x y)
  return (trace(grams.btb, ops.gram_col(lay, da))
          + 2.0 * trace(ops.gram_row(lay, pair.b, db), ops.gram_col(lay, pair.a, da))
          + trace(ops.gram_row(lay, db), grams.aat))


def scale_by_adaprelora(
    *,
    lora_scale: pairing.LoRAScaleOrFn = 1.0,
    b1: float | None = 0.9,
    decay_rate: float = 0.8,
    eps: float = 1e-30,
    damping: float | None = None,
    clipping_threshold: float | None = 1.0,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""Rescales LoRA factor gradients by the AdaPreLoRA direction.

  For each pair (paper layout `W = W0 + s B A`, `B = lora_b^T`, `A = lora_a^T`, gradients
  `g_A = s B^T G`, `g_B = s G A^T`), with `t = count + 1`:

  .. math::
    G_T &= P_B G + (I - P_B) G P_A
      \quad\text{(projection onto the tangent space at } BA\text{)} \\
    R &\leftarrow \beta_2 R + (1-\beta_2)\,\mathrm{mean}_j G_T^2 + \epsilon, \quad
    C \leftarrow \beta_2 C + (1-\beta_2)\,\mathrm{mean}_i G_T^2 + \epsilon, \quad
    \beta_2 = 1 - t^{-\text{decay\_rate}} \\
    P &= \mathrm{diag}(\sqrt{R/\bar R}), \quad Q = \mathrm{diag}(\sqrt{C}), \quad
    H[X] = P X Q \\
    dA &= S_B^{-1}(g_A Q^{-1} - \tfrac12 M S_A^{-1} A)/s^2, \quad
    dB = (P^{-1} g_B - \tfrac12 B S_B^{-1} M) S_A^{-1}/s^2

  with `S_B = ridge(B^T P B)`, `S_A = ridge(A Q A^T)`, `M = g_A A^T` and
  `ridge(S) = S + (damping mean(diag S) + tiny) I`. `(dA, dB)` solves
  `J^* H J d = J^* G` (so `s(B dA + dB A)` is the `H`-orthogonal projection of
  `H^{-1} G` onto the tangent space) and, of all solutions, minimises the imbalance
  `||s B dA - s dB A||_H`. Then `U = s(B dA + dB A)` is clipped to RMS
  `clipping_threshold` (Adafactor), momentum `b1` is applied with bias correction, and
  `(dA^T, dB^T)` is returned for `(lora_a, lora_b)`. Nothing of size `m x n` is formed:
  everything goes through factor-sized arrays (`B Sb^-1`, `(I - P_B) g_B`, `Sa^-1 A`,
  the steps) and their `r x r` / `2r x 2r` Gram matrices. State is `O(m + n)` per pair,
  plus the momentum.

  Args:
    lora_scale: the LoRA scale `s` of the model (`alpha / r`; 1 for `nnx.LoRA`), or a
      callable `(parent key path) -> s` for per-module scales. A wrong scale `s'`
      multiplies the learning rate by `s / s'`.
    b1: momentum decay; None disables momentum (and stores none).
    decay_rate: Adafactor's second-moment decay exponent.
    eps: added to the mean squares.
    damping: relative ridge of every r x r solve; None (the default) picks it by the
      least precise dtype of the factors and gradients (`default_damping`: 1e-6 for
      float64, 1e-2 for float32, 1e-1 for bfloat16/float16), since float32 rounding in
      the directions a rank-deficient factor lacks is amplified by up to `1 / damping`.
    clipping_threshold: the RMS above which the W-space update is scaled down; None
      disables clipping.
    dimension_numbers: the number of leading batch axes of each pair: None (lora_a's
      ndim - 2), a `LoRADimensionNumbers`, a pytree prefix of them, or a callable of the
      parameters returning one of those.
    mu_dtype: dtype of the momentum; None uses the parameter's dtype.

  Returns:
    An `optax.GradientTransformation` whose `update` needs `params`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adaprelora_jax as apl
    >>> params = {'lora_a': jnp.ones((8, 2)), 'lora_b': jnp.zeros((2, 4))}
    >>> tx = apl.scale_by_adaprelora(lora_scale=2.0)
    >>> state = tx.init(params)
    >>> grads = {'lora_a': jnp.zeros((8, 2)), 'lora_b': jnp.ones((2, 4))}
    >>> updates, state = tx.update(grads, state, params)
    >>> jax.tree.map(jnp.shape, updates)
    {'lora_a': (8, 2), 'lora_b': (2, 4)}
    >>> bool(jnp.all(updates['lora_a'] == 0))  # B = 0 (LoRA init): only B moves.
    True

  References:
    Liu, Bian, Cai, *AdaPreLoRA: Adafactor Preconditioned Low-Rank Adaptation*,
    arXiv:2605.08734, 2026. Shazeer, Stern, *Adafactor*, ICML 2018.
  """
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
  clip = clipping_threshold is not None

  def init_fn(params):
    layouts, treedef = pairing.pair_layouts(params, dimension_numbers)
    leaves = treedef.flatten_up_to(pairing.unwrap(params))
    specs = pairing.declared_specs(params)
    nu = [None] * len(leaves)
    for lay in layouts:
      for idx, axis in ((lay.a_index, -1), (lay.b_index, lay.nb)):  # drop the rank axis
        x = leaves[idx]
        nu[idx] = state_utils.zeros_without_axis(
            x, axis % x.ndim, paired.compute_dtype(x), specs[idx])
    mu = None
    if b1 is not None:
      mu = treedef.unflatten(state_utils.zeros_like_each(leaves, specs, mu_dtype))
    return AdaPreLoRAState(count=jnp.zeros([], jnp.int32), mu=mu,
                           nu=treedef.unflatten(nu))

  def update_fn(updates, state, params=None):
    paired.require_params(params, "scale_by_adaprelora")
    layouts, treedef = pairing.pair_layouts(params, dimension_numbers)
    params = treedef.flatten_up_to(pairing.unwrap(params))
    grads = paired.checked_grads(treedef, updates, params, "adaprelora", cast=False)
    nu = treedef.flatten_up_to(state.nu)
    mu = treedef.flatten_up_to(state.mu) if b1 is not None else None
    scales = pairing.resolve_lora_scales(lora_scale, layouts)
    count = optax.safe_increment(state.count)
    pairs, groups = [], []
    for lay, s in zip(layouts, scales):
      ia, ib = lay.a_index, lay.b_index
      dt = paired.compute_dtype(params[ia], params[ib])
      d = damping if damping is not None else default_damping(
          params[ia].dtype, params[ib].dtype, grads[ia].dtype, grads[ib].dtype)
      pairs.append(_Pair(a=params[ia].astype(dt), b=params[ib].astype(dt),
                         ga=grads[ia].astype(dt), gb=grads[ib].astype(dt),
                         s2=jnp.asarray(s, dt) ** 2, damping=d))
      groups.append((lay.rank, dt))
    batch_shapes = [lay.batch_shape for lay in layouts]
    stacked = lambda fn, *args: linalg.map_stacked(fn, batch_shapes, groups, *args)

    # 1. Tangent statistics: first-pass Grams, W1, U1, V1, the row/column mean squares.
    grams = [_FirstGrams(btb=ops.gram_row(lay, p.b), bt_gb=ops.gram_row(lay, p.b, p.gb),
                         aat=ops.gram_col(lay, p.a), ga_at=ops.gram_col(lay, p.ga, p.a))
             for lay, p in zip(layouts, pairs)]
    inverses = stacked(_tangent_inverses, [g.btb for g in grams], [g.aat for g in grams],
                       [p.damping for p in pairs])

    # 2. Adafactor statistics, the preconditioner P, Q and the weighted Grams.
    pre = []
    for lay, p, g, inv in zip(layouts, pairs, grams, inverses):
      rho, gamma = _tangent_statistics(lay, p, g, inv)
      dt = p.a.dtype
      beta2 = 1.0 - count.astype(dt) ** (-jnp.asarray(decay_rate, dt))
      row = beta2 * nu[lay.b_index] + (1.0 - beta2) * (rho + eps)
      col = beta2 * nu[lay.a_index] + (1.0 - beta2) * (gamma + eps)
      ratio = row / jnp.mean(row, axis=lay.out_axes, keepdims=True)
      sqrt_p, sqrt_q = ratio ** 0.25, col ** 0.25  # P = diag(sqrt(R / mean R)), Q = diag(sqrt C)
      pre.append(_Preconditioned(
          row=row, col=col,
          gb_p=p.gb / ops.row_stat(lay, jnp.sqrt(ratio)),
          ga_q=p.ga / ops.col_stat(lay, jnp.sqrt(col)),
          bpb=ops.gram_row(lay, p.b * ops.row_stat(lay, sqrt_p)),
          aqa=ops.gram_col(lay, p.a * ops.col_stat(lay, sqrt_q))))

    # 3. The balanced factor solve, clipping, momentum, the update in Flax layout.
    coefs = stacked(_balanced_maps, [x.bpb for x in pre], [x.aqa for x in pre],
                    [g.ga_at for g in grams], [p.damping for p in pairs])
    out = [None] * len(grads)
    new_nu = list(nu)
    new_mu = list(mu) if mu is not None else None
    for lay, p, g, x, (fc, fr) in zip(layouts, pairs, grams, pre, coefs):
      da = ops.combine_col(lay, p.a, x.ga_q, fc)  # s^2 dA
      db = ops.combine_row(lay, p.b, x.gb_p, fr)  # s^2 dB
      factor = 1.0 / p.s2
      if clip:  # rms(U), U = s (B dA + dB A)
        sq = _update_sq_norm(lay, p, g, da, db)
        rms = jnp.sqrt(jnp.maximum(sq, 0.0) / (p.s2 * lay.m * lay.n))
        factor = factor / jnp.maximum(1.0, rms / clipping_threshold)
      factor = sharding.match_batch(jnp.broadcast_to(factor, lay.batch_shape), p.b, lay.nb)
      da = da * ops.per_pair(lay, factor, len(lay.in_shape) + 1)
      db = db * ops.per_pair(lay, factor, len(lay.out_shape) + 1)
      new_nu[lay.a_index], new_nu[lay.b_index] = x.col, x.row
      for idx, d in ((lay.a_index, da), (lay.b_index, db)):
        if b1 is not None:
          m = b1 * mu[idx].astype(d.dtype) + (1.0 - b1) * d
          new_mu[idx] = m.astype(mu[idx].dtype)
          d = m / (1.0 - jnp.asarray(b1, d.dtype) ** count.astype(d.dtype))
        out[idx] = d.astype(params[idx].dtype)
    new_state = AdaPreLoRAState(
        count=count,
        mu=treedef.unflatten(new_mu) if new_mu is not None else None,
        nu=treedef.unflatten(new_nu))
    return jax.tree.unflatten(jax.tree.structure(updates), out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def adaprelora(
    learning_rate: optax.ScalarOrSchedule,
    *,
    lora_scale: pairing.LoRAScaleOrFn = 1.0,
    b1: float | None = 0.9,
    decay_rate: float = 0.8,
    eps: float = 1e-30,
    damping: float | None = None,
    clipping_threshold: float | None = 1.0,
    weight_decay: float = 0.0,
    mask: Any | None = None,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  """The AdaPreLoRA optimizer: `scale_by_adaprelora`, weight decay, learning rate.

  `optax.chain(scale_by_adaprelora(...), optax.add_decayed_weights(weight_decay, mask),
  optax.scale_by_learning_rate(learning_rate))`; see `scale_by_adaprelora` for the
  math. Every keyword is spelled out, so `optax.inject_hyperparams(adaprelora)(...)`
  can schedule any numeric hyperparameter.

  Args:
    learning_rate: a scalar or an optax schedule.
    lora_scale: the model's LoRA scale (`alpha / r`), or `(parent key path) -> scale`.
    b1: momentum decay, or None for no momentum.
    decay_rate: Adafactor's second-moment decay exponent.
    eps: added to the mean squares.
    damping: relative ridge of the r x r solves; None picks it by precision (see
      `scale_by_adaprelora`).
    clipping_threshold: RMS threshold of the W-space update, None to disable.
    weight_decay: decoupled weight decay on the factors.
    mask: a tree or callable selecting which leaves weight decay applies to.
    dimension_numbers: the batch-axis layout of the pairs (see `LoRADimensionNumbers`).
    mu_dtype: dtype of the momentum; None uses the parameter's dtype.

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
    >>> tx = apl.adaprelora(0.1)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> first = loss(params)
    >>> for _ in range(100):
    ...   params, state = step(params, state)
    >>> bool(loss(params) < 0.05 * first)
    True
  """
  return optax.chain(
      scale_by_adaprelora(
          lora_scale=lora_scale, b1=b1, decay_rate=decay_rate, eps=eps, damping=damping,
          clipping_threshold=clipping_threshold, dimension_numbers=dimension_numbers,
          mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
