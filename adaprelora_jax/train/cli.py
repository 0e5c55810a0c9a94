"""`adaprelora-finetune`: the command line of the training loop.

With no arguments it runs the demo (`--config demo`): the package base, pre-trained on
generated text on first use, adapted with LoRA to a generated data-to-text task by
AdaPreLoRA and AdamW side by side. Wrong input ends with a one-line message and exit
status 2; SIGTERM saves a checkpoint and exits with 143.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from adaprelora_jax.train import config as config_lib

EXAMPLES = """\
examples:
  adaprelora-finetune                      # the demo: AdaPreLoRA vs AdamW, table + PNG
  adaprelora-finetune --config gpt2_e2e_tiny --output-dir runs/e2e \\
      --train-file ../shared/data/e2e/devset.csv \\
      --eval-file ../shared/data/e2e/testset_w_refs.csv --eval-rows 200 --eval-every 10
  adaprelora-finetune --config gpt2_medium_e2e --model-path gpt2-medium/ \\
      --train-file e2e/trainset.csv --mesh fsdp=2,tensor=4 --output-dir runs/medium
  adaprelora-finetune --config gpt2_e2e_tiny --output-dir runs/e2e --eval-only \\
      --eval-file ../shared/data/e2e/testset_w_refs.csv --eval-rows 200
  adaprelora-finetune --config mistral_7b_glue --task glue/mnli --model-path Mistral-7B-v0.1/ \\
      --tokenizer Mistral-7B-v0.1/ --train-source glue/mnli/train.parquet \\
      --eval-source glue/mnli/validation_matched.parquet --output-dir runs/mnli
  adaprelora-finetune --config llama_tiny_gsm8k --train-source gsm8k/train.jsonl \\
      --train-rows 200 --output-dir runs/tiny-gsm8k     # CPU-sized, byte tokenizer

Task configs (mistral_7b_glue, qwen2_7b_gsm8k, qwen2_7b_arc and their CPU-sized
llama_tiny_* counterparts) read --train-source / --eval-source: a JSON, JSONL or Parquet
file, a folder, or a Hugging Face dataset name (online only); see docs/training.md.

