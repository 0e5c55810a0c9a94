"""LoRA-RITE: transformation-invariant adaptive preconditioning for LoRA (Yen et al., ICLR 2025)."""

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
from adaprelora_jax._src import sharding
from adaprelora_jax._src import state_utils


class LoRARITEState(NamedTuple):
  """State of `scale_by_lora_rite`. Every field but `count` is a tree like the parameters.

  Attributes:
    count: the number of steps taken (int32).
    mu: the first moment of each factor's preconditioned unmagnified gradient, in the
      other factor's current orthonormal basis; shaped like the factor (`mu_dtype`).
    nu: the second moment `V` of each factor's unmagnified gradient, `batch + (r, r)`,
      in float32 (float64 under x64 parameters).
    escape: the escaped mass `rho` of each factor, `batch` shaped (zeros unless
      `escape_mass`).
    prev: the factors at the previous step (the parameters' dtype), for the basis change.
    prev_inv: `L^-1` for the previous factors' Gram Cholesky factors `L`, `batch + (r, r)`.
  """

  count: chex.Array
  mu: Any
  nu: Any
  escape: Any
  prev: Any
  prev_inv: Any


def _bases(gram_a, gram_b, cross_a, cross_b, grad_a, grad_b, kprev_a, kprev_b, rtol):
  """Triangular factors, basis changes and unmagnified second moments of a pair.

  Factors `X_a = lora_a` (n x r), `X_b = lora_b^T` (m x r); `X = Q T` with
  `T = L^T`, `L = chol(X^T X)`, so `T^-1 = K^T` with `K = L^-1` and `Q = X K^T`.
  The state of factor a lives in b's basis and vice versa:
  `P_a = Q_b^T Q_b' = K_b (X_b^T X_b') K_b'^T`, and the unmagnified gradient
  `g_a T_b^-1` has the Gram `K_b (g_a^T g_a) K_b^T`.
  """
  k = linalg.tril_inverse(linalg.cholesky(jnp.stack([gram_a, gram_b]), rtol,
                                           drop_rounding=True))
  k_a, k_b = k[0], k[1]
  p_a = linalg.mm(k_b, cross_b, linalg.mT(kprev_b))
  p_b = linalg.mm(k_a, cross_a, linalg.mT(kprev_a))
  s_a = linalg.mm(k_b, grad_a, linalg.mT(k_b))
  s_b = linalg.mm(k_a, grad_b, linalg.mT(k_a))
  sq = (jnp.trace(s_a, axis1=-2, axis2=-1) + jnp.trace(s_b, axis1=-2, axis2=-1))
  return k_a, k_b, p_a, p_b, s_a, s_b, sq


def _second_moments(v_a, v_b, p_a, p_b, s_a, s_b, esc_a, esc_b, k_a, k_b, rows_a, rows_b,
                    clip2, clip, beta2, eps, escape_mass):
  """Carries `V` across the basis change, adds the new moment, preconditions (one eigh)."""
  sym = lambda x: 0.5 * (x + linalg.mT(x))
  t_a, t_b = sym(linalg.mm(p_a, v_a, linalg.mT(p_a))), sym(linalg.mm(p_b, v_b, linalg.mT(p_b)))
  b2 = beta2[..., None, None]
  new_a = sym(b2 * t_a + (1.0 - b2) * (clip2 / rows_a)[..., None, None] * s_a)
  new_b = sym(b2 * t_b + (1.0 - b2) * (clip2 / rows_b)[..., None, None] * s_b)
  k = v_a.shape[0]
  mats = [new_a, new_b] + ([t_a, t_b, v_a, v_b] if escape_mass else [])
  w, q = linalg.eigh(jnp.concatenate(mats))
  if escape_mass:
    lam_t, lam_old = w[2 * k:4 * k], w[4 * k:]
    trace = lambda x: jnp.trace(x, axis1=-2, axis2=-1)
    gap = jnp.maximum(jnp.max(lam_old - lam_t, axis=-1), 0.0)
    lost = jnp.maximum(jnp.concatenate([trace(v_a) - trace(t_a), trace(v_b) - trace(t_b)]),
                       0.0)
    esc = jnp.concatenate([beta2, beta2]) * (
        jnp.minimum(gap, lost) + jnp.concatenate([esc_a, esc_b]))
  else:
    esc = jnp.zeros((2 * k,), w.dtype)
  w, q = w[:2 * k], q[:2 * k]
  eps = jnp.concatenate([eps, eps])[:, None]
  inv_root = 1.0 / (jnp.sqrt(jnp.maximum(w, 0.0) + esc[:, None]) + eps)
  precond = linalg.mm(q * inv_root[..., None, :], linalg.mT(q))  # (V + rho I)^-1/2, eps outside.
  c = clip[..., None, None]
  # Maps of the gradients (Flax layout): S_a^T = (c W_a K_b) applied to lora_a's side.
  return (new_a, new_b, esc[:k], esc[k:], c * linalg.mm(precond[:k], k_b),
          c * linalg.mm(precond[k:], k_a))


