"""Quickstart: train the LoRA factors of a small `nnx.LoRALinear` model with AdaPreLoRA.

Offline, on CPU, in seconds: a two-layer MLP whose frozen base weights are random and
whose LoRA factors (rank 4) learn a low-rank correction toward a teacher network.

    python examples/quickstart.py [--steps 200] [--learning-rate 0.02]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

import adaprelora_jax as apl


class LoRAMLP(nnx.Module):
  """`x -> W2 tanh(W1 x)` with rank-r LoRA factors on both layers (nnx.LoRALinear)."""

  def __init__(self, din: int, dhidden: int, dout: int, *, rank: int, rngs: nnx.Rngs):
    self.up = nnx.LoRALinear(din, dhidden, lora_rank=rank, rngs=rngs)
    self.down = nnx.LoRALinear(dhidden, dout, lora_rank=rank, rngs=rngs)

  def __call__(self, x):
    return self.down(jnp.tanh(self.up(x)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--learning-rate", type=float, default=0.02)
  parser.add_argument("--rank", type=int, default=4)
  args = parser.parse_args(argv)

  model = LoRAMLP(32, 64, 16, rank=args.rank, rngs=nnx.Rngs(0))
  teacher = LoRAMLP(32, 64, 16, rank=args.rank, rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(2), (256, 32))
  y = teacher(x)

  # nnx.LoRALinear computes x @ (W + lora_a @ lora_b): its LoRA scale is 1.
  optimizer = nnx.Optimizer(model, apl.adaprelora(args.learning_rate, lora_scale=1.0),
                            wrt=nnx.LoRAParam)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(
        model)
    optimizer.update(model, grads)
    return loss

  losses = []
  for step in range(1, args.steps + 1):
    losses.append(float(train_step(model, optimizer, x, y)))
    if step == 1 or step % max(1, args.steps // 10) == 0:
      print(f"step {step:4d}  loss {losses[-1]:.5f}")
  print(f"loss {losses[0]:.5f} -> {losses[-1]:.5f} "
        f"({losses[-1] / losses[0]:.1%} of the initial loss); only LoRA factors trained")
  return losses


if __name__ == "__main__":
  main()
