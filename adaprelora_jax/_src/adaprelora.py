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


def _tangent_forms(gr, gc, damping):
  """r x r quadratic forms giving the row/column mean squares of the tangent gradient.

  With `Gr = [B, g_B]^T [B, g_B]`, `Gc = [A; g_A] [A; g_A]^T` (2r x 2r), the projection
  `G_T = B Z1 + Y1 A` of `G` onto the tangent space at `BA` is, times `s^2`,
  `[B, g_B] Tr Tc [A; g_A]` with `Tc = [[0, Sb^-1], [I, 0]]` (so `Tc [A; g_A] = [Z1; A]`)
  and `Tr = [[I, -Sb^-1 B^T g_B Sa^-1], [0, Sa^-1]]` (so `[B, g_B] Tr = [B, Y1]`), where
  `Sb = ridge(B^T B)`, `Sa = ridge(A A^T)`. Hence `s^2 ||G_T[i, :]||^2 = x_i Kr x_i^T`
  with `Kr = Tr Tc Gc Tc^T Tr^T`, and column-wise `Kc = Tc^T Tr^T Gr Tr Tc`.
  """
  r = gr.shape[-1] // 2
  inv = linalg.spd_inverse(jnp.stack(
      [linalg.ridge(gr[..., :r, :r], damping), linalg.ridge(gc[..., :r, :r], damping)]))
  sbi, sai = inv[0], inv[1]
  eye = jnp.broadcast_to(jnp.eye(r, dtype=gr.dtype), sbi.shape)
  zero = jnp.zeros_like(sbi)
  tc = jnp.block([[zero, sbi], [eye, zero]])
  tr = jnp.block([[eye, -linalg.mm(sbi, gr[..., :r, r:], sai)], [zero, sai]])
  # Association order matters at B = 0 (Sb^-1 ~ 1/TINY against exact zeros).
  kr = linalg.mm(tr, linalg.mm(linalg.mm(tc, gc), linalg.mT(tc)), linalg.mT(tr))
  kc = linalg.mm(linalg.mT(tc), linalg.mm(linalg.mm(linalg.mT(tr), gr), tr), tc)
  return kr, kc


def _factor_solve(bpb, aqa, btb, b_gp, gp_gp, aat, a_gq, gq_gq, m, damping, clip):
  """r x r coefficients of the balanced factor solve, and `||U||^2` for clipping.

  Times `s^2`: `dA = [C2, C1] [A; g_A Q^-1]`, `dB = [B, P^-1 g_B] [C2; D1]` with
  `C1 = S_B^-1`, `D1 = S_A^-1`, `C2 = -S_B^-1 M S_A^-1 / 2`, `M = g_A A^T`,
  `S_B = ridge(B^T P B)`, `S_A = ridge(A Q A^T)`. `||s(B dA + dB A)||^2` follows from the
  Grams of `[B, P^-1 g_B]` (`btb`, `b_gp`, `gp_gp`) and of `[A; g_A Q^-1]` (`aat`,
  `a_gq`, `gq_gq`).

  Returns:
    `fc` (r x 2r), `fr` (2r x r), and `s^2 ||U||^2` per pair (computed before clipping;
    ones when `clip` is False).
  """
  r = bpb.shape[-1]
  inv = linalg.spd_inverse(jnp.stack(
      [linalg.ridge(bpb, damping), linalg.ridge(aqa, damping)]))
  sbi, sai = inv[0], inv[1]
  c2 = -0.5 * linalg.mm(linalg.mm(sbi, m), sai)
  fc = jnp.concatenate([c2, sbi], axis=-1)
  fr = jnp.concatenate([c2, sai], axis=-2)
  if not clip:
    return fc, fr, jnp.ones(bpb.shape[:-2], bpb.dtype)
  gr2 = jnp.block([[btb, b_gp], [linalg.mT(b_gp), gp_gp]])
  gc2 = jnp.block([[aat, a_gq], [linalg.mT(a_gq), gq_gq]])
  da_da = linalg.mm(linalg.mm(fc, gc2), linalg.mT(fc))
  a_da = linalg.mm(gc2[..., :r, :], linalg.mT(fc))
  db_db = linalg.mm(linalg.mm(linalg.mT(fr), gr2), fr)
  b_db = linalg.mm(gr2[..., :r, :], fr)
  trace = lambda x, y: jnp.sum(x * linalg.mT(y), axis=(-2, -1))  # tr(x y)
  sq = trace(btb, da_da) + 2.0 * trace(b_db, a_da) + trace(db_db, aat)
  return fc, fr, sq


