"""The LoRA family against independent float64 NumPy references over several steps.

References in `family_reference.py` (paper layout, explicit inverses, scipy's Sylvester
solver, Householder QR); the library runs in float64 under x64 (tight tolerances) and in
float32 (loose ones). Plus LoRA-RITE's transformation invariance and finite steps from
LoRA init (B = 0) for every optimizer of the family.
"""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaprelora_jax as apl
import family_reference as ref
import lora_problems

CASES = {
    "single": dict(batch=(), in_shape=(14,), out_shape=(10,), r=3),
    "stacked": dict(batch=(2,), in_shape=(12,), out_shape=(9,), r=2),
    "multi_axis_out": dict(batch=(), in_shape=(8,), out_shape=(2, 5), r=3),
}
LR = 0.05  # The reference trajectory: params <- params - LR * reference direction.


def _to_paper(a, b, nb):
  """Flax-layout stacks -> lists of (A (r x n), B (m x r)) per pair."""
  r = a.shape[-1]
  a2 = a.reshape((-1, math.prod(a.shape[nb:-1]), r))
  b2 = b.reshape((-1, r, math.prod(b.shape[nb + 1:])))
  return [x.T for x in a2], [y.T for y in b2]


def _to_flax(d_as, d_bs, a, b):
  return (np.stack([d.T for d in d_as]).reshape(a.shape),
          np.stack([d.T for d in d_bs]).reshape(b.shape))


def _run(tx, ref_step, case, *, steps=3, s=1.0, dtype=jnp.float64, seed=0, cond=None,
         zero_b=False):
  """Runs `tx` (a direction) and `ref_step` on one trajectory; returns the max rel errors.

  `ref_step(As, Bs, gAs, gBs, t) -> (dAs, dBs)` keeps its own state.
  """
  rng = np.random.default_rng(seed)
  a, b = lora_problems.factors(rng, case["batch"], case["in_shape"], case["out_shape"],
                               case["r"], cond=cond, scale=0.5)
  if zero_b:
    b = np.zeros_like(b)
  nb = len(case["batch"])
  params = {"lora_a": jnp.asarray(a, dtype), "lora_b": jnp.asarray(b, dtype)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  errors = []
  for t in range(1, steps + 1):
    ga, gb, _ = lora_problems.factor_grads(rng, a, b, nb, s)
    grads = {"lora_a": jnp.asarray(ga, dtype), "lora_b": jnp.asarray(gb, dtype)}
    updates, state = step(grads, state, params)
    As, Bs = _to_paper(a, b, nb)
    gAs, gBs = _to_paper(ga, gb, nb)
    da_ref, db_ref = _to_flax(*ref_step(As, Bs, gAs, gBs, t), a, b)
    da, db = (np.asarray(updates[k], np.float64) for k in ("lora_a", "lora_b"))
    assert np.all(np.isfinite(da)) and np.all(np.isfinite(db))
    scale = max(np.max(np.abs(da_ref)), np.max(np.abs(db_ref)))
    errors.append(max(np.max(np.abs(da - da_ref)), np.max(np.abs(db - db_ref))) / scale)
    a, b = a - LR * da_ref, b - LR * db_ref
    params = {"lora_a": jnp.asarray(a, dtype), "lora_b": jnp.asarray(b, dtype)}
  return errors


# --- Reference steppers (each keeps its state across the steps of one run) -----------


def _scaled_adamw_ref(reg, b1=0.9, b2=0.999, eps=1e-8):
  adams = {}

  def step(As, Bs, gAs, gBs, t):
    out_a, out_b = [], []
    for i, (A, B, gA, gB) in enumerate(zip(As, Bs, gAs, gBs)):
      pa, pb = ref.scaled_gradients(A, B, gA, gB, reg)
      ad_a = adams.setdefault(("a", i), ref.Adam.zeros(A.shape))
      ad_b = adams.setdefault(("b", i), ref.Adam.zeros(B.shape))
      out_a.append(ad_a.step(pa, t, b1, b2, eps))
      out_b.append(ad_b.step(pb, t, b1, b2, eps))
    return out_a, out_b

  return step


def _lora_pro_ref(s, mode, damping=1e-6, b1=0.9, b2=0.999, eps=1e-8):
  adams = {}

  def step(As, Bs, gAs, gBs, t):
    out_a, out_b = [], []
    for i, (A, B, gA, gB) in enumerate(zip(As, Bs, gAs, gBs)):
      if mode == "full":
        adam = adams.setdefault(i, ref.Adam.zeros((B.shape[0], A.shape[1])))
        da, db = ref.lora_pro_full_step(A, B, gA, gB, adam, t, s=s, b1=b1, b2=b2, eps=eps,
                                        damping=damping)
      else:
        ga, gb = ref.lora_pro_gradients(A, B, gA, gB, s, damping)
        da = adams.setdefault(("a", i), ref.Adam.zeros(A.shape)).step(ga, t, b1, b2, eps)
        db = adams.setdefault(("b", i), ref.Adam.zeros(B.shape)).step(gb, t, b1, b2, eps)
      out_a.append(da)
      out_b.append(db)
    return out_a, out_b

  return step


def _lora_rite_ref(clip, escape_mass, b1=0.9, b2=0.999, eps=1e-6):
  states = []

  def step(As, Bs, gAs, gBs, t):
    if not states:
      r = As[0].shape[0]
      for A, B in zip(As, Bs):
        n, m = A.shape[1], B.shape[0]
        states.append((ref.rite_init(n, m, r), ref.rite_init(m, n, r)))
    out = ref.lora_rite_steps(list(zip(As, Bs)), list(zip(gAs, gBs)), states, t, b1=b1,
                              b2=b2, eps=eps, clip=clip, escape_mass=escape_mass)
    return [d for d, _ in out], [d for _, d in out]

  return step


# --- Tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reg", [1e-6, 1e-2])
def test_scaled_adamw_matches_reference_x64(x64, case, reg):
  errors = _run(apl.scale_by_scaled_adamw(reg=reg), _scaled_adamw_ref(reg), CASES[case])
  assert max(errors) < 1e-12, errors


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["efficient", "full"])
def test_lora_pro_matches_reference_x64(x64, case, mode):
  tx = apl.scale_by_lora_pro(lora_scale=2.0, mode=mode)
  errors = _run(tx, _lora_pro_ref(2.0, mode), CASES[case], s=2.0)
  assert max(errors) < 1e-12, errors


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("clip, escape_mass", [(1.0, False), (None, True), (0.3, True)])
def test_lora_rite_matches_reference_x64(x64, case, clip, escape_mass):
  tx = apl.scale_by_lora_rite(clipping_threshold=clip, escape_mass=escape_mass)
  errors = _run(tx, _lora_rite_ref(clip, escape_mass), CASES[case], steps=4)
  assert max(errors) < 1e-12, errors


