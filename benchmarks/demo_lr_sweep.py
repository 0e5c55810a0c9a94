"""The demo's learning-rate sweep (docs/training.md): each optimizer of the demo at a few
learning rates, the demo's config otherwise; prints the final evaluation loss and the mean
training loss of the last 10 steps.

    python benchmarks/demo_lr_sweep.py [--optimizers adaprelora,adamw] [--max-steps 150]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from adaprelora_jax.train import config_by_name, train

GRIDS = {"adaprelora": (1e-4, 3e-4, 1e-3, 3e-3), "adamw": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizers", default="adaprelora,adamw")
  parser.add_argument("--max-steps", type=int, default=150)
  args = parser.parse_args(argv)
  print("| optimizer | learning rate | eval loss | train loss (last 10) | seconds |")
  print("|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.optimizers.split(","):
      for lr in GRIDS.get(name, (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)):
        config = config_by_name("demo", optimizer=name, learning_rate=lr,
                                max_steps=args.max_steps, eval_every=0, checkpoint_every=0)
        start = time.time()
        result = train(config, Path(tmp) / f"{name}-{lr:g}", progress=False,
                       print_fn=lambda _: None)
        losses = [loss for _, loss in result.losses[-10:]]
        print(f"| {name} | {lr:g} | {result.eval_losses[-1][1]:.4f} | "
              f"{sum(losses) / len(losses):.4f} | {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
  main()
