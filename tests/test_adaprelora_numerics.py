"""AdaPreLoRA against the float64 NumPy reference of SPEC section 3, and its properties."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaprelora_jax as apl
import lora_problems
import reference


def _run_library_and_reference(rng, *, batch, in_shape, out_shape, r, steps, s, b1,
                               clip, cond=None, damping=1e-6, dtype=jnp.float32,
                               batch_axes=None, scale=1.0):
  """Runs `steps` steps of both on the same factors and gradients; returns the outputs."""
  a, b = lora_problems.factors(rng, batch, in_shape, out_shape, r, cond=cond, scale=scale)
  nb = len(batch)
  dn = None if batch_axes is None else apl.LoRADimensionNumbers(batch_axes=batch_axes)
  tx = apl.scale_by_adaprelora(lora_scale=s, b1=b1, clipping_threshold=clip,
                               damping=damping, dimension_numbers=dn)
  params = {"lora_a": jnp.asarray(a, dtype), "lora_b": jnp.asarray(b, dtype)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  n, m = math.prod(in_shape), math.prod(out_shape)
  pairs = max(1, math.prod(batch))
  ref_states = [reference.init_state(m, n, r, b1 is not None) for _ in range(pairs)]
  results = []
  for t in range(1, steps + 1):
    ga, gb, _ = lora_problems.factor_grads(rng, a, b, nb, s)
    updates, state = step({"lora_a": jnp.asarray(ga, dtype),
                           "lora_b": jnp.asarray(gb, dtype)}, state, params)
    flat = lambda x, tail: np.asarray(x, np.float64).reshape((pairs,) + tail)
    A, B = flat(a, (n, r)), flat(b, (r, m))
    GA, GB = flat(ga, (n, r)), flat(gb, (r, m))
    da_ref, db_ref, rmss = [], [], []
    for i in range(pairs):
      dA, dB, ref_states[i], extra = reference.adaprelora_step(
          A[i].T, B[i].T, GA[i].T, GB[i].T, ref_states[i], t, s=s, b1=b1,
          clipping_threshold=clip, damping=damping)
      da_ref.append(dA.T)
      db_ref.append(dB.T)
      rmss.append(extra["rms"])
    results.append(dict(
        da=flat(updates["lora_a"], (n, r)), db=flat(updates["lora_b"], (r, m)),
        da_ref=np.stack(da_ref), db_ref=np.stack(db_ref), rms=np.array(rmss), a=A, b=B,
        R=flat(state.nu["lora_b"], (m,)), C=flat(state.nu["lora_a"], (n,)),
        R_ref=np.stack([st.R for st in ref_states]),
        C_ref=np.stack([st.C for st in ref_states])))
    assert updates["lora_a"].shape == a.shape and updates["lora_b"].shape == b.shape
    assert state.nu["lora_a"].shape == batch + in_shape
    assert state.nu["lora_b"].shape == batch + out_shape
  return results


def _rel_err(x, ref):
  return np.max(np.abs(x - ref)) / np.max(np.abs(ref))


CASES = {
    "single": dict(batch=(), in_shape=(24,), out_shape=(16,), r=4),
    "stacked_layers": dict(batch=(3,), in_shape=(20,), out_shape=(12,), r=3),
    "multi_axis_out": dict(batch=(2,), in_shape=(18,), out_shape=(3, 5), r=4),
    "multi_axis_in": dict(batch=(2,), in_shape=(3, 6), out_shape=(10,), r=2,
                          batch_axes=1),
    "two_batch_axes": dict(batch=(2, 2), in_shape=(9,), out_shape=(7,), r=2),
    "rank_one": dict(batch=(), in_shape=(11,), out_shape=(13,), r=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("b1, clip", [(0.9, 1.0), (None, None), (0.8, 1e-3)])
def test_matches_reference_x64(x64, case, b1, clip):
  rng = np.random.default_rng(hash(case) % 2**32)
  for out in _run_library_and_reference(rng, steps=3, s=2.0, b1=b1, clip=clip,
                                        dtype=jnp.float64, **CASES[case]):
    np.testing.assert_allclose(out["da"], out["da_ref"], rtol=1e-9,
                               atol=1e-10 * np.max(np.abs(out["da_ref"])))
    np.testing.assert_allclose(out["db"], out["db_ref"], rtol=1e-9,
                               atol=1e-10 * np.max(np.abs(out["db_ref"])))
    np.testing.assert_allclose(out["R"], out["R_ref"], rtol=1e-9)
    np.testing.assert_allclose(out["C"], out["C_ref"], rtol=1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_f32(case):
  rng = np.random.default_rng(1 + hash(case) % 2**32)
  for out in _run_library_and_reference(rng, steps=3, s=0.5, b1=0.9, clip=1.0,
                                        **CASES[case]):
    assert _rel_err(out["da"], out["da_ref"]) < 2e-4
    assert _rel_err(out["db"], out["db_ref"]) < 2e-4
    np.testing.assert_allclose(out["R"], out["R_ref"], rtol=2e-4)


@pytest.mark.parametrize("dtype, cond, tol", [
    (jnp.float64, 1e4, 1e-6), (jnp.float32, 30.0, 1e-2)])
def test_ill_conditioned_factors_match_reference(x64, dtype, cond, tol):
  rng = np.random.default_rng(7)
  for out in _run_library_and_reference(
      rng, batch=(2,), in_shape=(40,), out_shape=(30,), r=5, steps=3, s=1.0, b1=0.9,
      clip=1.0, cond=cond, dtype=dtype):
    assert _rel_err(out["da"], out["da_ref"]) < tol
    assert _rel_err(out["db"], out["db_ref"]) < tol


@pytest.mark.parametrize("s", [0.25, 4.0])
def test_clipping_fires_and_matches_reference(x64, s):
  rng = np.random.default_rng(3)
  threshold = 1e-2
  outs = _run_library_and_reference(
      rng, batch=(2,), in_shape=(16,), out_shape=(12,), r=3, steps=3, s=s, b1=None,
      clip=threshold, dtype=jnp.float64)
  for out in outs:
    assert np.all(out["rms"] > 10 * threshold), "the test must make clipping fire"
    np.testing.assert_allclose(out["da"], out["da_ref"], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(out["db"], out["db_ref"], rtol=1e-9, atol=1e-14)
    # After clipping, the W-space update s (B dA + dB A) has RMS exactly the threshold.
    for i in range(2):
      u = s * (out["a"][i] @ out["db"][i] + out["da"][i] @ out["b"][i])
      np.testing.assert_allclose(np.sqrt(np.mean(u ** 2)), threshold, rtol=1e-9)


def _w_step(a, b, da, db, s):
  """The W-space step s (B dA + dB A) in Flax layout: s (a db + da b) (in x out)."""
  return s * (a @ db + da @ b)


def _one_step_x64(a, b, ga, gb, s, **kw):
  tx = apl.scale_by_adaprelora(lora_scale=s, **kw)
  params = {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)}
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(
      {"lora_a": jnp.asarray(ga), "lora_b": jnp.asarray(gb)}, state, params)
  return np.asarray(updates["lora_a"]), np.asarray(updates["lora_b"]), state


@pytest.mark.parametrize("cond", [None, 1e3])
def test_step_is_h_weighted_projection(x64, cond):
  """With damping 0 the W-step equals the brute-force H-weighted least-squares fit of D."""
  rng = np.random.default_rng(11)
  n, m, r, s = 14, 10, 3, 1.5
  a, b = lora_problems.factors(rng, (), (n,), (m,), r, cond=cond)
  ga, gb, g = lora_problems.factor_grads(rng, a, b, 0, s)
  da, db, state = _one_step_x64(a, b, ga, gb, s, b1=None, clipping_threshold=None,
                                damping=0.0)
  R, C = np.asarray(state.nu["lora_b"]), np.asarray(state.nu["lora_a"])
  p, q = np.sqrt(R / R.mean()), np.sqrt(C)
  # Flax layout: W is (in x out) = (n x m); H acts as X -> diag(q) X diag(p) there.
  d = g / np.outer(q, p)
  wq, wp = np.sqrt(q), np.sqrt(p)
  # Unknowns: da (n x r), db (r x m); the W-step s (a db + da b).
  cols = []
  for idx in range(n * r):
    e = np.zeros(n * r); e[idx] = 1
    cols.append((s * e.reshape(n, r) @ b * np.outer(wq, wp)).ravel())
  for idx in range(r * m):
    e = np.zeros(r * m); e[idx] = 1
    cols.append((s * a @ e.reshape(r, m) * np.outer(wq, wp)).ravel())
  jac = np.stack(cols, axis=1)
  sol, *_ = np.linalg.lstsq(jac, (d * np.outer(wq, wp)).ravel(), rcond=None)
  best = _w_step(a, b, sol[:n * r].reshape(n, r), sol[n * r:].reshape(r, m), s)
  ours = _w_step(a, b, da, db, s)
  np.testing.assert_allclose(ours, best, rtol=1e-7, atol=1e-9 * np.abs(best).max())
  # Any other tangent direction is farther from D in the H-norm.
  h_dist = lambda w: np.sum((w - d) ** 2 * np.outer(q, p))
  for _ in range(3):
    other = _w_step(a, b, rng.normal(size=(n, r)), rng.normal(size=(r, m)), s)
    assert h_dist(ours) < h_dist(ours + 1e-3 * other)


def test_imbalance_is_minimal_over_the_family(x64):
  rng = np.random.default_rng(5)
  n, m, r, s = 12, 9, 3, 0.7
  a, b = lora_problems.factors(rng, (), (n,), (m,), r)
  ga, gb, _ = lora_problems.factor_grads(rng, a, b, 0, s)
  da, db, state = _one_step_x64(a, b, ga, gb, s, b1=None, clipping_threshold=None,
                                damping=0.0)
  R, C = np.asarray(state.nu["lora_b"]), np.asarray(state.nu["lora_a"])
  hq = np.outer(np.sqrt(C), np.sqrt(R / R.mean()))  # H weights in Flax layout (n x m)
  # Paper layout family: (dA + X A, dB - B X); Flax: da' = da + a X^T, db' = db - X^T b.
  imbalance = lambda x: np.sum((s * (da + a @ x.T) @ b - s * a @ (db - x.T @ b)) ** 2 * hq)
  base = imbalance(np.zeros((r, r)))
  # The minimiser over X by least squares (imbalance is quadratic in X) is X = 0.
  cols = []
  for idx in range(r * r):
    e = np.zeros(r * r); e[idx] = 1
    x = e.reshape(r, r)
    cols.append((2 * s * a @ x.T @ b * np.sqrt(hq)).ravel())
  v = ((s * da @ b - s * a @ db) * np.sqrt(hq)).ravel()
  x_star, *_ = np.linalg.lstsq(np.stack(cols, 1), -v, rcond=None)
  assert np.linalg.norm(x_star) < 1e-8 * (1 + np.linalg.norm(da))
  for _ in range(5):
    assert imbalance(1e-3 * rng.normal(size=(r, r))) > base
  # Each family member moves W identically: the family really is a family.
  x = rng.normal(size=(r, r))
  np.testing.assert_allclose(_w_step(a, b, da + a @ x.T, db - x.T @ b, s),
                             _w_step(a, b, da, db, s), atol=1e-10)


@pytest.mark.parametrize("b1, clip", [(None, None), (0.9, 0.05)])
def test_equivariance_under_reparameterisation(x64, b1, clip):
  """B -> B S, A -> S^-1 A gives the same W trajectory (damping 0), several steps."""
  rng = np.random.default_rng(9)
  n, m, r, s = 10, 8, 3, 2.0
  a, b = lora_problems.factors(rng, (), (n,), (m,), r)
  S = rng.normal(size=(r, r)) + 2 * np.eye(r)
  target = rng.normal(size=(n, m))

  def trajectory(a, b):
    params = {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)}
    tx = apl.adaprelora(0.05, lora_scale=s, b1=b1, clipping_threshold=clip, damping=0.0)
    state = tx.init(params)
    loss = lambda p: 0.5 * jnp.sum((s * p["lora_a"] @ p["lora_b"] - target) ** 2)
    ws = []
    for _ in range(4):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
      ws.append(np.asarray(s * params["lora_a"] @ params["lora_b"]))
    return np.stack(ws)

  # Paper: B' = B S, A' = S^-1 A; Flax: a' = a S^-T, b' = S^T b.
  w1 = trajectory(a, b)
  w2 = trajectory(a @ np.linalg.inv(S).T, S.T @ b)
  np.testing.assert_allclose(w1, w2, rtol=1e-8, atol=1e-10)
  assert np.abs(w1[-1] - w1[0]).max() > 1e-3  # The trajectory really moves.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lora_init_first_step_is_finite_with_zero_da(dtype):
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(32, 4)), dtype)
  b = jnp.zeros((4, 24), dtype)
  g = rng.normal(size=(32, 24))
  ga = jnp.zeros_like(a)  # s B^T G = 0 at B = 0.
  gb = jnp.asarray(np.asarray(a, np.float64).T @ g, dtype)
  for s in (1.0, 16.0, 0.01):
    tx = apl.scale_by_adaprelora(lora_scale=s)
    params = {"lora_a": a, "lora_b": b}
    updates, state = jax.jit(tx.update)({"lora_a": ga, "lora_b": gb}, tx.init(params),
                                        params)
    assert updates["lora_a"].dtype == dtype and updates["lora_b"].dtype == dtype
    assert bool(jnp.all(updates["lora_a"] == 0))
    assert bool(jnp.all(jnp.isfinite(updates["lora_b"].astype(jnp.float32))))
    assert float(jnp.abs(updates["lora_b"].astype(jnp.float32)).max()) > 0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("which", ["zero_column_of_b", "zero_a", "rank_deficient_both",
                                   "all_zero"])
def test_degenerate_factors_give_finite_steps(which):
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(20, 4)), rng.normal(size=(4, 16))
  if which == "zero_column_of_b":
    b[1] = 0  # B (paper) gets a zero column.
  elif which == "zero_a":
    a[:] = 0
  elif which == "rank_deficient_both":
    a[:, 3] = a[:, 0]
    b[2] = b[1]
  else:
    a[:], b[:] = 0, 0
  ga, gb, _ = lora_problems.factor_grads(rng, a, b, 0, 1.0)
  tx = apl.scale_by_adaprelora()
  params = {"lora_a": jnp.asarray(a, jnp.float32), "lora_b": jnp.asarray(b, jnp.float32)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(3):
    updates, state = step({"lora_a": jnp.asarray(ga, jnp.float32),
                           "lora_b": jnp.asarray(gb, jnp.float32)}, state, params)
    for x in jax.tree.leaves((updates, state)):
      assert bool(jnp.all(jnp.isfinite(x))), which


def test_state_is_linear_in_m_plus_n():
  shapes = {"q": ((2, 64, 8), (2, 8, 4, 16)), "v": ((96, 8), (8, 40))}
  params = {k: {"lora_a": jnp.zeros(sa), "lora_b": jnp.zeros(sb)}
            for k, (sa, sb) in shapes.items()}
  for b1, mu_factor in ((0.9, 1), (None, 0)):
    state = apl.scale_by_adaprelora(b1=b1).init(params)
    nu_size = sum(x.size for x in jax.tree.leaves(state.nu))
    assert nu_size == 2 * (64 + 64) + (96 + 40)  # m + n per pair (and per layer)
    mu_size = sum(x.size for x in jax.tree.leaves(state.mu))
    assert mu_size == mu_factor * sum(x.size for x in jax.tree.leaves(params))
    assert (state.mu is None) == (b1 is None)
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.nu))


def _all_avals(jaxpr, depth=0):
  """(depth, aval) of every variable of a jaxpr and of its sub-jaxprs (cond, scan, pjit...)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for v in list(jaxpr.invars) + list(jaxpr.constvars):
    yield depth, v.aval
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield depth, v.aval
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _all_avals(sub, depth + 1)


