"""Independent float64 NumPy references of the LoRA family, in the paper's layout.

Written from ../shared/SPEC.md section 5 and the papers, not from the library code:
explicit inverses, `scipy.linalg.solve_sylvester` for LoRA-Pro, Householder QR
(`numpy.linalg.qr`) and `numpy.linalg.pinv` for LoRA-RITE, and explicit m x n arrays
wherever the math has them. `A` is r x n (`lora_a^T`), `B` is m x r (`lora_b^T`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from reference import ridge  # The ridge of SPEC section 3.

@dataclasses.dataclass
class Adam:
  """Adam's moments of one array (optax `scale_by_adam` semantics)."""
  mu: np.ndarray
  nu: np.ndarray

  @classmethod
  def zeros(cls, shape):
    return cls(np.zeros(shape), np.zeros(shape))

  def step(self, g, t, b1, b2, eps):
    self.mu = b1 * self.mu + (1 - b1) * g
    self.nu = b2 * self.nu + (1 - b2) * g * g
    return (self.mu / (1 - b1 ** t)) / (np.sqrt(self.nu / (1 - b2 ** t)) + eps)


def scaled_gradients(A, B, gA, gB, reg):
  """`(B^T B + reg I)^-1 g_A`, `g_B (A A^T + reg I)^-1` (Zhang & Pilanci)."""
  r = A.shape[0]
  return (np.linalg.inv(B.T @ B + reg * np.eye(r)) @ gA,
          gB @ np.linalg.inv(A @ A.T + reg * np.eye(r)))


def lora_pro_gradients(A, B, gA, gB, s, damping):
  """LoRA-Pro's adjusted gradients (SPEC 5), X from scipy's Bartels-Stewart solver."""
  m = B.shape[0]
  sb, sa = ridge(B.T @ B, damping), ridge(A @ A.T, damping)
  sb_inv, sa_inv = np.linalg.inv(sb), np.linalg.inv(sa)
  x = scipy.linalg.solve_sylvester(sb, sa, -(1 / s**2) * sb_inv @ gA @ A.T)
  ga_new = sb_inv @ gA / s**2 + x @ A
  gb_new = (np.eye(m) - B @ sb_inv @ B.T) @ gB @ sa_inv / s**2 - B @ x
  return ga_new, gb_new


def lora_pro_full_step(A, B, gA, gB, adam: Adam, t, *, s, b1, b2, eps, damping):
  """Full mode: Adam on the m x n equivalent gradient, mapped back by the closed form."""
  ga0, gb0 = lora_pro_gradients(A, B, gA, gB, s, damping)
  w_grad = s * (B @ ga0 + gb0 @ A)
  d = adam.step(w_grad, t, b1, b2, eps)
  return lora_pro_gradients(A, B, s * B.T @ d, s * d @ A.T, s, damping)


@dataclasses.dataclass
class RiteFactorState:
  """LoRA-RITE state of one factor: moments in the other factor's basis."""
  m: np.ndarray
  v: np.ndarray
  esc: float
  basis: np.ndarray


def rite_init(rows, other_rows, r):
  return RiteFactorState(np.zeros((rows, r)), np.zeros((r, r)), 0.0,
                         np.zeros((other_rows, r)))


def _corrected(beta, t):
  return beta * (1 - beta ** (t - 1)) / (1 - beta ** t)


def lora_rite_steps(pairs, grads, states, t, *, b1, b2, eps, clip, escape_mass,
                    pinv_rcond=1e-10):
  """One LoRA-RITE step for several pairs (the unmagnified-gradient clip is global).

  `pairs`: [(A, B)], `grads`: [(gA, gB)] in the paper's LoRA layout; internally the
  RITE layout `Z = L R^T` with `L = A^T` (n x r, lora_a) and `R = B` (m x r).
  `states`: [(state of L, state of R)]. Returns [(dA, dB)] (the direction) and updates
  `states` in place.
  """
  prepared, norm2 = [], 0.0
  for (A, B), (gA, gB) in zip(pairs, grads):
    factors = {"L": A.T, "R": B}
    fgrads = {"L": gA.T, "R": gB}
    qr = {k: np.linalg.qr(x) for k, x in factors.items()}  # Householder: Q, T
    tinv = {k: np.linalg.pinv(qr[k][1], rcond=pinv_rcond) for k in qr}
    other = {"L": "R", "R": "L"}
    gbar = {k: fgrads[k] @ tinv[other[k]] for k in factors}  # unmagnified
    norm2 += sum(np.sum(g * g) for g in gbar.values())
    prepared.append((factors, qr, tinv, other, gbar))
  c = 1.0 if clip is None else 1.0 / max(1.0, np.sqrt(norm2) / clip)
  b1h, b2h = _corrected(b1, t), _corrected(b2, t)
  out = []
  for (factors, qr, tinv, other, gbar), st in zip(prepared, states):
    st = dict(zip(("L", "R"), st))
    delta = {}
    for k in ("L", "R"):
      s_k = st[k]
      q_other = qr[other[k]][0]
      p = q_other.T @ s_k.basis
      g = c * gbar[k]
      v_t = p @ s_k.v @ p.T
      if escape_mass:
        lo, lt = np.linalg.eigvalsh(s_k.v), np.linalg.eigvalsh(v_t)
        d = min(max(np.max(lo - lt), 0.0), max(np.trace(s_k.v) - np.trace(v_t), 0.0))
        esc = b2h * (d + s_k.esc)
      else:
        esc = 0.0
      v = b2h * v_t + (1 - b2h) * g.T @ g / g.shape[0]
      w, q = np.linalg.eigh(v)
      precond = q @ np.diag(1 / (np.sqrt(np.maximum(w, 0) + esc) + eps)) @ q.T
      m = b1h * s_k.m @ p.T + (1 - b1h) * g @ precond
      delta[k] = m @ tinv[other[k]].T
      s_k.m, s_k.v, s_k.esc, s_k.basis = m, v, esc, q_other
    out.append((delta["L"].T, delta["R"]))
  return out