def _corrected_decay(beta, t):
  """Adafactor's bias-corrected decay `beta (1 - beta^(t-1)) / (1 - beta^t)` (0 at t = 1)."""
  return beta * (1.0 - beta ** (t - 1.0)) / (1.0 - beta ** t)


def scale_by_lora_rite(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    clipping_threshold: float | None = 1.0,
    escape_mass: bool = False,
    rank_rtol: float = 1e-6,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""Rescales LoRA factor gradients by LoRA-RITE's transformation-invariant preconditioner.

  In the paper's notation `Z = A B^T` with `A = lora_a` (n x r) and `B = lora_b^T`
  (m x r) of one pair; the update of `A` is (that of `B` swaps the roles), with
  `t = count + 1` and the bias-corrected decays `beta_hat = beta (1 - beta^(t-1)) /
  (1 - beta^t)` (Adafactor's, so that no separate bias correction is needed):

  .. math::
    B_t &= Q_{B,t} T_{B,t} \quad (\text{QR, } T \text{ upper triangular}), \qquad
    \bar g_{A} = \nabla_A\, T_{B,t}^{-1} \quad (\text{unmagnified gradient}) \\
    P_{A} &= Q_{B,t}^T Q_{B,t-1} \quad (\text{basis change}) \\
    \bar V_{A,t} &= \hat\beta_2\, P_A \bar V_{A,t-1} P_A^T
      + (1-\hat\beta_2)\, \bar g_A^T \bar g_A / n \\
    \bar S_A &= \bar g_A\, (\bar V_{A,t} + \rho_{A,t} I)^{-1/2}
      \quad (\epsilon \text{ added to the root's eigenvalues}) \\
    \bar M_{A,t} &= \hat\beta_1\, \bar M_{A,t-1} P_A^T + (1-\hat\beta_1)\, \bar S_A, \qquad
    \Delta A = \bar M_{A,t}\, T_{B,t}^{-T} \quad (\text{rotate back}).

  The W-space update `ΔA B^T + A ΔB^T` is invariant under `A -> A S`, `B -> B S^-T` for
  any invertible `S` (the unmagnified quantities only rotate by an orthogonal matrix),
  so neither the scale nor the rotation of the factors matters.

  Choices, following the paper (Algorithm 1) and its authors' released implementation:

  * QR through the `r x r` Gram (Cholesky-QR): `T = chol(X^T X)^T`. Only the Grams
    `X^T X`, `X_t^T X_{t-1}` and `g^T g` are contracted over the (possibly sharded)
    long axes; the orthonormal `Q = X T^-1` is never formed, since
    `Q_t^T Q_{t-1} = T_t^{-T} X_t^T X_{t-1} T_{t-1}^{-1}`, so the state keeps the
    previous factors (`prev`) and `T^-1` (`prev_inv`) instead of the basis. The Gram
    squares the condition number: for factors with `cond(X) > ~1e3` in float32 the
    basis change loses accuracy (the current step's `T` stays backward stable).
  * Rank deficiency: a Cholesky pivot below `rank_rtol` times its column's squared norm,
    or below the Gram's rounding (`linalg.gram_rounding`: `10 r eps` times its largest
    diagonal entry), drops
    that direction (its row of `T^-1` is zero), as the authors' `pinv(T)` does. Without
    the rounding floor, a column that is small only because the factor is nearly
    rank-deficient passed on rounding alone, and its inverse overflowed (NaN).
    At LoRA init (`lora_b = 0`) the `lora_a` update is therefore exactly 0.
  * Second moments are means over the rows (`g^T g / n`), `eps` is added to the square
    roots of the eigenvalues (`1 / (sqrt(lambda + rho) + eps)`, eigenvalues clamped at
    0), and the inverse root uses one batched `eigh` per step for every `r x r`
    matrix of a rank (both factors of every pair, and with `escape_mass` the two
    spectra the escaped mass compares).
  * `clipping_threshold` clips the global norm of the unmagnified gradients (all pairs
    together) before the moments, as the authors' code (default 1.0); this is invariant,
    unlike clipping raw factor gradients.
  * `escape_mass`: the paper's compensation `rho` for second-moment mass lost by the
    projection, `rho_t = beta_hat_2 (rho_{t-1} + min(max_i(lambda_i(V) - lambda_i(P V
    P^T))_+, (tr V - tr P V P^T)_+))`. Off by default, as in the released code.
  * Not included: the released code's update skipping (zeroing a factor's update when
    its unmagnified gradient's RMS exceeds 1, scale-dependent) and update capping (off
    there); use `optax.apply_if_finite` / `optax.clip` around the transform instead.

  State per pair: the first moments and the previous factors (factor-sized, like Adam's
  two moments) plus `r x r` matrices.

  Args:
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to the square roots of the second moment's eigenvalues.
    clipping_threshold: global-norm clip of the unmagnified gradients; None disables.
    escape_mass: add the paper's escaped-mass term `rho`.
    rank_rtol: relative Cholesky pivot tolerance below which a factor direction is
      treated as absent (the pseudo-inverse of a rank-deficient factor); pivots at the
      level of the Gram's rounding are dropped as well, whatever this is.
    dimension_numbers: the batch-axis layout of the pairs (see `LoRADimensionNumbers`).
    mu_dtype: dtype of the first moment; None uses the parameter's dtype.

  Returns:
    An `optax.GradientTransformation` whose `update` needs `params`.

  Example:
    >>> import jax.numpy as jnp
    >>> import adaprelora_jax as apl
    >>> params = {'lora_a': jnp.ones((8, 2)) + jnp.eye(8, 2), 'lora_b': jnp.zeros((2, 4))}
    >>> tx = apl.scale_by_lora_rite()
    >>> state = tx.init(params)
    >>> grads = {'lora_a': jnp.zeros((8, 2)), 'lora_b': jnp.ones((2, 4))}
    >>> updates, state = tx.update(grads, state, params)
    >>> bool(jnp.all(updates['lora_a'] == 0)), bool(jnp.all(jnp.isfinite(updates['lora_b'])))
    (True, True)

  References:
    Yen, Si, Meng, Yu, Duvvuri, Dhillon, Hsieh, Kumar, *LoRA Done RITE: Robust Invariant
    Transformation Equilibration for LoRA Optimization*, ICLR 2025 (arXiv:2410.20625);
    https://github.com/gkevinyen5418/LoRA-RITE (the authors' PyTorch port).
  """
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
  clip = clipping_threshold is not None
  who = "lora_rite"

  def init_fn(params):
    layouts, treedef = pairing.pair_layouts(params, dimension_numbers, who=who)
    leaves = treedef.flatten_up_to(pairing.unwrap(params))
    specs = pairing.declared_specs(params)
    nu, escape, prev_inv = ([None] * len(leaves) for _ in range(3))
    for lay in layouts:
      dt = paired.compute_dtype(leaves[lay.a_index], leaves[lay.b_index])
      for idx in (lay.a_index, lay.b_index):
        x = leaves[idx]
        nu[idx] = state_utils.zeros_small(x, lay.nb, (lay.rank, lay.rank), dt, specs[idx])
        prev_inv[idx] = state_utils.zeros_small(x, lay.nb, (lay.rank, lay.rank), dt, specs[idx])
        escape[idx] = state_utils.zeros_small(x, lay.nb, (), dt, specs[idx])
    mu = state_utils.zeros_like_each(leaves, specs, mu_dtype)
    prev = state_utils.zeros_like_each(leaves, specs)
    tree = treedef.unflatten
    return LoRARITEState(count=jnp.zeros([], jnp.int32), mu=tree(mu), nu=tree(nu),
                         escape=tree(escape), prev=tree(prev), prev_inv=tree(prev_inv))

  def update_fn(updates, state, params=None):
    paired.require_params(params, "scale_by_lora_rite")
    layouts, treedef = pairing.pair_layouts(params, dimension_numbers, who=who)
    raw_params = treedef.flatten_up_to(pairing.unwrap(params))
    grads = paired.checked_grads(treedef, updates, raw_params, who)
    mu, nu, escape, prev, prev_inv = (treedef.flatten_up_to(x) for x in state[1:])
    count = optax.safe_increment(state.count)
    dts = [paired.compute_dtype(raw_params[lay.a_index], raw_params[lay.b_index])
           for lay in layouts]
    groups = [(lay.rank, dt) for lay, dt in zip(layouts, dts)]
    batch_shapes = [lay.batch_shape for lay in layouts]

    # 1. Grams over the long axes; r x r factors, basis changes, unmagnified moments.
    cast, grams = [], []
    for lay, dt in zip(layouts, dts):
      ia, ib = lay.a_index, lay.b_index
      a, b = raw_params[ia].astype(dt), raw_params[ib].astype(dt)
      ga, gb = grads[ia].astype(dt), grads[ib].astype(dt)
      cast.append((a, b, ga, gb))
      grams.append((ops.gram_col(lay, a), ops.gram_row(lay, b),
                    ops.gram_col(lay, a, prev[ia].astype(dt)),
                    ops.gram_row(lay, b, prev[ib].astype(dt)),
                    ops.gram_col(lay, ga), ops.gram_row(lay, gb),
                    prev_inv[ia], prev_inv[ib]))
    first = linalg.map_stacked(_bases, batch_shapes, groups, *zip(*grams),
                               [rank_rtol] * len(layouts))

    # 2. The global clip of the unmagnified gradients.
    wide = jnp.result_type(*dts)
    if clip:
      total = sum(jnp.sum(f[-1]).astype(wide) for f in first)
      scale = 1.0 / jnp.maximum(1.0, jnp.sqrt(total) / clipping_threshold)
    else:
      scale = jnp.ones([], wide)

    # 3. Second moments and the preconditioner (one eigh per rank group).
    beta1 = [_corrected_decay(jnp.asarray(b1, dt), count.astype(dt)) for dt in dts]
    beta2 = [_corrected_decay(jnp.asarray(b2, dt), count.astype(dt)) for dt in dts]
    second = linalg.map_stacked(
        lambda *args: _second_moments(*args, escape_mass), batch_shapes, groups,
        [nu[lay.a_index] for lay in layouts], [nu[lay.b_index] for lay in layouts],
        *zip(*[f[2:6] for f in first]),
        [escape[lay.a_index] for lay in layouts], [escape[lay.b_index] for lay in layouts],
        [f[0] for f in first], [f[1] for f in first],
        [float(lay.n) for lay in layouts], [float(lay.m) for lay in layouts],
        [(scale * scale).astype(dt) for dt in dts], [scale.astype(dt) for dt in dts],
        beta2, [eps] * len(layouts))

    # 4. First moments in the unmagnified coordinates, then rotate back.
    out = [None] * len(grads)
    new = {name: list(x) for name, x in
           dict(mu=mu, nu=nu, escape=escape, prev=prev, prev_inv=prev_inv).items()}
    for lay, dt, b1_hat, (a, b, ga, gb), f, sec in zip(
        layouts, dts, beta1, cast, first, second):
      k_a, k_b, p_a, p_b = f[:4]
      v_a, v_b, esc_a, esc_b, map_a, map_b = sec
      ia, ib = lay.a_index, lay.b_index
      m_a = (b1_hat * ops.apply_col(lay, p_a, mu[ia].astype(dt))
             + (1.0 - b1_hat) * ops.apply_col(lay, map_a, ga))
      m_b = (b1_hat * ops.apply_row(lay, p_b, mu[ib].astype(dt))
             + (1.0 - b1_hat) * ops.apply_row(lay, map_b, gb))
      out[ia] = ops.apply_col(lay, linalg.mT(k_b), m_a).astype(raw_params[ia].dtype)
      out[ib] = ops.apply_row(lay, linalg.mT(k_a), m_b).astype(raw_params[ib].dtype)
      keep = lambda x, ref: sharding.match_batch(x, ref, lay.nb)
      for idx, ref, m, v, e, k in ((ia, a, m_a, v_a, esc_a, k_a), (ib, b, m_b, v_b, esc_b, k_b)):
        new["mu"][idx] = m.astype(mu[idx].dtype)
        new["nu"][idx] = keep(v, ref).astype(nu[idx].dtype)
        new["escape"][idx] = keep(e, ref).astype(escape[idx].dtype)
        new["prev"][idx] = raw_params[idx]
        new["prev_inv"][idx] = keep(k, ref).astype(prev_inv[idx].dtype)
    new_state = LoRARITEState(count=count, **{k: treedef.unflatten(v) for k, v in new.items()})
    return jax.tree.unflatten(jax.tree.structure(updates), out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def lora_rite(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    clipping_threshold: float | None = 1.0,
    escape_mass: bool = False,
    rank_rtol: float = 1e-6,
    mask: Any | None = None,
    dimension_numbers: pairing.DimensionNumbersOrFn = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  """LoRA-RITE: `scale_by_lora_rite`, decoupled weight decay, learning rate.

  `optax.chain(scale_by_lora_rite(...), optax.add_decayed_weights(weight_decay, mask),
  optax.scale_by_learning_rate(learning_rate))`, the order of the authors' code (decay
  added to the rotated-back update, then the learning rate); see `scale_by_lora_rite`
  for the math and the choices made.

  Args:
    learning_rate: a scalar or an optax schedule.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to the square roots of the second moment's eigenvalues.
    weight_decay: decoupled weight decay on the factors.
    clipping_threshold: global-norm clip of the unmagnified gradients; None disables.
    escape_mass: add the paper's escaped-mass term.
    rank_rtol: relative Cholesky pivot tolerance (rank-deficient factors).
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
    >>> tx = apl.lora_rite(0.02)
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
    Yen et al., *LoRA Done RITE: Robust Invariant Transformation Equilibration for LoRA
    Optimization*, ICLR 2025 (arXiv:2410.20625).
  """
  return optax.chain(
      scale_by_lora_rite(b1=b1, b2=b2, eps=eps, clipping_threshold=clipping_threshold,
                         escape_mass=escape_mass, rank_rtol=rank_rtol,
                         dimension_numbers=dimension_numbers, mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
