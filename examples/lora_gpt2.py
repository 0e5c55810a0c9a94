"""LoRA fine-tune of a tiny GPT-2 on generated text, offline, with any optimizer of the package.

A thin user of `adaprelora_jax.train`: one `TrainConfig` (a tiny GPT-2 built from its
config, or a local Hugging Face folder with `--checkpoint`; LoRA on the attention and MLP
projections; the package's generated restaurant text, byte-level), then `train`, which
runs the jitted step with the model's own LoRA scale, checkpoints, and writes the PEFT
adapter to OUTPUT_DIR/adapter.

    python examples/lora_gpt2.py [--optimizer adaprelora] [--steps 150] [--rank 8]
"""

from __future__ import annotations

import argparse
import tempfile

import jax

import adaprelora_jax as apl
from adaprelora_jax.lora import LoRAConfig
from adaprelora_jax.train import DataConfig, ModelSpec, OptimConfig, TrainConfig, train


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
  parser.add_argument("--output-dir", default=None, help="default: a temporary folder")
  args = parser.parse_args(argv)

  config = TrainConfig(
      name="lora_gpt2_example",
      model=ModelSpec(name="tiny-gpt2", path=args.checkpoint),
      lora=LoRAConfig(rank=args.rank, alpha=args.alpha,
                      target_modules=("c_attn", "c_proj", "c_fc")),
      data=DataConfig(kind="generated_text", seq_len=args.seq_len,
                      generated_train=max(64, args.steps * args.batch // 4), generated_eval=16),
      optim=OptimConfig(optimizer=args.optimizer, learning_rate=args.learning_rate,
                        schedule="constant"),
      max_steps=args.steps, batch_size=args.batch, checkpoint_every=0)
  with tempfile.TemporaryDirectory() as tmp:
    # One device: a CPU-sized example (adaprelora-finetune --mesh spreads a run out).
    result = train(config, args.output_dir or tmp, progress=False,
                   devices=jax.local_devices()[:1])
  losses = [loss for _, loss in result.losses]
  for step, loss in result.losses:
    if step == 1 or step % max(1, args.steps // 10) == 0:
      print(f"step {step:4d}  loss {loss:.4f}")
  print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
  return losses


if __name__ == "__main__":
  main()