@pytest.mark.parametrize("name, tx, ref_step", [
    ("scaled_adamw", lambda: apl.scale_by_scaled_adamw(), lambda: _scaled_adamw_ref(1e-6)),
    ("lora_pro", lambda: apl.scale_by_lora_pro(lora_scale=2.0),
     lambda: _lora_pro_ref(2.0, "efficient")),
    ("lora_pro_full", lambda: apl.scale_by_lora_pro(lora_scale=2.0, mode="full"),
     lambda: _lora_pro_ref(2.0, "full")),
    ("lora_rite", lambda: apl.scale_by_lora_rite(escape_mass=True),
     lambda: _lora_rite_ref(1.0, True)),
])
def test_ill_conditioned_factors_x64(x64, name, tx, ref_step):
  """Singular values of both factors spread over [1e-2, 1]; errors grow like eps cond^2."""
  s = 2.0 if name.startswith("lora_pro") else 1.0
  errors = _run(tx(), ref_step(), CASES["single"], s=s, cond=1e2)
  assert max(errors) < 1e-9, (name, errors)  # Observed: <= 4e-11.


@pytest.mark.parametrize("name, tx, ref_step, tol", [  # Observed: ~4e-6.
    ("scaled_adamw", lambda: apl.scale_by_scaled_adamw(reg=1e-6),
     lambda: _scaled_adamw_ref(1e-6), 3e-5),
    ("lora_pro", lambda: apl.scale_by_lora_pro(lora_scale=2.0),
     lambda: _lora_pro_ref(2.0, "efficient"), 3e-5),
    ("lora_pro_full", lambda: apl.scale_by_lora_pro(lora_scale=2.0, mode="full"),
     lambda: _lora_pro_ref(2.0, "full"), 3e-5),
    ("lora_rite", lambda: apl.scale_by_lora_rite(escape_mass=True),
     lambda: _lora_rite_ref(1.0, True), 3e-5),
])
def test_float32_matches_reference(name, tx, ref_step, tol):
  s = 2.0 if name.startswith("lora_pro") else 1.0
  errors = _run(tx(), ref_step(), CASES["stacked"], s=s, dtype=jnp.float32, steps=3)
  assert max(errors) < tol, (name, errors)


