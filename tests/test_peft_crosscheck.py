"""Cross-check against the PyTorch originals that ship in PEFT (`peft.optimizers`, CPU torch).

The same tiny LoRA problem (one `nn.Linear` adapted by `peft.get_peft_model`, MSE on fixed
data), the same hyperparameters, several steps: the factors agree to float32 tolerance.

Differences by design, neutralised here by passing every hyperparameter explicitly:
* `create_riemannian_optimizer` defaults to `reg=1e-2` (ours: `reg=1e-6`, the paper's
  code); torch's AdamW defaults to `weight_decay=1e-2` (ours: 0).
* Update order: PEFT preconditions `.grad` in place, then torch's AdamW multiplies the
  parameters by `1 - lr * wd` and subtracts the Adam step; optax's chain subtracts
  `lr * (adam + wd * p)` with the same `p`: algebraically the same update.
* PEFT inverts `B^T B + reg I` with `pinv`, we with a Gauss-Jordan sweep: equal for
  these SPD matrices up to rounding.
* LoRA+: PEFT takes the decay from `loraplus_weight_decay` and puts `lora_B` in a group
  with `lr * ratio`, so its decay is scaled by the ratio too, as in `apl.loraplus`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer, create_riemannian_optimizer

import adaprelora_jax as apl

IN, OUT, R, ALPHA, N, STEPS = 12, 10, 3, 6.0, 32, 6


class _Tiny(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.lin = torch.nn.Linear(IN, OUT, bias=False)

  def forward(self, x):
    return self.lin(x)


def _problem(zero_b, seed=0):
  rng = np.random.default_rng(seed)
  w0 = rng.normal(size=(OUT, IN)).astype(np.float32) / 3
  a0 = rng.normal(size=(R, IN)).astype(np.float32) / 3  # torch lora_A: (r, in)
  b0 = (np.zeros((OUT, R)) if zero_b else rng.normal(size=(OUT, R)) / 3).astype(np.float32)
  x = rng.normal(size=(N, IN)).astype(np.float32)
  y = rng.normal(size=(N, OUT)).astype(np.float32)
  return w0, a0, b0, x, y


def _torch_run(make_optimizer, w0, a0, b0, x, y):
  base = _Tiny()
  with torch.no_grad():
    base.lin.weight.copy_(torch.from_numpy(w0))
  model = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["lin"],
                                          lora_dropout=0.0))
  layer = model.base_model.model.lin
  assert layer.scaling["default"] == ALPHA / R
  with torch.no_grad():
    layer.lora_A["default"].weight.copy_(torch.from_numpy(a0))
    layer.lora_B["default"].weight.copy_(torch.from_numpy(b0))
  optimizer = make_optimizer(model)
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  for _ in range(STEPS):
    optimizer.zero_grad()
    torch.mean((model(xt) - yt) ** 2).backward()
    optimizer.step()
  return (layer.lora_A["default"].weight.detach().numpy().copy(),
          layer.lora_B["default"].weight.detach().numpy().copy())


def _jax_run(tx, w0, a0, b0, x, y):
  # Flax layout: W (in, out) = W0^T + s lora_a @ lora_b, lora_a = A^T, lora_b = B^T.
  s = ALPHA / R
  params = {"lora_a": jnp.asarray(a0.T), "lora_b": jnp.asarray(b0.T)}
  loss = lambda p: jnp.mean((x @ (w0.T + s * p["lora_a"] @ p["lora_b"]) - y) ** 2)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(STEPS):
    params, state = step(params, state)
  return np.asarray(params["lora_a"]).T, np.asarray(params["lora_b"]).T


def _assert_factors_close(got, want, moved_from):
  for g, w, start in zip(got, want, moved_from):
    assert np.max(np.abs(w - start)) > 1e-2  # Both trajectories really moved.
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)  # Observed: <= 3.3e-6.


@pytest.mark.parametrize("zero_b", [True, False])
def test_loraplus_matches_peft(zero_b):
  lr, ratio, wd = 1e-2, 8.0, 0.05
  w0, a0, b0, x, y = _problem(zero_b)
  want = _torch_run(lambda model: create_loraplus_optimizer(
      model, optimizer_cls=torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
      loraplus_weight_decay=wd, betas=(0.9, 0.999), eps=1e-8), w0, a0, b0, x, y)
  got = _jax_run(apl.loraplus(lr, lr_ratio=ratio, weight_decay=wd), w0, a0, b0, x, y)
  _assert_factors_close(got, want, (a0, b0))


@pytest.mark.parametrize("zero_b", [True, False])
@pytest.mark.parametrize("reg", [1e-2, 1e-6])  # PEFT's default, and ours.
def test_scaled_adamw_matches_peft_riemannian(zero_b, reg):
  lr, wd = 1e-2, 0.05
  w0, a0, b0, x, y = _problem(zero_b, seed=1)
  want = _torch_run(lambda model: create_riemannian_optimizer(
      model, torch.optim.AdamW, lr=lr, reg=reg, weight_decay=wd, betas=(0.9, 0.999),
      eps=1e-8), w0, a0, b0, x, y)
  got = _jax_run(apl.scaled_adamw(lr, reg=reg, weight_decay=wd), w0, a0, b0, x, y)
  _assert_factors_close(got, want, (a0, b0))
  # The preconditioner matters: plain AdamW lands elsewhere.
  plain = _jax_run(optax.adamw(lr, weight_decay=wd), w0, a0, b0, x, y)
  assert max(np.max(np.abs(p - w)) for p, w in zip(plain, want)) > 1e-3
