"""Independent float64 NumPy references, in the paper's layout, with explicit m x n arrays.

Written from ../shared/SPEC.md, not from the library code: forming G_T, H and U in full
is what the library must never do, and is what makes this a brute-force check.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TINY = 1e-30


def ridge(s, damping):
  return s + (damping * np.mean(np.diag(s)) + TINY) * np.eye(s.shape[0])


@dataclasses.dataclass
class PairState:
  R: np.ndarray
  C: np.ndarray
  mA: np.ndarray | None
  mB: np.ndarray | None


def init_state(m, n, r, momentum=True):
  return PairState(np.zeros(m), np.zeros(n),
                   np.zeros((r, n)) if momentum else None,
                   np.zeros((m, r)) if momentum else None)


def tangent_projection(A, B, gA, gB, s, damping):
  """G_T = B Z1 + Y1 A (SPEC 3.1), as an explicit m x n matrix."""
  sb_inv = np.linalg.inv(ridge(B.T @ B, damping))
  sa_inv = np.linalg.inv(ridge(A @ A.T, damping))
  z1 = sb_inv @ gA / s
  y1 = (gB - B @ sb_inv @ B.T @ gB) @ sa_inv / s
  return B @ z1 + y1 @ A


def adaprelora_step(A, B, gA, gB, st: PairState, t, *, s=1.0, b1=0.9, decay_rate=0.8,
                    eps=1e-30, damping=1e-6, clipping_threshold=1.0):
  """One AdaPreLoRA step (SPEC section 3). Returns (dA, dB, new state, extras)."""
  A, B, gA, gB = (np.asarray(x, np.float64) for x in (A, B, gA, gB))
  m, n = B.shape[0], A.shape[1]
  gt = tangent_projection(A, B, gA, gB, s, damping)
  rho = np.mean(gt ** 2, axis=1) + eps
  gamma = np.mean(gt ** 2, axis=0) + eps
  beta2 = 1.0 - t ** (-decay_rate)
  R = beta2 * st.R + (1 - beta2) * rho
  C = beta2 * st.C + (1 - beta2) * gamma
  p, q = np.sqrt(R / np.mean(R)), np.sqrt(C)
  P, Q = np.diag(p), np.diag(q)
  SB, SA = ridge(B.T @ P @ B, damping), ridge(A @ Q @ A.T, damping)
  M = gA @ A.T
  dA = np.linalg.solve(SB, gA @ np.diag(1 / q) - 0.5 * M @ np.linalg.solve(SA, A)) / s**2
  dB = (np.diag(1 / p) @ gB - 0.5 * B @ np.linalg.solve(SB, M)) @ np.linalg.inv(SA) / s**2
  U = s * (B @ dA + dB @ A)
  rms = np.sqrt(np.mean(U ** 2))
  if clipping_threshold is not None:
    c = 1.0 / max(1.0, rms / clipping_threshold)
    dA, dB = c * dA, c * dB
  mA = mB = None
  if b1 is not None:
    mA = b1 * st.mA + (1 - b1) * dA
    mB = b1 * st.mB + (1 - b1) * dB
    dA, dB = mA / (1 - b1 ** t), mB / (1 - b1 ** t)
  return dA, dB, PairState(R, C, mA, mB), dict(p=p, q=q, rms=rms)