def test_loraplus_matches_numpy_adamw_with_ratio(x64):
  """lora_a: AdamW at lr; lora_b: AdamW at lr * ratio, decay included (PEFT's groups)."""
  lr, ratio, wd = 0.01, 4.0, 0.1
  rng = np.random.default_rng(3)
  a, b = lora_problems.factors(rng, (2,), (6,), (5,), 2)
  params = {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)}
  tx = apl.loraplus(lr, lr_ratio=ratio, weight_decay=wd)
  state = tx.init(params)
  adams = {k: ref.Adam.zeros(x.shape) for k, x in (("lora_a", a), ("lora_b", b))}
  want = {"lora_a": a, "lora_b": b}
  for t in range(1, 4):
    ga, gb, _ = lora_problems.factor_grads(rng, np.asarray(params["lora_a"]),
                                           np.asarray(params["lora_b"]), 1, 1.0)
    grads = {"lora_a": jnp.asarray(ga), "lora_b": jnp.asarray(gb)}
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
    for k, g in (("lora_a", ga), ("lora_b", gb)):
      k_lr = lr * (ratio if k == "lora_b" else 1.0)
      want[k] = want[k] - k_lr * (adams[k].step(g, t, 0.9, 0.999, 1e-8) + wd * want[k])
    for k in want:
      np.testing.assert_allclose(np.asarray(params[k]), want[k], rtol=1e-12, atol=1e-14)


def test_lora_pro_full_mode_keeps_weight_shaped_state():
  params = {"q": {"lora_a": jnp.zeros((2, 12, 3)), "lora_b": jnp.zeros((2, 3, 4, 5))}}
  full = apl.scale_by_lora_pro(mode="full").init(params)
  assert full.mu["q"]["lora_a"].shape == (2, 12, 4, 5) and full.mu["q"]["lora_b"] is None
  efficient = apl.scale_by_lora_pro().init(params)
  assert efficient.mu["q"]["lora_b"].shape == (2, 3, 4, 5)
  with pytest.raises(ValueError, match="mode"):
    apl.scale_by_lora_pro(mode="fast")


def _w_trajectory(tx, a, b, target, s, steps, lr=0.05):
  """W = s a @ b along `steps` updates of `tx` on a quadratic loss of W."""
  params = {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)}
  loss = lambda p: 0.5 * jnp.sum((s * p["lora_a"] @ p["lora_b"] - target) ** 2)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  ws = []
  for _ in range(steps):
    params, state = step(params, state)
    ws.append(np.asarray(s * params["lora_a"] @ params["lora_b"]))
  return np.stack(ws)


@pytest.mark.parametrize("escape_mass", [False, True])
def test_lora_rite_w_update_is_transformation_invariant(x64, escape_mass):
  """B -> B S, A -> S^-1 A (Flax: lora_b -> S^T lora_b, lora_a -> lora_a S^-T): same W path."""
  rng = np.random.default_rng(7)
  n, m, r, s = 11, 9, 3, 2.0
  a, b = rng.normal(size=(n, r)), rng.normal(size=(r, m))
  target = rng.normal(size=(n, m))
  S = rng.normal(size=(r, r)) + 2 * np.eye(r)  # Invertible, far from orthogonal.
  S = S @ np.diag([1.0, 10.0, 0.1])
  a2, b2 = a @ np.linalg.inv(S).T, S.T @ b
  np.testing.assert_allclose(a2 @ b2, a @ b, rtol=1e-12, atol=1e-12)
  make = lambda: apl.lora_rite(0.05, escape_mass=escape_mass, rank_rtol=0.0)
  w1 = _w_trajectory(make(), a, b, target, s, steps=6)
  w2 = _w_trajectory(make(), a2, b2, target, s, steps=6)
  moved = np.max(np.abs(w1[-1] - s * a @ b))
  assert moved > 0.1  # The trajectory goes somewhere.
  assert np.max(np.abs(w1 - w2)) < 1e-9 * moved
  # The test has teeth: AdamW on the factors is not invariant.
  w3 = _w_trajectory(optax.adamw(0.05), a, b, target, s, steps=6)
  w4 = _w_trajectory(optax.adamw(0.05), a2, b2, target, s, steps=6)
  assert np.max(np.abs(w3 - w4)) > 1e-2 * moved


