"""Several optimizers of the registry on the same E2E fine-tune: a table of final loss,
evaluation loss and the five E2E metrics.

Each optimizer runs `gpt2_e2e.py`'s config (same base, data, seed, steps and schedule;
its own learning rate with `--learning-rates`) into `OUTPUT_DIR/<optimizer>/`, whose
`results/` keeps the predictions behind every number. The table also goes to
`OUTPUT_DIR/comparison.md`.

Tiny run (CPU):

    python examples/compare_optimizers.py --optimizers adaprelora,adamw,loraplus,lora_rite

The paper's E2E comparison (GPT-2 medium, r = 4, alpha = 32, 5 epochs, beam 10):

    python examples/compare_optimizers.py --config gpt2_medium_e2e \\
        --model-path /data/gpt2-medium --train-file /data/e2e/trainset.csv \\
        --eval-file /data/e2e/testset_w_refs.csv --eval-rows 0 --epochs 5 \\
        --optimizers adaprelora,adamw,loraplus,lora_pro,lora_rite \\
        --learning-rates adaprelora=2e-4,adamw=2e-4,loraplus=2e-4,lora_pro=2e-4,lora_rite=2e-4 \\
        --mesh fsdp=2,tensor=4 --output-dir runs/e2e_compare
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import adaprelora_jax as apl
from adaprelora_jax.train import train

import gpt2_e2e

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def _rates(text: str | None) -> dict[str, float]:
  if not text:
    return {}
  pairs = [item.split("=", 1) for item in text.split(",")]
  if any(len(p) != 2 for p in pairs):
    raise SystemExit(f"--learning-rates: expected name=rate,..., got {text!r}")
  return {name: float(rate) for name, rate in pairs}


def table(rows: list[dict]) -> str:
  """A Markdown table of the runs."""
  head = ["optimizer", "learning rate", "final loss", "eval loss", *METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["optimizer"], f"{r['learning_rate']:g}", f"{r['loss']:.4f}",
             f"{r['eval_loss']:.4f}", *(f"{r['metrics'][m]:.4f}" for m in METRICS)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  gpt2_e2e.add_arguments(parser)
  parser.add_argument("--optimizers", default="adaprelora,adamw,loraplus,lora_rite",
                      help=f"comma-separated, from {', '.join(sorted(apl.optimizers))}")
  parser.add_argument("--learning-rates", default=None,
                      help="per optimizer, e.g. adaprelora=1e-3,adamw=2e-2 (default: the "
                           "config's or --learning-rate)")
  parser.add_argument("--output-dir", default=None, help="default: a temporary folder")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  unknown = [n for n in names if n not in apl.optimizers]
  if unknown or not names:
    raise SystemExit(f"unknown optimizer(s) {unknown}; known: {', '.join(sorted(apl.optimizers))}")
  rates = _rates(args.learning_rates)
  output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="compare_optimizers_"))
  rows = []
  for name in names:
    config = gpt2_e2e.make_config(args, name)
    if name in rates:
      config = config.replace(learning_rate=rates[name])
    print(f"{name}: {config.max_steps} steps at learning rate {config.optim.learning_rate:g}")
    result = train(config, output_dir / name, progress=False, print_fn=lambda _: None,
                   devices=gpt2_e2e.devices(args))
    rows.append({"optimizer": name, "learning_rate": config.optim.learning_rate,
                 "loss": result.losses[-1][1], "eval_loss": result.eval_losses[-1][1],
                 "metrics": {m: v["score"] for m, v in result.task_results.metrics.items()},
                 "results": str(result.task_results.path)})
  text = table(rows)
  (output_dir / "comparison.md").write_text(text + "\n")
  print(text)
  return rows


if __name__ == "__main__":
  main()
