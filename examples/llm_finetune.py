"""LoRA fine-tuning of a 7B model on GLUE, GSM8K or ARC (or a CPU-sized counterpart).

A thin user of `adaprelora_jax.train`: a named config (`mistral_7b_glue`,
`qwen2_7b_gsm8k`, `qwen2_7b_arc`, or `llama_tiny_glue` / `llama_tiny_gsm8k` /
`llama_tiny_arc` on CPU), the base checkpoint, tokenizer and data from local paths
(nothing is downloaded), then `train`: the bf16 base sharded over an FSDP x tensor mesh,
LoRA rank 8 on the seven projections by AdaPreLoRA (and, for GLUE, a classification
head on the last token by AdamW), checkpoints, and the PEFT adapter in OUTPUT_DIR/adapter
(for GLUE with the head as `modules_to_save`). It prints the losses and, for GLUE, the
evaluation accuracy.

The paper-scale runs (one host with 8 accelerators; `--mesh fsdp=2,tensor=4` is the
configs' own):

    python examples/llm_finetune.py --config mistral_7b_glue --task glue/sst2 \
        --model-path Mistral-7B-v0.1/ --tokenizer Mistral-7B-v0.1/ \
        --train-source glue/sst2/train.parquet --eval-source glue/sst2/validation.parquet \
        --output-dir runs/mistral-sst2
    python examples/llm_finetune.py --config qwen2_7b_gsm8k --model-path Qwen2-7B/ \
        --tokenizer Qwen2-7B/ --train-source gsm8k/main/train.parquet \
        --eval-source gsm8k/main/test.parquet --output-dir runs/qwen2-gsm8k
    python examples/llm_finetune.py --config qwen2_7b_arc --task arc/challenge \
        --model-path Qwen2-7B/ --tokenizer Qwen2-7B/ \
        --train-source ai2_arc/ARC-Challenge/train.parquet \
        --eval-source ai2_arc/ARC-Challenge/test.parquet --output-dir runs/qwen2-arc

On CPU (a random tiny Llama, byte tokenizer, any small file in the same formats):

    python examples/llm_finetune.py --config llama_tiny_gsm8k \
        --train-source gsm8k/train.jsonl --max-steps 20 --output-dir runs/tiny
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from adaprelora_jax.data import DataError
from adaprelora_jax.train import ConfigError, config_by_name, train
from adaprelora_jax.train.config import TASKS
from adaprelora_jax.train.heads import class_logits_fn

CONFIGS = ("mistral_7b_glue", "qwen2_7b_gsm8k", "qwen2_7b_arc", "llama_tiny_glue",
           "llama_tiny_gsm8k", "llama_tiny_arc")


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, choices=CONFIGS)
  p.add_argument("--output-dir", required=True)
  p.add_argument("--task", choices=TASKS, help="another task of the same family")
  p.add_argument("--model-path", help="local Hugging Face folder of the base model")
  p.add_argument("--tokenizer", help="local tokenizer folder (default: bytes)")
  p.add_argument("--train-source", required=True, help="file, folder or dataset name")
  p.add_argument("--eval-source", help="evaluation file, folder or dataset name")
  p.add_argument("--max-steps", type=int)
  p.add_argument("--batch-size", type=int)
  p.add_argument("--learning-rate", type=float)
  p.add_argument("--optimizer", help="optimizer of the LoRA pairs (default adaprelora)")
  p.add_argument("--mesh", help="e.g. fsdp=2,tensor=4 (default: the config's)")
  return p.parse_args(argv)


def main(argv=None):
  """Runs the config; returns the `TrainResult`."""
  args = parse(argv)
  changes = {k: v for k, v in dict(
      task=args.task, path=args.model_path, tokenizer=args.tokenizer,
      train_source=args.train_source, eval_source=args.eval_source,
      max_steps=args.max_steps, batch_size=args.batch_size,
      learning_rate=args.learning_rate, optimizer=args.optimizer, mesh=args.mesh).items()
      if v is not None}
  config = config_by_name(args.config, **changes)
  result = train(config, args.output_dir, progress=False)
  losses = [loss for _, loss in result.losses]
  print(f"{config.name} ({config.data.task}): loss {losses[0]:.4f} -> {losses[-1]:.4f} in "
        f"{result.step} steps, {result.seconds:.0f} s; adapter {result.adapter_dir}")
  evaluation = result.data.eval
  if result.eval_losses:
    print(f"eval_loss {result.eval_losses[-1][1]:.4f}")
  if config.data.family == "classification" and evaluation is not None:
    logits = class_logits_fn(result.model, result.mesh)(evaluation.tokens,
                                                        evaluation.attention_mask)
    accuracy = float(np.mean(np.argmax(logits, -1) == evaluation.labels))
    print(f"eval accuracy {accuracy:.4f} on {len(evaluation)} examples")
  return result


if __name__ == "__main__":
  try:
    main()
  except (ConfigError, DataError) as e:
    sys.exit(f"llm_finetune.py: error: {e}")