FAMILY = {
    "loraplus": lambda: apl.loraplus(1e-2),
    "scaled_adamw": lambda: apl.scaled_adamw(1e-2),
    "lora_pro": lambda: apl.lora_pro(1e-2, lora_scale=2.0),
    "lora_pro_full": lambda: apl.lora_pro(1e-2, lora_scale=2.0, mode="full"),
    "lora_rite": lambda: apl.lora_rite(1e-2, escape_mass=True),
}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_finite_steps_from_lora_init(name):
  """B = 0: the first step moves only B (g_A = 0), every later step is finite."""
  rng = np.random.default_rng(11)
  a = jnp.asarray(rng.normal(size=(2, 16, 4)) / 4, jnp.float32)
  params = {"lora_a": a, "lora_b": jnp.zeros((2, 4, 12), jnp.float32)}
  target = jnp.asarray(rng.normal(size=(2, 16, 12)), jnp.float32)
  loss = lambda p: jnp.mean((2.0 * p["lora_a"] @ p["lora_b"] - target) ** 2)
  tx = FAMILY[name]()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state, updates

  params, state, updates = step(params, state)
  assert bool(jnp.all(updates["lora_a"] == 0))
  assert bool(jnp.any(updates["lora_b"] != 0))
  first = float(loss(params))
  for _ in range(4):
    params, state, updates = step(params, state)
    for x in jax.tree.leaves((params, state, updates)):
      assert bool(jnp.all(jnp.isfinite(x)))
  assert float(loss(params)) < first


def _avals(jaxpr):
  """Every variable's aval in a jaxpr and its sub-jaxprs (cond, scan, fori_loop, pjit)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for v in list(jaxpr.invars) + list(jaxpr.constvars):
    yield v.aval
  for eqn in jaxpr.eqns:
    yield from (v.aval for v in eqn.outvars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _avals(sub)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_state_size_and_no_m_by_n_array(name):
  """State like Adam's (plus r x r); nothing m x n, except in LoRA-Pro's full mode."""
  layers, n, m, r = 2, 96, 80, 4
  params = {"lora_a": jnp.ones((layers, n, r)), "lora_b": jnp.ones((layers, r, m))}
  tx = FAMILY[name]()
  state = tx.init(params)
  sizes = [math.prod(av.shape) for av in
           _avals(jax.make_jaxpr(tx.update)(params, state, params))
           if hasattr(av, "shape")]
  n_params = layers * (n + m) * r
  state_size = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  if name == "lora_pro_full":
    assert max(sizes) >= layers * n * m  # The memory-hungry reference really is m x n.
    assert state_size == 2 * layers * n * m
    return
  assert max(sizes) < n * m, max(sizes)
  small = {"lora_rite": layers * 2 * (2 * r * r + 1)}.get(name, 0)  # nu, prev_inv, escape
  assert state_size == 2 * n_params + small


@pytest.mark.parametrize("name", ["scaled_adamw", "lora_pro", "lora_pro_full", "lora_rite"])
def test_multi_axis_input_with_dimension_numbers_x64(x64, name):
  """lora_a (batch, 3, 4, r): two input axes, declared by LoRADimensionNumbers(batch_axes=1)."""
  dn = apl.LoRADimensionNumbers(batch_axes=1)
  case = dict(batch=(2,), in_shape=(3, 4), out_shape=(7,), r=2)
  tx, ref_step = {
      "scaled_adamw": (apl.scale_by_scaled_adamw(dimension_numbers=dn),
                       _scaled_adamw_ref(1e-6)),
      "lora_pro": (apl.scale_by_lora_pro(dimension_numbers=dn), _lora_pro_ref(1.0, "efficient")),
      "lora_pro_full": (apl.scale_by_lora_pro(mode="full", dimension_numbers=dn),
                        _lora_pro_ref(1.0, "full")),
      "lora_rite": (apl.scale_by_lora_rite(dimension_numbers=dn), _lora_rite_ref(1.0, False)),
  }[name]
  errors = _run(tx, ref_step, case)
  assert max(errors) < 1e-12, errors