def test_no_m_by_n_array_in_jaxpr_or_compiled_memory():
  n, m, r, layers = 96, 80, 4, 2
  params = {"lora_a": jnp.ones((layers, n, r)), "lora_b": jnp.ones((layers, r, m))}
  for b1, clip in ((0.9, 1.0), (None, None)):
    tx = apl.adaprelora(1e-3, b1=b1, clipping_threshold=clip)
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(tx.update)(params, state, params)
    avals = list(_all_avals(jaxpr))
    sizes = [math.prod(getattr(av, "shape", ())) for _, av in avals]
    assert max(sizes) < n * m, max(sizes)
    # The largest arrays are the stacked factors (layers x max(n, m) x 2r).
    assert max(sizes) <= layers * max(n, m) * 2 * r
    # Sub-jaxprs (the r x r sweep loop's body among them) were inspected too.
    assert sum(depth > 0 for depth, _ in avals) > 20
  # Compiled temporaries at a size where one m x n float32 array would be 16 MiB.
  n = m = 2048
  params = {"lora_a": jax.ShapeDtypeStruct((n, 16), jnp.float32),
            "lora_b": jax.ShapeDtypeStruct((16, m), jnp.float32)}
  tx = apl.adaprelora(1e-3)
  state = jax.eval_shape(tx.init, params)
  compiled = jax.jit(tx.update).lower(params, state, params).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < n * m * 4 / 8, temp


