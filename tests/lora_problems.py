"""Small LoRA problems shared by the tests: random and ill-conditioned factors, gradients."""

from __future__ import annotations

import math

import numpy as np


def conditioned(rng, rows, cols, cond):
  """A rows x cols matrix with singular values spread geometrically over [1/cond, 1]."""
  k = min(rows, cols)
  u, _ = np.linalg.qr(rng.normal(size=(rows, k)))
  v, _ = np.linalg.qr(rng.normal(size=(cols, k)))
  return (u * np.geomspace(1.0, 1.0 / cond, k)) @ v.T


def factors(rng, batch, in_shape, out_shape, r, cond=None, scale=1.0):
  """(lora_a, lora_b) in Flax layout: batch + in + (r,), batch + (r,) + out."""
  n, m = math.prod(in_shape), math.prod(out_shape)
  a_list, b_list = [], []
  for _ in range(max(1, math.prod(batch))):
    if cond is None:
      a, b = rng.normal(size=(n, r)), rng.normal(size=(r, m))
    else:
      a, b = conditioned(rng, n, r, cond), conditioned(rng, r, m, cond)
    a_list.append(scale * a.reshape(in_shape + (r,)))
    b_list.append(scale * b.reshape((r,) + out_shape))
  a = np.stack(a_list).reshape(batch + in_shape + (r,))
  b = np.stack(b_list).reshape(batch + (r,) + out_shape)
  return a, b


def factor_grads(rng, a, b, batch_ndim, s, in_ndim=1):
  """Gradients of a random W-space linear loss <G, W>: g_a = s G^T-side, g_b likewise.

  Flax layout: W = W0 + s a @ b (in x out), so dL/da = s G b^T and dL/db = s a^T G, with
  G (in x out) random; returned with the same shapes as a and b.
  """
  batch = a.shape[:batch_ndim]
  in_shape, r = a.shape[batch_ndim:-1], a.shape[-1]
  out_shape = b.shape[batch_ndim + 1:]
  n, m = math.prod(in_shape), math.prod(out_shape)
  a2 = a.reshape((-1, n, r))
  b2 = b.reshape((-1, r, m))
  g = rng.normal(size=(a2.shape[0], n, m))
  ga = s * np.einsum("bnm,bkm->bnk", g, b2)
  gb = s * np.einsum("bnk,bnm->bkm", a2, g)
  return ga.reshape(a.shape), gb.reshape(b.shape), g.reshape(batch + (n, m))
