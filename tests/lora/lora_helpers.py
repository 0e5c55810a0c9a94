"""Helpers of the LoRA tests: toy NNX models (plain and scanned), random adapters, an
independent NumPy forward, the training loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

from adaprelora_jax.lora import lora_modules


class MLP(nnx.Module):
  """A plain NNX model: `down(tanh(up(x)))` with `nnx.Linear` layers."""

  def __init__(self, rngs: nnx.Rngs):
    self.up = nnx.Linear(8, 16, rngs=rngs)
    self.down = nnx.Linear(16, 8, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.down(jnp.tanh(self.up(x)))


class Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.proj = nnx.Linear(8, 8, rngs=rngs)

  def __call__(self, x):
    return x + jnp.tanh(self.proj(x))


class Scanned(nnx.Module):
  """`num_layers` residual blocks stacked with `nnx.vmap` and applied with `nnx.scan`."""

  def __init__(self, num_layers: int, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return Block(rngs)

    self.blocks = make(rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x, block):
      return block(x)

    return body(x, self.blocks)


def randomize_adapters(model, seed: int = 0, b_std: float = 0.1) -> None:
  """Non-zero factors: `lora_a` normal(0, 1/in), `lora_b` normal(0, b_std) (in place)."""
  key = jax.random.key(seed)
  for _, module in lora_modules(model):
    key, ka, kb = jax.random.split(key, 3)
    a, b = module.lora_a, module.lora_b
    n = a.shape[-2]
    a.set_value(jnp.asarray(jax.random.normal(ka, a.shape) / np.sqrt(n), a.dtype))
    b.set_value(jnp.asarray(b_std * jax.random.normal(kb, b.shape), b.dtype))


def np_linear(x, kernel, bias=None, a=None, b=None, scale=0.0):
  """`x @ (kernel + scale * a @ b) + bias` in float64 NumPy."""
  w = np.asarray(kernel, np.float64)
  if a is not None:
    w = w + scale * np.asarray(a, np.float64) @ np.asarray(b, np.float64)
  y = np.asarray(x, np.float64) @ w
  return y if bias is None else y + np.asarray(bias, np.float64)


def arrays(variable) -> np.ndarray:
  return np.asarray(variable.get_value())


def torch_model(folder):
  """A fresh torch model of a checkpoint folder, in eval mode."""
  return transformers.AutoModelForCausalLM.from_pretrained(
      folder, attn_implementation="eager").eval()


def lm_loss(model, ids):
  """Next-token cross-entropy; a one-hot product (the logits may be vocab-sharded)."""
  logits = model(ids[:, :-1])
  labels = jax.nn.one_hot(ids[:, 1:], logits.shape[-1], dtype=logits.dtype)
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))
