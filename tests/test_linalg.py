"""The r x r helpers of `_src/linalg.py` that the LoRA family adds: Cholesky, its inverse, eigh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaprelora_jax._src import linalg


def _spd(rng, batch, r, cond=10.0):
  q, _ = np.linalg.qr(rng.normal(size=batch + (r, r)))
  w = np.geomspace(1.0, 1.0 / cond, r)
  return (q * w[..., None, :]) @ np.swapaxes(q, -1, -2)


@pytest.mark.parametrize("batch, r", [((), 1), ((3,), 4), ((2, 2), 7)])
def test_cholesky_and_inverse_match_numpy_x64(x64, batch, r):
  s = _spd(np.random.default_rng(r), batch, r, cond=1e3)
  l = np.asarray(jax.jit(linalg.cholesky)(jnp.asarray(s)))
  np.testing.assert_allclose(l, np.linalg.cholesky(s), rtol=1e-10, atol=1e-12)
  k = np.asarray(jax.jit(linalg.tril_inverse)(jnp.asarray(l)))
  np.testing.assert_allclose(k, np.linalg.inv(np.linalg.cholesky(s)), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(np.triu(k, 1), 0.0)


def test_cholesky_float32_is_backward_stable():
  s = _spd(np.random.default_rng(0), (5,), 16, cond=1e3).astype(np.float32)
  l = np.asarray(linalg.cholesky(jnp.asarray(s)), np.float64)
  assert np.max(np.abs(l @ np.swapaxes(l, -1, -2) - s)) < 1e-5 * np.max(np.abs(s))


def test_rank_deficient_input_gives_a_generalised_inverse_x64(x64):
  """Zero matrices give zero factors and inverses; a dropped pivot zeroes its direction."""
  zero = jnp.zeros((2, 3, 3))
  np.testing.assert_array_equal(np.asarray(linalg.tril_inverse(linalg.cholesky(zero))), 0.0)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(10, 4))
  x[:, 2] = x[:, 0] - 2 * x[:, 1] + 1e-7 * rng.normal(size=10)  # ~ in span(x0, x1).
  s = x.T @ x
  l = np.asarray(linalg.cholesky(jnp.asarray(s), 1e-10))
  assert l[2, 2] == 0.0 and np.all(l[:, 2] == 0.0)
  np.testing.assert_allclose(l @ l.T, s, rtol=1e-6, atol=1e-6)  # Up to the dropped part.
  k = np.asarray(linalg.tril_inverse(jnp.asarray(l)))
  assert np.all(np.isfinite(k)) and np.all(k[2] == 0.0)
  keep = [0, 1, 3]
  np.testing.assert_allclose((k @ l)[np.ix_(keep, keep)], np.eye(3), atol=1e-9)
  # Without a tolerance the 1e-14 relative pivot is kept: the inverse is then huge.
  loose = np.asarray(linalg.tril_inverse(linalg.cholesky(jnp.asarray(s))))
  assert np.max(np.abs(loose)) > 1e5 * np.max(np.abs(k))


def test_eigh_symmetrises_and_matches_numpy_x64(x64):
  s = _spd(np.random.default_rng(2), (4,), 5)
  noisy = s + 1e-9 * np.random.default_rng(3).normal(size=s.shape)
  w, v = linalg.eigh(jnp.asarray(noisy))
  np.testing.assert_allclose(np.asarray(w), np.linalg.eigvalsh(s), rtol=1e-7)
  np.testing.assert_allclose(np.asarray(v * w[..., None, :] @ jnp.swapaxes(v, -1, -2)), s,
                             atol=1e-8)
