"""Fine-tune GPT-2 on E2E NLG with LoRA, evaluate by beam search, export the PEFT adapter.

A thin user of `adaprelora_jax.train`: a named config (`gpt2_e2e_tiny` by default: the
package's small pre-trained GPT-2, byte-level, CPU-sized), `train`, which checkpoints,
exports `OUTPUT_DIR/adapter` (PEFT) and, at the end, generates one text per meaning
representation of the evaluation file (beam 10, length penalty 0.8, no repeated 4-gram)
and writes BLEU, NIST, METEOR, ROUGE-L and CIDEr with the predictions to
`OUTPUT_DIR/results/e2e_test_step<N>.json`.

Tiny run (CPU, the data beside the repository; the first 20 MRs of the test set):

    python examples/gpt2_e2e.py --optimizer adaprelora --output-dir runs/e2e_tiny

The paper's setting (GPT-2 medium from a local Hugging Face folder, r = 4, alpha = 32 on
`c_attn`, learning rate 2e-4, 5 epochs at batch 8, beam 10; one host with 8 devices):

    python examples/gpt2_e2e.py --config gpt2_medium_e2e --model-path /data/gpt2-medium \\
        --train-file /data/e2e/trainset.csv --eval-file /data/e2e/testset_w_refs.csv \\
        --eval-rows 0 --optimizer adaprelora --learning-rate 2e-4 --epochs 5 \\
        --mesh fsdp=2,tensor=4 --output-dir runs/gpt2_medium_e2e

(`--eval-rows 0`: the whole test set. The training loop tokenizes bytes today; a GPT-2
BPE tokenizer folder comes with the task data plumbing.)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import tempfile
from pathlib import Path

import adaprelora_jax as apl
from adaprelora_jax.train import ModelSpec, config_by_name, train

E2E = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "e2e"
# The first 20 meaning representations of testset_w_refs.csv are its first 142 rows.
FIRST_20_MRS = 142


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags this script shares with compare_optimizers.py."""
  parser.add_argument("--config", default="gpt2_e2e_tiny",
                      help="named config: gpt2_e2e_tiny (CPU) or gpt2_medium_e2e (paper)")
  parser.add_argument("--train-file", default=str(E2E / "devset.csv"))
  parser.add_argument("--eval-file", default=str(E2E / "testset_w_refs.csv"))
  parser.add_argument("--eval-rows", type=int, default=FIRST_20_MRS,
                      help="evaluate on the first N rows (0: all)")
  parser.add_argument("--learning-rate", type=float, default=None)
  parser.add_argument("--max-steps", type=int, default=None)
  parser.add_argument("--epochs", type=float, default=None,
                      help="train this many passes over --train-file (sets --max-steps)")
  parser.add_argument("--batch-size", type=int, default=None)
  parser.add_argument("--num-beams", type=int, default=None, help="default 10")
  parser.add_argument("--max-new-tokens", type=int, default=None)
  parser.add_argument("--model-path", default=None, help="a local Hugging Face GPT-2 folder")
  parser.add_argument("--model-name", default=None,
                      help="a named model config, randomly initialised (smoke tests)")
  parser.add_argument("--base-steps", type=int, default=None,
                      help="pre-training steps of the package base (first use)")
  parser.add_argument("--mesh", default=None, help="e.g. fsdp=2,tensor=4")
  parser.add_argument("--seq-len", type=int, default=None, help="tokens per training row")
  parser.add_argument("--devices", type=int, default=None,
                      help="use the first N local devices (default: all devices)")


def make_config(args: argparse.Namespace, optimizer: str):
  """The named config with the flags applied."""
  changes = {"optimizer": optimizer, "train_file": args.train_file,
             "eval_file": args.eval_file, "eval_rows": args.eval_rows or None}
  for name in ("learning_rate", "max_steps", "batch_size", "num_beams", "max_new_tokens",
               "base_steps", "mesh", "seq_len"):
    if getattr(args, name) is not None:
      changes[name] = getattr(args, name)
  if args.model_path is not None:
    changes["path"] = args.model_path
  config = config_by_name(args.config, **changes)
  if args.model_name is not None:
    config = dataclasses.replace(config, model=ModelSpec(name=args.model_name,
                                                         max_positions=config.data.seq_len))
  if args.epochs is not None:
    with open(args.train_file, newline="", encoding="utf-8") as f:
      rows = sum(1 for _ in csv.DictReader(f))
    config = config.replace(max_steps=math.ceil(args.epochs * rows / config.examples_per_step))
  return config


def devices(args: argparse.Namespace):
  """The devices of `--devices` (None: all)."""
  import jax  # noqa: PLC0415

  return None if args.devices is None else jax.local_devices()[:args.devices]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_arguments(parser)
  parser.add_argument("--optimizer", default="adaprelora", choices=sorted(apl.optimizers))
  parser.add_argument("--output-dir", default=None, help="default: a temporary folder")
  args = parser.parse_args(argv)
  config = make_config(args, args.optimizer)
  output_dir = args.output_dir or tempfile.mkdtemp(prefix="gpt2_e2e_")
  print(f"{config.name}: {config.optim.optimizer}, {config.max_steps} steps -> {output_dir}")
  result = train(config, output_dir, progress=False, devices=devices(args))
  print(f"final loss {result.losses[-1][1]:.4f}; eval loss {result.eval_losses[-1][1]:.4f}")
  scores = {name: m["score"] for name, m in result.task_results.metrics.items()}
  print(" | ".join(f"{name} {value:.4f}" for name, value in scores.items()))
  print(f"results: {result.task_results.path}\nadapter: {result.adapter_dir}")
  return {"loss": result.losses[-1][1], "eval_loss": result.eval_losses[-1][1],
          "metrics": scores, "results": result.task_results.path,
          "adapter": result.adapter_dir}


if __name__ == "__main__":
  main()