def test_bfloat16_parameters_compute_in_float32():
  """bf16 factors and gradients: statistics in f32, updates in bf16, momentum in mu_dtype."""
  rng = np.random.default_rng(4)
  n, m, r, s = 24, 20, 4, 2.0
  a, b = lora_problems.factors(rng, (), (n,), (m,), r)
  params = {"lora_a": jnp.asarray(a, jnp.bfloat16), "lora_b": jnp.asarray(b, jnp.bfloat16)}
  tx = apl.scale_by_adaprelora(lora_scale=s, mu_dtype=jnp.float32)  # damping: bf16's 1e-1
  state = tx.init(params)
  assert state.mu["lora_a"].dtype == jnp.float32 and state.nu["lora_a"].dtype == jnp.float32
  a64 = np.asarray(params["lora_a"], np.float64)
  b64 = np.asarray(params["lora_b"], np.float64)
  ref_state = reference.init_state(m, n, r)
  step = jax.jit(tx.update)
  for t in range(1, 4):
    ga, gb, _ = lora_problems.factor_grads(rng, a64, b64, 0, s)
    grads = {"lora_a": jnp.asarray(ga, jnp.bfloat16), "lora_b": jnp.asarray(gb, jnp.bfloat16)}
    updates, state = step(grads, state, params)
    dA, dB, ref_state, _ = reference.adaprelora_step(
        a64.T, b64.T, np.asarray(grads["lora_a"], np.float64).T,
        np.asarray(grads["lora_b"], np.float64).T, ref_state, t, s=s, damping=1e-1)
    assert updates["lora_a"].dtype == jnp.bfloat16
    # Only the final rounding to bf16 (8 bits of mantissa) separates the two.
    assert _rel_err(np.asarray(updates["lora_a"], np.float64), dA.T) < 1e-2
    assert _rel_err(np.asarray(updates["lora_b"], np.float64), dB.T) < 1e-2
    np.testing.assert_allclose(np.asarray(state.mu["lora_b"]), ref_state.mB.T, rtol=1e-3,
                               atol=1e-4 * np.abs(ref_state.mB).max())
