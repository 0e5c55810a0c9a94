"""LoRA fine-tune of a tiny GPT-2 on an embedded corpus, offline, with any optimizer of the package.

The pieces a real fine-tune uses, at CPU size: a GPT-2 built from a config (or loaded
from a local Hugging Face folder with `--checkpoint`), `apply_lora` on its attention and
MLP projections, `nnx.Optimizer` over `nnx.LoRAParam` with the model's own LoRA scale,
and a jitted step. The text is byte-level (the tiny config's vocabulary is 256 bytes).

    python examples/lora_gpt2.py [--optimizer adaprelora] [--steps 150] [--rank 8]
"""

from __future__ import annotations

import argparse
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import adaprelora_jax as apl
from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_scale_of
from adaprelora_jax.models import build_model, config_by_name, from_pretrained

# Restaurant descriptions in the style of the E2E NLG data (written for this example).
CORPUS = """\
The Eagle is a coffee shop near Burger King in the city centre. It serves cheap Italian food.
Loch Fyne is a family friendly restaurant by the river that serves French food.
The Mill is a pub near the Raja Indian Cuisine. It has a high customer rating.
Near The Bakers, The Golden Curry offers Japanese food at moderate prices.
The Punter is an expensive coffee shop with a low rating, located near Cafe Sicilia.
Zizzi is a kid friendly pub in the riverside area serving English food.
Aromi is a coffee shop in the city centre with an average customer rating.
The Phoenix serves fast food in the riverside area at a price range of less than 20 pounds.
Green Man is a family friendly restaurant near All Bar One that serves Chinese food.
Cotto is a cheap coffee shop near The Portland Arms that serves Indian food.
"""


def byte_batches(text: str, seq_len: int, batch: int, seed: int = 0):
  """An endless stream of (batch, seq_len + 1) windows of the text's bytes."""
  data = np.frombuffer(text.encode(), np.uint8).astype(np.int32)
  rng = np.random.default_rng(seed)
  while True:
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch)
    yield jnp.asarray(np.stack([data[s:s + seq_len + 1] for s in starts]))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizer", default="adaprelora", choices=sorted(apl.optimizers))
  parser.add_argument("--learning-rate", type=float, default=3e-3)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--alpha", type=float, default=16.0)
  parser.add_argument("--seq-len", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--checkpoint", default=None,
                      help="a local Hugging Face GPT-2 folder with a byte-level vocabulary")
  args = parser.parse_args(argv)

  if args.checkpoint:
    model = from_pretrained(args.checkpoint)
  else:
    model = build_model(config_by_name("tiny-gpt2"), rngs=nnx.Rngs(0))
  apply_lora(model, LoRAConfig(rank=args.rank, alpha=args.alpha,
                               target_modules=["c_attn", "c_proj", "c_fc"]),
             rngs=nnx.Rngs(1))
  scale = lora_scale_of(model)  # alpha / r: the optimizer must see the model's scale.
  lr = args.learning_rate
  factory = apl.optimizers[args.optimizer]
  takes_scale = "lora_scale" in inspect.signature(factory).parameters
  kwargs = {"lora_scale": scale} if takes_scale else {}
  optimizer = nnx.Optimizer(model, factory(lr, **kwargs), wrt=nnx.LoRAParam)

  @nnx.jit
  def train_step(model, optimizer, tokens):
    def loss_fn(model):
      logits = model(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(
        model)
    optimizer.update(model, grads)
    return loss

  batches = byte_batches(CORPUS, args.seq_len, args.batch)
  n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
  print(f"{args.optimizer}: {n_lora} LoRA parameters (rank {args.rank}, scale {scale})")
  losses = []
  for step in range(1, args.steps + 1):
    losses.append(float(train_step(model, optimizer, next(batches))))
    if step == 1 or step % max(1, args.steps // 10) == 0:
      print(f"step {step:4d}  loss {losses[-1]:.4f}")
  print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
  return losses


if __name__ == "__main__":
  main()
