"""The configuration of a fine-tuning run: typed dataclasses and the named configs.

A `TrainConfig` is everything that decides what a run computes; the command line
(`adaprelora-finetune`) starts from a named config and replaces fields.

>>> config = config_by_name("gpt2_e2e_tiny")
>>> config.optim.optimizer, config.data.seq_len, config.lora.rank
('adaprelora', 512, 8)
>>> config_by_name("gpt2_e2e_tiny", max_steps=5).max_steps
5
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from adaprelora_jax.lora import LoRAConfig

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16")
TRAINABLE = ("lora", "all")
DATA_KINDS = ("e2e_csv", "generated", "generated_text", "task")
# The tasks of `adaprelora_jax.data.load_task` (data kind "task"), by record family:
# "text" (TextExample: LM on the target), "classification" (ClassificationExample: a
# head on the last real token) and "choice" (ChoiceExample: LM on the right choice).
TASK_FAMILIES = {"e2e": "text", "gsm8k": "text", "glue/mnli": "classification",
                 "glue/sst2": "classification", "glue/cola": "classification",
                 "glue/qnli": "classification", "glue/mrpc": "classification",
                 "arc/challenge": "choice", "arc/easy": "choice"}
TASKS = tuple(TASK_FAMILIES)
# The package's own small GPT-2-style base, pre-trained on generated text (see base_model).
PACKAGE_BASE = "package-base"


# `OptimConfig.b1`: the optimizer's own momentum; the optimizers that take `b1=None`.
DEFAULT_B1 = "default"
B1_NONE_OPTIMIZERS = ("adaprelora",)


class ConfigError(ValueError):
  """A configuration or input that cannot run; the command prints it without a traceback."""


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which base model to fine-tune and how to run it."""

  # `package-base` (the package's pre-trained small GPT-2, built and cached on first use)
  # or a name of `adaprelora_jax.models.config_by_name` (randomly initialised).
  name: str = PACKAGE_BASE
  # A local Hugging Face checkpoint folder; overrides `name`.
  path: str | None = None
  # Pre-training steps of the package base (None: the recipe's); a different value is a
  # different (separately cached) base.
  base_steps: int | None = None
  # Context length of a named (randomly initialised) config, overriding its own.
  max_positions: int | None = None
  # Activation dtype.
  compute_dtype: str = "float32"
  # Dtype of the frozen base weights ("bfloat16" halves their memory); LoRA factors, a
  # classification head and the optimizer state stay float32.
  param_dtype: str = "float32"
  # Rematerialise each layer in the backward pass (less memory, more compute).
  remat: bool = False

  def __post_init__(self):
    _check(self.base_steps is None or self.base_steps > 0,
           f"base_steps must be positive, got {self.base_steps}")
    for field in ("compute_dtype", "param_dtype"):
      _check(getattr(self, field) in DTYPES,
             f"{field} must be one of {', '.join(DTYPES)}, got {getattr(self, field)!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the examples come from and how they become tokens."""

  # "e2e_csv" (columns mr, ref), "generated" (the package's data-to-text task),
  # "generated_text" (the package's pre-training text, loss on every token) or "task"
  # (a task of `adaprelora_jax.data`, named by `task`).
  kind: str = "e2e_csv"
  # kind "task": one of TASKS ("e2e", "gsm8k", "glue/sst2", "arc/challenge", ...).
  task: str | None = None
  # kind "task": the training / evaluation data: a file, a folder or a Hugging Face
  # dataset name (None: no evaluation).
  train_source: str | None = None
  eval_source: str | None = None
  # kind "task": the splits read from the sources.
  train_split: str = "train"
  eval_split: str = "validation"
  # kind "task": a local tokenizer folder (tokenizers / transformers); None: UTF-8 bytes.
  tokenizer: str | None = None
  # Use only the first rows of the training source (None: all).
  train_rows: int | None = None
  # Training CSV (e2e_csv).
  train_file: str | None = None
  # Evaluation CSV; None: no evaluation.
  eval_file: str | None = None
  # Use only the first rows of the evaluation file (None: all).
  eval_rows: int | None = None
  # Tokens per example (prompt + target + end token), the model's context or less.
  seq_len: int = 512
  # Number of generated training / evaluation examples (generated kinds).
  generated_train: int = 4000
  generated_eval: int = 200

  def __post_init__(self):
    _check(self.kind in DATA_KINDS,
           f"data kind must be one of {', '.join(DATA_KINDS)}, got {self.kind!r}")
    _check(self.seq_len >= 8, f"seq_len must be at least 8, got {self.seq_len}")
    for field in ("eval_rows", "train_rows"):
      _check(getattr(self, field) is None or getattr(self, field) > 0,
             f"{field} must be positive, got {getattr(self, field)}")
    if self.kind == "task":
      _check(self.task in TASK_FAMILIES,
             f"data kind 'task' needs a task, one of {', '.join(TASKS)}; got {self.task!r}")
    else:
      _check(self.task is None, f"task {self.task!r} needs data kind 'task', not {self.kind!r}")

  @property
  def family(self) -> str:
    """"text", "classification" or "choice" for a task; "text" for the other kinds."""
    return TASK_FAMILIES[self.task] if self.kind == "task" else "text"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizers, the schedule and the gradient processing."""

  # Optimizer of the LoRA pairs: a name of `adaprelora_jax.optimizers`.
  optimizer: str = "adaprelora"
  # Peak learning rate of the LoRA optimizer.
  learning_rate: float = 1e-3
  # Peak learning rate of the other trainable parameters (AdamW); None: learning_rate.
  other_learning_rate: float | None = None
  # Weight decay of the AdamW on the other trainable parameters.
  other_weight_decay: float = 0.0
  # "cosine" or "linear" decay to 0 after warmup, or "constant".
  schedule: str = "cosine"
  # Linear warmup from 0 over this many steps.
  warmup_steps: int = 0
  # Clip the gradient's global norm (before the optimizers); None: no clipping.
  max_grad_norm: float | None = 1.0
  # Label smoothing of the cross-entropy (0: none).
  label_smoothing: float = 0.0
  # Momentum decay `b1` of the LoRA optimizer: "default" (the optimizer's own, 0.9), a
  # float in [0, 1), or None (no momentum; AdaPreLoRA only: the setting recommended from
  # the PEFT init, docs/choosing.md).
  b1: float | str | None = DEFAULT_B1

  def __post_init__(self):
    from adaprelora_jax import optimizers  # noqa: PLC0415 (avoid an import cycle)

    _check(self.optimizer in optimizers,
           f"unknown optimizer {self.optimizer!r}; known: {', '.join(sorted(optimizers))}")
    _check(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
    _check(self.schedule in SCHEDULES,
           f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
    _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
    _check(self.max_grad_norm is None or self.max_grad_norm > 0,
           f"max_grad_norm must be positive or None, got {self.max_grad_norm}")
    _check(0.0 <= self.label_smoothing < 1.0,
           f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
    if self.b1 != DEFAULT_B1:
      import inspect  # noqa: PLC0415

      params = inspect.signature(optimizers[self.optimizer]).parameters
      _check("b1" in params, f"b1: optimizer {self.optimizer!r} has no b1 argument")
      if self.b1 is None:
        _check(self.optimizer in B1_NONE_OPTIMIZERS,
               f"b1=None (no momentum): only {', '.join(B1_NONE_OPTIMIZERS)} can run "
               f"without momentum, not {self.optimizer!r}")
      else:
        _check(not isinstance(self.b1, (str, bool)) and 0.0 <= float(self.b1) < 1.0,
               f"b1 must be {DEFAULT_B1!r}, None or a number in [0, 1), got {self.b1!r}")

  def optimizer_kwargs(self) -> dict[str, Any]:
    """The keyword arguments of the LoRA optimizer that this config sets (`b1`)."""
    return {} if self.b1 == DEFAULT_B1 else {"b1": self.b1}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Task evaluation (metrics + saved predictions) at the end of a run and by
  `--eval-only`; see `adaprelora_jax.train.evaluate`. None: the task's default."""

  # Evaluate the eval split on its task metrics at the end of a run.
  task_eval: bool = True
  # Generation tasks: beams (E2E default 10, GSM8K default 1 = greedy).
  num_beams: int | None = None
  # Generation tasks: the most tokens generated per example (E2E 64, GSM8K 256).
  max_new_tokens: int | None = None
  # Prompts (generation) or rows (classification, multiple choice) per forward call.
  eval_batch_size: int = 16

  def __post_init__(self):
    _check(self.num_beams is None or self.num_beams >= 1,
           f"num_beams must be >= 1, got {self.num_beams}")
    _check(self.max_new_tokens is None or self.max_new_tokens >= 1,
           f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    _check(self.eval_batch_size >= 1,
           f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One fine-tuning run: model, adapter, data, optimization and loop settings."""

  # The config's name (recorded with the checkpoints).
  name: str
  model: ModelSpec = ModelSpec()
  # The adapter; None trains every parameter (the package base's pre-training).
  lora: LoRAConfig | None = LoRAConfig(rank=8, alpha=16,
                                       target_modules=("c_attn", "c_proj", "c_fc"))
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  evaluation: EvalConfig = EvalConfig()
  # Optimizer steps to run in total (a resumed run may change it).
  max_steps: int = 100
  # Examples per micro-batch, over all hosts and devices.
  batch_size: int = 8
  # Micro-batches per optimizer step (gradients weighted by their target-token counts).
  grad_accum: int = 1
  # Seed of the adapter init and of the data order (a pure function of seed and step).
  seed: int = 0
  # Mesh axis sizes, e.g. "fsdp=2,tensor=4" (None: every device on fsdp).
  mesh: str | None = None
  # Save a checkpoint every this many steps (and at the end); 0: only at the end.
  checkpoint_every: int = 50
  # Checkpoints kept (at least 2, so that a corrupt last one has a predecessor).
  keep_checkpoints: int = 2
  # Evaluate every this many steps (and at the end) when there is evaluation data; 0: end only.
  eval_every: int = 0
  # Log metrics every this many steps.
  log_every: int = 1

  def __post_init__(self):
    _check(self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}")
    _check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
    _check(self.grad_accum > 0, f"grad_accum must be positive, got {self.grad_accum}")
    _check(self.checkpoint_every >= 0,
           f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
    _check(self.keep_checkpoints >= 2,
           f"keep_checkpoints must be at least 2, got {self.keep_checkpoints}")
    _check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
    _check(self.log_every > 0, f"log_every must be positive, got {self.log_every}")
    _check(self.lora is not None or self.optim.optimizer in ("adamw",),
           "a run without LoRA trains every parameter with AdamW: use optimizer 'adamw'")

  @property
  def examples_per_step(self) -> int:
    return self.batch_size * self.grad_accum

  def replace(self, **changes) -> TrainConfig:
    """A copy with fields replaced; `data`, `optim`, `model` and `evaluation` fields may
    be given by their own names (`learning_rate=...`, `train_file=...`, `num_beams=...`)."""
    groups = {"data": DataConfig, "optim": OptimConfig, "model": ModelSpec,
              "evaluation": EvalConfig}
    nested: dict[str, dict[str, Any]] = {g: {} for g in groups}
    top = {}
    for key, value in changes.items():
      group = next((g for g, cls in groups.items()
                    if key in {f.name for f in dataclasses.fields(cls)} and g not in changes),
                   None)
      if key in {f.name for f in dataclasses.fields(TrainConfig)}:
        top[key] = value
      elif group is not None:
        nested[group][key] = value
      else:
        raise ConfigError(f"unknown config field {key!r}")
    for group, fields in nested.items():
      if fields:
        top[group] = dataclasses.replace(top.get(group, getattr(self, group)), **fields)
    return dataclasses.replace(self, **top)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(self)))


# Fields a resumed run may change; any other difference makes it a different run.
RESUMABLE_CHANGES = ("max_steps", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "log_every", "mesh", "data.eval_file", "data.eval_rows",
                     "data.generated_eval", "data.eval_source", "data.eval_split",
                     "evaluation.task_eval", "evaluation.num_beams",
                     "evaluation.max_new_tokens", "evaluation.eval_batch_size")


def run_identity(config: TrainConfig) -> dict[str, Any]:
  """The fields that make a run itself (all but `RESUMABLE_CHANGES`), flattened to dotted keys."""
  flat = {}

  def walk(prefix, value):
    if isinstance(value, dict):
      for k, v in value.items():
        walk(f"{prefix}{k}.", v)
    else:
      flat[prefix[:-1]] = value

  walk("", config.to_dict())
  return {k: v for k, v in flat.items() if k not in RESUMABLE_CHANGES}


# Named configs.

_GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")


def demo() -> TrainConfig:
  """The embedded default: LoRA on the package base, the generated data-to-text task
  (`adaprelora-finetune` with no arguments runs it for AdaPreLoRA and AdamW)."""
  return TrainConfig(
      name="demo",
      lora=LoRAConfig(rank=8, alpha=16, target_modules=_GPT2_TARGETS),
      data=DataConfig(kind="generated", seq_len=256, generated_train=4000,
                      generated_eval=128),
      optim=OptimConfig(optimizer="adaprelora", learning_rate=1e-3, schedule="cosine",
                        warmup_steps=10),
      max_steps=150, batch_size=16, checkpoint_every=50, eval_every=50)


def gpt2_e2e_tiny() -> TrainConfig:
  """E2E (`../shared/data/e2e` style CSVs) on the package base: offline, CPU-sized."""
  return TrainConfig(
      name="gpt2_e2e_tiny",
      lora=LoRAConfig(rank=8, alpha=16, target_modules=_GPT2_TARGETS),
      data=DataConfig(kind="e2e_csv", seq_len=512),
      optim=OptimConfig(optimizer="adaprelora", learning_rate=1e-3, schedule="cosine",
                        warmup_steps=2),
      # Byte tokens: an E2E sentence is ~110 of them (the recipe's 64 are GPT-2 tokens).
      evaluation=EvalConfig(max_new_tokens=160),
      max_steps=20, batch_size=8, checkpoint_every=10)


def gpt2_medium_e2e() -> TrainConfig:
  """The paper's E2E setting on GPT-2 medium (pass `--model-path` to a local
  `openai-community/gpt2-medium` folder and `--train-file`): r = 4, alpha = 32 on
  `c_attn`, bf16 compute, 5 epochs of 42k rows at batch 8 (about 26k steps)."""
  return TrainConfig(
      name="gpt2_medium_e2e",
      model=ModelSpec(name="gpt2-medium", compute_dtype="bfloat16"),
      lora=LoRAConfig(rank=4, alpha=32, target_modules=("c_attn",)),
      data=DataConfig(kind="e2e_csv", seq_len=512),
      optim=OptimConfig(optimizer="adaprelora", learning_rate=2e-4, schedule="linear",
                        warmup_steps=500, label_smoothing=0.1),
      max_steps=26_000, batch_size=8, checkpoint_every=1000, eval_every=1000, log_every=10)


def package_base_pretraining() -> TrainConfig:
  """How the package base is made: every parameter of `tiny-gpt2` (512 positions)
  trained with AdamW on the package's generated text (see `base_model`)."""
  return TrainConfig(
      name="package_base_pretraining",
      model=ModelSpec(name="tiny-gpt2", max_positions=512),
      lora=None,
      data=DataConfig(kind="generated_text", seq_len=256, generated_train=20_000,
                      generated_eval=64),
      optim=OptimConfig(optimizer="adamw", learning_rate=3e-3, schedule="cosine",
                        warmup_steps=20, other_weight_decay=0.01),
      max_steps=300, batch_size=16, checkpoint_every=0)


# LoRA of the 7B task runs, as LoRA-Pro's Llama-2-7B setting: rank 8, alpha 16 on every
# projection of attention and MLP.
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LLAMA_LORA = LoRAConfig(rank=8, alpha=16, target_modules=_LLAMA_TARGETS)
# 7B on one 8-chip host: weights split 2 ways by FSDP and 4 ways by tensor parallelism.
_MESH_7B = "fsdp=2,tensor=4"
_MODEL_7B = dict(compute_dtype="bfloat16", param_dtype="bfloat16", remat=True)


def _task_7b(name: str, model: str, task: str, seq_len: int, eval_split: str,
             learning_rate: float, max_steps: int) -> TrainConfig:
  """A paper-scale task run: the bf16 base from `--model-path`, data from
  `--train-source` / `--eval-source` (nothing is downloaded: local files, or a Hugging
  Face dataset name when online), 32 examples per step."""
  return TrainConfig(
      name=name, model=ModelSpec(name=model, **_MODEL_7B), lora=_LLAMA_LORA,
      data=DataConfig(kind="task", task=task, seq_len=seq_len, eval_split=eval_split),
      optim=OptimConfig(optimizer="adaprelora", learning_rate=learning_rate,
                        schedule="cosine", warmup_steps=max_steps // 33),
      max_steps=max_steps, batch_size=32, mesh=_MESH_7B, checkpoint_every=200,
      eval_every=0, log_every=10)


def mistral_7b_glue() -> TrainConfig:
  """Mistral-7B on a GLUE task (`--task glue/sst2` by default; mnli, cola, qnli, mrpc):
  LoRA and a classification head (`score`, on the last real token) trained together;
  256 tokens, 1 epoch of SST-2's 67k rows at 32 per step (about 2.1k steps)."""
  return _task_7b("mistral_7b_glue", "mistral-7b", "glue/sst2", 256, "validation",
                  learning_rate=1e-4, max_steps=2100)


def qwen2_7b_gsm8k() -> TrainConfig:
  """Qwen2-7B on GSM8K: LM on `question -> reasoning #### answer` (loss on the
  solution), 512 tokens, 3 epochs of the 7.5k training problems (about 700 steps)."""
  return _task_7b("qwen2_7b_gsm8k", "qwen2-7b", "gsm8k", 512, "test",
                  learning_rate=2e-4, max_steps=700)


def qwen2_7b_arc() -> TrainConfig:
  """Qwen2-7B on ARC (`--task arc/challenge` by default, or arc/easy): LM on the prompt
  and the right choice; evaluated by the choices' log-likelihoods. 512 tokens, 3 epochs
  of ARC-Challenge's 1.1k training questions (about 105 steps)."""
  return _task_7b("qwen2_7b_arc", "qwen2-7b", "arc/challenge", 512, "test",
                  learning_rate=2e-4, max_steps=105)


def _task_tiny(name: str, task: str, seq_len: int, learning_rate: float,
               max_steps: int = 20) -> TrainConfig:
  """The CPU counterpart of a 7B task config: a random `tiny-llama` (byte vocabulary),
  the same LoRA targets, small local files, a few seconds."""
  return TrainConfig(
      name=name, model=ModelSpec(name="tiny-llama"),
      lora=LoRAConfig(rank=4, alpha=8, target_modules=_LLAMA_TARGETS),
      data=DataConfig(kind="task", task=task, seq_len=seq_len),
      optim=OptimConfig(optimizer="adaprelora", learning_rate=learning_rate,
                        other_learning_rate=1e-2, schedule="constant", warmup_steps=2,
                        max_grad_norm=None),
      max_steps=max_steps, batch_size=8, checkpoint_every=0, log_every=1)


def llama_tiny_glue() -> TrainConfig:
  """`mistral_7b_glue` at CPU size (glue/sst2; `--task` picks another). The head reads
  the prompt's last token (`Label:`), which a random tiny model must first learn to fill
  with the sentence: 120 steps."""
  return _task_tiny("llama_tiny_glue", "glue/sst2", 64, 3e-3, max_steps=120)


def llama_tiny_gsm8k() -> TrainConfig:
  """`qwen2_7b_gsm8k` at CPU size."""
  return _task_tiny("llama_tiny_gsm8k", "gsm8k", 128, 1e-2, max_steps=30)


def llama_tiny_arc() -> TrainConfig:
  """`qwen2_7b_arc` at CPU size (arc/challenge; `--task arc/easy` for the other)."""
  return _task_tiny("llama_tiny_arc", "arc/challenge", 128, 1e-2, max_steps=30)


CONFIGS: dict[str, Callable[[], TrainConfig]] = {
    "demo": demo,
    "gpt2_e2e_tiny": gpt2_e2e_tiny,
    "gpt2_medium_e2e": gpt2_medium_e2e,
    "package_base_pretraining": package_base_pretraining,
    "mistral_7b_glue": mistral_7b_glue,
    "qwen2_7b_gsm8k": qwen2_7b_gsm8k,
    "qwen2_7b_arc": qwen2_7b_arc,
    "llama_tiny_glue": llama_tiny_glue,
    "llama_tiny_gsm8k": llama_tiny_gsm8k,
    "llama_tiny_arc": llama_tiny_arc,
}


def config_by_name(name: str, **changes) -> TrainConfig:
  """The named config (`demo`, `gpt2_e2e_tiny`, `gpt2_medium_e2e`, ...) with fields replaced."""
  if name not in CONFIGS:
    raise ConfigError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
  config = CONFIGS[name]()
  return config.replace(**changes) if changes else config