Run the same command again to resume from OUTPUT_DIR/checkpoints (only --max-steps,
--checkpoint-every and the evaluation settings may change). Multi-host: start one process
per host with --coordinator-address (or JAX_COORDINATOR_ADDRESS), --num-processes and
--process-id. Exit status: 0 done, 2 bad input (config, flags, or a data file without a usable row),
143 stopped by SIGTERM after saving.
"""


# `--b1 none` is None, so "not given" needs its own value.
_UNSET = object()


def _b1_value(text: str) -> float | None:
  """`--b1`: 'none' or a number."""
  if text.strip().lower() == "none":
    return None
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="adaprelora-finetune", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="LoRA fine-tuning of GPT-2 / Llama-family models with AdaPreLoRA or any "
                  "optimizer of adaprelora_jax, sharded, checkpointed and resumable.",
      epilog=EXAMPLES)
  p.add_argument("--config", default="demo", metavar="NAME",
                 help=f"named config: {', '.join(config_lib.CONFIGS)} (default: demo)")
  p.add_argument("--output-dir", metavar="DIR",
                 help="where checkpoints, metrics.jsonl, tensorboard/, adapter/ and base/ go "
                      "(default for the demo: a fresh ./adaprelora-demo-<time> folder; "
                      "required otherwise)")
  p.add_argument("--optimizer", metavar="NAME",
                 help="optimizer of the LoRA pairs, a registry name (adaprelora, adamw, "
                      "adafactor, loraplus, scaled_adamw, lora_pro, lora_pro_full, "
                      "lora_rite); for the demo a comma-separated list (default "
                      "adaprelora,adamw)")
  p.add_argument("--b1", type=_b1_value, default=_UNSET, metavar="B1",
                 help="momentum decay of the LoRA optimizer (the demo: of adaprelora): a "
                      "number in [0, 1), or 'none' (no momentum, adaprelora only: "
                      "recommended from the PEFT init); default: the optimizer's own (0.9)")
  p.add_argument("--learning-rate", type=float, metavar="LR",
                 help="peak learning rate (default: the config's; the demo's are swept)")
  p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps in total")
  p.add_argument("--batch-size", type=int, metavar="N",
                 help="examples per micro-batch over all devices and hosts")
  p.add_argument("--grad-accum", type=int, metavar="K",
                 help="micro-batches per optimizer step (weighted by target tokens)")
  p.add_argument("--schedule", choices=config_lib.SCHEDULES,
                 help="learning-rate decay after warmup")
  p.add_argument("--warmup-steps", type=int, metavar="N", help="linear warmup steps")
  p.add_argument("--seed", type=int, metavar="S",
                 help="seed of the adapter init and of the data order")
  p.add_argument("--train-file", metavar="F", help="training CSV with columns mr, ref (E2E)")
  p.add_argument("--eval-file", metavar="F",
                 help="evaluation CSV (columns mr, ref); eval_loss goes to metrics.jsonl")
  p.add_argument("--eval-rows", type=int, metavar="N",
                 help="evaluate on the first N rows of --eval-file only")
  p.add_argument("--task", choices=config_lib.TASKS,
                 help="the task of a task config (e.g. glue/mnli for mistral_7b_glue)")
  p.add_argument("--train-source", metavar="SRC",
                 help="task configs: training data, a file, folder or dataset name")
  p.add_argument("--eval-source", metavar="SRC",
                 help="task configs: evaluation data (eval_loss to metrics.jsonl)")
  p.add_argument("--train-split", metavar="NAME",
                 help="task configs: split read from --train-source (default train)")
  p.add_argument("--eval-split", metavar="NAME",
                 help="task configs: split read from --eval-source (default: the config's, "
                      "validation or test)")
  p.add_argument("--seq-len", type=int, metavar="N",
                 help="tokens per example (longer rows are skipped and counted)")
  p.add_argument("--train-rows", type=int, metavar="N",
                 help="use the first N rows of the training data only")
  p.add_argument("--tokenizer", metavar="DIR",
                 help="task configs: local tokenizer folder (default: UTF-8 bytes, for the "
                      "tiny configs; 7B configs need the base model's own)")
  p.add_argument("--eval-every", type=int, metavar="N",
                 help="evaluate every N steps (and always at the end)")
  p.add_argument("--eval-only", action="store_true",
                 help="evaluate without training: the newest checkpoint in OUTPUT_DIR (the "
                      "same flags as its training run), or the PEFT adapter of --adapter; "
                      "writes OUTPUT_DIR/results/<task>_<split>_<label>.json")
  p.add_argument("--adapter", metavar="DIR",
                 help="with --eval-only: a PEFT adapter folder to evaluate on the config's "
                      "base model (e.g. OUTPUT_DIR/adapter)")
  p.add_argument("--task-eval", action=argparse.BooleanOptionalAction, default=None,
                 help="evaluate the eval split on its task metrics (E2E: BLEU, NIST, METEOR, "
                      "ROUGE-L, CIDEr by beam search) at the end of the run (default: on "
                      "when there is an eval split)")
  p.add_argument("--num-beams", type=int, metavar="N",
                 help="generation tasks: beams (default: E2E 10, GSM8K 1 = greedy)")
  p.add_argument("--max-new-tokens", type=int, metavar="N",
                 help="generation tasks: the most tokens generated per example")
  p.add_argument("--model-path", metavar="DIR",
                 help="local Hugging Face checkpoint folder of the base model (default: the "
                      "config's base; gpt2_e2e_tiny and demo use the package base)")
  p.add_argument("--mesh", metavar="SPEC",
                 help="mesh axis sizes, e.g. fsdp=2,tensor=4 (axes data, fsdp, tensor; "
                      "devices not placed go to fsdp)")
  p.add_argument("--checkpoint-every", type=int, metavar="N",
                 help="save a checkpoint every N steps (and at the end); 0: end only")
  p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                 help="continue from OUTPUT_DIR's newest readable checkpoint (default); "
                      "--no-resume refuses a directory that holds checkpoints")
  p.add_argument("--base-steps", type=int, metavar="N",
                 help="pre-training steps of the package base (first use; cached per value)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--coordinator-address", metavar="HOST:PORT",
                 help="multi-host: the coordinator (process 0) address")
  p.add_argument("--num-processes", type=int, metavar="N", help="multi-host: processes")
  p.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process")
  return p


# Flags that set the config field of the same name (`TrainConfig.replace`).
_FIELDS = ("learning_rate", "max_steps", "batch_size", "grad_accum", "schedule",
           "warmup_steps", "seed", "train_file", "eval_file", "eval_rows", "eval_every",
           "mesh", "checkpoint_every", "base_steps", "task_eval", "num_beams",
           "max_new_tokens", "task", "train_source", "eval_source", "train_split",
           "eval_split", "train_rows", "tokenizer", "seq_len")


def make_config(args: argparse.Namespace, *, demo: bool) -> config_lib.TrainConfig:
  """The named config with the flags applied (ConfigError for bad values)."""
  changes = {field: getattr(args, field) for field in _FIELDS
             if getattr(args, field) is not None}
  if args.model_path is not None:
    changes["path"] = args.model_path
  if args.b1 is not _UNSET:
    changes["b1"] = args.b1
  if args.optimizer is not None and not demo:
    changes["optimizer"] = args.optimizer
  if demo:
    changes.pop("learning_rate", None)  # applied per optimizer by the demo
  for name in ("train_file", "eval_file"):
    if name in changes and not Path(changes[name]).is_file():
      raise config_lib.ConfigError(f"--{name.replace('_', '-')} {changes[name]}: no such file")
  try:
    return config_lib.config_by_name(args.config, **changes)
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(str(e)) from e


def run(argv: list[str] | None = None) -> int:
  """The command; returns the exit status."""
  args = build_parser().parse_args(argv)
  if args.config not in config_lib.CONFIGS:
    raise config_lib.ConfigError(
        f"unknown config {args.config!r}; known: {', '.join(config_lib.CONFIGS)}")
  demo = args.config == "demo"
  config = make_config(args, demo=demo)
  from adaprelora_jax.train.sharding import initialize_distributed  # noqa: PLC0415

  initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  from adaprelora_jax.train.loop import train  # noqa: PLC0415 (after distributed start-up)

  progress = not args.no_progress
  if demo and args.eval_only:
    raise config_lib.ConfigError("--eval-only needs a config with an evaluation split "
                                 "(e.g. --config gpt2_e2e_tiny --eval-file ...), not the demo")
  if demo:
    from adaprelora_jax.train.demo import DEMO_OPTIMIZERS, run_demo  # noqa: PLC0415

    output_dir = args.output_dir or f"adaprelora-demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    print(f"demo output: {Path(output_dir).absolute()}")
    optimizers = tuple(args.optimizer.split(",")) if args.optimizer else DEMO_OPTIMIZERS
    run_demo(config, output_dir, optimizers=optimizers, learning_rate=args.learning_rate,
             resume=args.resume, progress=progress)
    return 0
  if not args.output_dir:
    raise config_lib.ConfigError(f"--output-dir is required for --config {args.config}")
  if args.adapter is not None and not args.eval_only:
    raise config_lib.ConfigError("--adapter is for --eval-only (evaluating a saved adapter)")
  if args.eval_only:
    from adaprelora_jax.train.eval_run import evaluate_saved  # noqa: PLC0415

    evaluate_saved(config, args.output_dir, adapter=args.adapter, progress=progress)
    return 0
  result = train(config, args.output_dir, resume=args.resume, progress=progress)
  if result.adapter_dir is not None:
    print(f"adapter: {result.adapter_dir}")
  if result.base_dir is not None:
    print(f"base: {result.base_dir}")
  return 0


def main(argv: list[str] | None = None) -> None:
  """Entry point of the console script: messages, not tracebacks, for bad input."""
  from adaprelora_jax.train.loop import PREEMPTED_EXIT, Preempted  # noqa: PLC0415

  from adaprelora_jax.data import DataError  # noqa: PLC0415

  try:
    status = run(argv)
  except (config_lib.ConfigError, DataError) as e:
    print(f"adaprelora-finetune: error: {e}", file=sys.stderr)
    status = 2
  except Preempted as e:
    print(f"adaprelora-finetune: {e}", file=sys.stderr)
    status = PREEMPTED_EXIT
  except KeyboardInterrupt:
    print("adaprelora-finetune: interrupted", file=sys.stderr)
    status = 130
  sys.exit(status)


if __name__ == "__main__":
  main()