def scale_by_adaprelora(
    *,
    lora_scale: pairing.LoRAScaleOrFn = 1.0,
    b1: float | None = 0.9,
    decay_rate: float = 0.8,
    eps: float = 1e-30,
    damping: float = 1e-6,
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
  everything goes through `r x r` and `2r x 2r` Gram matrices. State is `O(m + n)` per
  pair, plus the momentum.

  Args:
    lora_scale: the LoRA scale `s` of the model (`alpha / r`; 1 for `nnx.LoRA`), or a
      callable `(parent key path) -> s` for per-module scales. A wrong scale `s'`
      multiplies the learning rate by `s / s'`.
    b1: momentum decay; None disables momentum (and stores none).
    decay_rate: Adafactor's second-moment decay exponent.
    eps: added to the mean squares.
    damping: relative ridge of every r x r solve.
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
    grads = paired.flatten_like(treedef, updates, "updates")
    params = treedef.flatten_up_to(pairing.unwrap(params))
    nu = treedef.flatten_up_to(state.nu)
    mu = treedef.flatten_up_to(state.mu) if b1 is not None else None
    scales = pairing.resolve_lora_scales(lora_scale, layouts)
    count = optax.safe_increment(state.count)
    groups = [(lay.rank, paired.compute_dtype(params[lay.a_index], params[lay.b_index]))
              for lay in layouts]
    batch_shapes = [lay.batch_shape for lay in layouts]

    # 1. Gram matrices of [B, g_B] and [A; g_A].
    first = []
    for lay, (_, dt) in zip(layouts, groups):
      a, b = params[lay.a_index].astype(dt), params[lay.b_index].astype(dt)
      ga, gb = grads[lay.a_index].astype(dt), grads[lay.b_index].astype(dt)
      first.append((a, b, ga, gb, ops.block_gram_row(lay, b, gb),
                    ops.block_gram_col(lay, a, ga)))
    forms = linalg.map_stacked(
        _tangent_forms, batch_shapes, groups,
        [f[4] for f in first], [f[5] for f in first], [damping] * len(layouts))

    # 2. Adafactor statistics of G_T, the preconditioner, and the weighted Grams.
    second = []
    for lay, (_, dt), s, f, (kr, kc) in zip(layouts, groups, scales, first, forms):
      a, b, ga, gb, gr, gc = f
      s2 = jnp.asarray(s, dt) ** 2
      t = count.astype(dt)
      beta2 = 1.0 - t ** (-jnp.asarray(decay_rate, dt))
      rho = jnp.maximum(ops.quad_row(lay, b, gb, kr) / (s2 * lay.n), 0.0) + eps
      gamma = jnp.maximum(ops.quad_col(lay, a, ga, kc) / (s2 * lay.m), 0.0) + eps
      row = beta2 * nu[lay.b_index] + (1.0 - beta2) * rho
      col = beta2 * nu[lay.a_index] + (1.0 - beta2) * gamma
      ratio = row / jnp.mean(row, axis=lay.out_axes, keepdims=True)
      p, sqrt_p = jnp.sqrt(ratio), ratio ** 0.25  # P = diag(sqrt(R / mean R))
      q, sqrt_q = jnp.sqrt(col), col ** 0.25  # Q = diag(sqrt(C))
      gb_p = gb / ops.row_stat(lay, p)  # P^-1 g_B
      ga_q = ga / ops.col_stat(lay, q)  # g_A Q^-1
      r = lay.rank
      second.append((a, b, ga_q, gb_p, row, col,
                     ops.gram_row(lay, b * ops.row_stat(lay, sqrt_p)),
                     ops.gram_col(lay, a * ops.col_stat(lay, sqrt_q)),
                     gr[..., :r, :r], ops.gram_row(lay, b, gb_p), ops.gram_row(lay, gb_p),
                     gc[..., :r, :r], ops.gram_col(lay, a, ga_q), ops.gram_col(lay, ga_q),
                     gc[..., r:, :r]))
    solves = linalg.map_stacked(
        lambda *args: _factor_solve(*args, clip), batch_shapes, groups,
        *zip(*[x[6:] for x in second]), [damping] * len(layouts))

    # 3. Clip, apply momentum, write the update in Flax layout.
    out = [None] * len(grads)
    new_nu = list(nu)
    new_mu = list(mu) if mu is not None else None
    for lay, (_, dt), s, (a, b, ga_q, gb_p, row, col, *_), (fc, fr, sq) in zip(
        layouts, groups, scales, second, solves):
      s2 = jnp.asarray(s, dt) ** 2
      factor = 1.0 / s2
      if clip:
        rms = jnp.sqrt(jnp.maximum(sq, 0.0) / (s2 * lay.m * lay.n))
        factor = factor / jnp.maximum(1.0, rms / clipping_threshold)
      factor = sharding.match_batch(factor, b, lay.nb)
      da = ops.combine_col(lay, a, ga_q, fc) * ops.per_pair(
          lay, factor, len(lay.in_shape) + 1)
      db = ops.combine_row(lay, b, gb_p, fr) * ops.per_pair(
          lay, factor, len(lay.out_shape) + 1)
      new_nu[lay.a_index], new_nu[lay.b_index] = col, row
      for idx, d in ((lay.a_index, da), (lay.b_index, db)):
        if b1 is not None:
          m = b1 * mu[idx].astype(dt) + (1.0 - b1) * d
          new_mu[idx] = m.astype(mu[idx].dtype)
          d = m / (1.0 - jnp.asarray(b1, dt) ** count.astype(dt))
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
    damping: float = 1e-6,
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
    damping: relative ridge of the r x r solves.
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
