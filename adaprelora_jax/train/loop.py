"""`train(config, output_dir)`: a whole run, from the base model to the exported adapter.

The loop: build the mesh, the data and the model (inside the mesh), split off the
trainable parameters, resume from the newest readable checkpoint, then run the jitted
step on the batch of each step (a pure function of seed and step, each host loading
only its rows), logging, evaluating and checkpointing on schedule. SIGTERM makes the
loop save at the next step boundary and raise `Preempted`. At the end the adapter goes
to `OUTPUT_DIR/adapter/` (PEFT) and, unless the base came from `--model-path`, the base
to `OUTPUT_DIR/base/` (Hugging Face).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaprelora_jax.data import TaskData, load_task, load_tokenizer
from adaprelora_jax.lora import apply_lora, lora_scale_of
from adaprelora_jax.models import ShardingConfig, build_model, config_by_name, from_pretrained
from adaprelora_jax.train import data as data_lib
from adaprelora_jax.train import heads, sharding, synthetic, tasks
from adaprelora_jax.train.checkpoints import Checkpoints, TrainState
from adaprelora_jax.train.config import PACKAGE_BASE, ConfigError, TrainConfig, run_identity
from adaprelora_jax.train.eval_run import evaluate_run
from adaprelora_jax.train.export import save_adapter, save_hf_checkpoint
from adaprelora_jax.train.metrics import MetricsLogger
from adaprelora_jax.train.optim import make_optimizer, make_schedule
from adaprelora_jax.train.step import make_eval_step, make_train_step, split_model

# Exit status of a run stopped by SIGTERM after saving (128 + SIGTERM).
PREEMPTED_EXIT = 143


class Preempted(Exception):  # noqa: N818 (a state, not an error)
  """SIGTERM arrived: the state of `step` was saved; run the same command to resume."""

  def __init__(self, step: int, directory: Path):
    super().__init__(f"stopped by SIGTERM after step {step}; saved to {directory}/{step}. "
                     "Run the same command again to resume.")
    self.step = step


@dataclasses.dataclass
class TrainResult:
  """What a run did."""

  output_dir: Path
  # Steps done in total (also before a resume).
  step: int
  # The step this invocation started from (0, or a restored checkpoint's).
  start_step: int
  # (step, loss) of every logged step of this invocation.
  losses: list[tuple[int, float]]
  # (step, eval_loss) of every evaluation.
  eval_losses: list[tuple[int, float]]
  # The PEFT adapter folder (None without LoRA) and the Hugging Face base folder (None
  # when the base came from a local folder).
  adapter_dir: Path | None
  base_dir: Path | None
  # The final trainable parameters, as host NumPy arrays.
  params: Any
  seconds: float
  # The trained model (adapters and head in place) on the run's `mesh` (call it inside
  # `jax.set_mesh(mesh)`; `heads.class_logits_fn(model, mesh)` / `lm_logits_fn` do), and
  # the run's data (tokenizer, rows, and the evaluation split's records for a task).
  model: nnx.Module | None = None
  mesh: jax.sharding.Mesh | None = None
  data: RunData | None = None
  # The task evaluation of the end of the run (metrics, predictions, results file), if any.
  task_results: Any = None


@dataclasses.dataclass(frozen=True)
class RunData:
  """The tokenizer and rows of a run; for a task also the evaluation split's records."""

  tokenizer: Any
  train: data_lib.TokenizedData | tasks.ClassificationData
  eval: data_lib.TokenizedData | tasks.ClassificationData | None
  # Data kind "task": the records of the evaluation split (None without --eval-source).
  eval_task: TaskData | None = None
  # "text", "classification" or "choice".
  family: str = "text"
  # Classification: the label names in index order.
  label_names: tuple[str, ...] = ()


def _task_data(config: TrainConfig) -> RunData:
  d = config.data
  if not d.train_source:
    raise ConfigError(f"config {config.name!r} trains on task {d.task!r}: pass "
                      "--train-source (a file, folder or dataset name)")
  tok = load_tokenizer(d.tokenizer)
  train_task = load_task(d.task, d.train_source, d.train_split, max_rows=d.train_rows)
  eval_task = (load_task(d.task, d.eval_source, d.eval_split, max_rows=d.eval_rows)
               if d.eval_source else None)
  if d.family == "classification":
    train = tasks.encode_classification(train_task, tok, d.seq_len)
    evaluation = (None if eval_task is None else
                  tasks.encode_classification(eval_task, tok, d.seq_len))
    if evaluation is not None and evaluation.label_names != train.label_names:
      raise ConfigError(f"the evaluation labels {evaluation.label_names} differ from the "
                        f"training labels {train.label_names}")
    return RunData(tok, train, evaluation, eval_task, d.family, train.label_names)
  encode = tasks.encode_text if d.family == "text" else tasks.encode_choice_training
  evaluation = None if eval_task is None else encode(eval_task, tok, d.seq_len)
  return RunData(tok, encode(train_task, tok, d.seq_len), evaluation, eval_task, d.family)


def load_data(config: TrainConfig) -> RunData:
  """The training and evaluation rows of `config` (ConfigError / DataError for bad input)."""
  tok, d = data_lib.ByteTokenizer(), config.data
  if d.kind == "task":
    return _task_data(config)
  if d.kind == "e2e_csv":
    if not d.train_file:
      raise ConfigError(f"config {config.name!r} reads an E2E CSV: pass --train-file")
    train = data_lib.read_e2e_csv(d.train_file, tok, d.seq_len)
  elif d.kind == "generated":
    train = synthetic.task_data(d.generated_train, 0, tok, d.seq_len, "generated task")
  else:
    train = synthetic.text_data(d.generated_train, 0, tok, d.seq_len)
  if d.eval_file:
    evaluation = data_lib.read_e2e_csv(d.eval_file, tok, d.seq_len, max_rows=d.eval_rows)
  elif d.kind == "generated":
    evaluation = synthetic.task_data(d.generated_eval, 1, tok, d.seq_len, "generated eval")
  elif d.kind == "generated_text":
    evaluation = synthetic.text_data(d.generated_eval, 1, tok, d.seq_len)
  else:
    evaluation = None
  return RunData(tok, train, evaluation)


def load_model(config: TrainConfig, mesh, *, print_fn=print, progress=True,
               vocab_size: int = data_lib.ByteTokenizer.vocab_size,
               num_labels: int | None = None) -> nnx.Module:
  """The base model of `config` on `mesh`, with the adapter (if any) added, and a fresh
  classification head (`model.score`) when `num_labels` is given."""
  spec = config.model
  dtype = jnp.bfloat16 if spec.compute_dtype == "bfloat16" else jnp.float32
  param_dtype = jnp.bfloat16 if spec.param_dtype == "bfloat16" else jnp.float32
  path = spec.path
  if path is None and spec.name == PACKAGE_BASE:
    from adaprelora_jax.train.base_model import ensure_package_base  # noqa: PLC0415

    path = str(ensure_package_base(spec.base_steps, print_fn=print_fn, progress=progress))
  with jax.set_mesh(mesh):
    if path is None:
      return build_named_model(config, vocab_size=vocab_size, num_labels=num_labels)
    if not Path(path).is_dir():
      raise ConfigError(f"--model-path {path}: no such folder")
    try:
      model = from_pretrained(path, mesh=mesh, dtype=param_dtype, compute_dtype=dtype,
                              remat=spec.remat)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"--model-path {path}: {e}") from e
    return _adapt(config, model, vocab_size, num_labels)


def build_named_model(config: TrainConfig, *, vocab_size: int = data_lib.ByteTokenizer.vocab_size,
                      num_labels: int | None = None) -> nnx.Module:
  """The randomly initialised model `config.model.name`, adapted like `load_model`'s;
  called inside the run's mesh (`jax.set_mesh`), also under `nnx.eval_shape`."""
  spec = config.model
  try:
    overrides = {} if spec.max_positions is None else {
        "max_position_embeddings": spec.max_positions}
    model_config = config_by_name(spec.name, **overrides)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  model = build_model(
      model_config, dtype=jnp.bfloat16 if spec.param_dtype == "bfloat16" else jnp.float32,
      compute_dtype=jnp.bfloat16 if spec.compute_dtype == "bfloat16" else jnp.float32,
      sharding=ShardingConfig.fsdp_tp(), remat=spec.remat, rngs=nnx.Rngs(config.seed))
  return _adapt(config, model, vocab_size, num_labels)


def _adapt(config: TrainConfig, model, vocab_size: int, num_labels: int | None) -> nnx.Module:
  """Checks the model fits the data, then adds the adapter and the head."""
  if config.data.seq_len > model.config.max_position_embeddings:
    raise ConfigError(f"seq_len {config.data.seq_len} exceeds the model's context "
                      f"{model.config.max_position_embeddings}")
  if model.config.vocab_size < vocab_size:
    raise ConfigError(f"the tokenizer has {vocab_size} tokens, the model's vocabulary only "
                      f"{model.config.vocab_size}: pass the model's own tokenizer")
  if config.lora is not None:
    try:
      apply_lora(model, config.lora, rngs=nnx.Rngs(params=jax.random.fold_in(
          jax.random.key(config.seed), 1)))
    except ValueError as e:
      raise ConfigError(f"LoRA: {e}") from e
  if num_labels is not None:
    heads.add_score_head(model, num_labels, rngs=nnx.Rngs(params=jax.random.fold_in(
        jax.random.key(config.seed), 2)))
  return model


def trainable_filter(config: TrainConfig):
  """What the run trains: the LoRA factors and any task head (every parameter without
  LoRA)."""
  return nnx.Any(nnx.LoRAParam, heads.HeadParam) if config.lora is not None else nnx.Param


class _SigtermFlag:
  """Sets `raised` on SIGTERM while active (main thread only); restores the old handler."""

  def __init__(self):
    self.raised = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):  # noqa: ARG002
    self.raised = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _evaluate(eval_step, params, frozen, evaluation, mesh, batch_size) -> float:
  rows = sharding.host_rows(mesh, batch_size)
  loss = tokens = 0.0
  for batch in data_lib.eval_batches(evaluation, batch_size):
    arrays = [sharding.put_batch(mesh, x[:, rows], batch_size) for x in batch.arrays()]
    sums = eval_step(params, frozen, *arrays)
    loss += float(sums.loss)
    tokens += float(sums.tokens)
  return loss / max(tokens, 1.0)


def train(config: TrainConfig, output_dir: str | Path, *, resume: bool = True,
          devices=None, progress: bool = True, print_fn: Callable[[str], None] = print,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
  """Run `config`, writing to `output_dir`; see the module docstring.

  Args:
    config: the run.
    output_dir: checkpoints, metrics, TensorBoard logs, adapter and base go here.
    resume: continue from the newest checkpoint in `output_dir` (else such checkpoints
      are an error).
    devices: the devices of the mesh (default: all devices of all processes).
    progress: show a progress bar (process 0).
    print_fn: where status lines go (process 0).
    on_step: called with the step number after each step (callbacks, tests).

  Raises:
    ConfigError: bad input (files, config, mesh, a different run's checkpoints).
    Preempted: SIGTERM arrived; the state was saved.
  """
  started = time.time()
  output_dir = Path(output_dir)
  lead = jax.process_index() == 0
  say = print_fn if lead else (lambda _: None)
  mesh = sharding.build_mesh(config.mesh, devices)
  sharding.check_batch(mesh, config.batch_size)
  checkpoints = Checkpoints(output_dir / "checkpoints", keep=config.keep_checkpoints,
                            identity=run_identity(config))
  try:
    if checkpoints.steps():
      if not resume:
        raise ConfigError(f"{checkpoints.directory} holds checkpoints (steps "
                          f"{checkpoints.steps()}); resume (--resume) or use a fresh "
                          "--output-dir")
      checkpoints.check_identity()
    return _prepare_and_run(config, output_dir, mesh, checkpoints, started=started, lead=lead,
                            say=say, progress=progress, on_step=on_step)
  finally:
    checkpoints.close()


def _prepare_and_run(config, output_dir, mesh, checkpoints, *, started, lead, say, progress,
                     on_step) -> TrainResult:
  run_data = load_data(config)
  say(run_data.train.report("train"))
  if run_data.eval is not None:
    say(run_data.eval.report("eval"))
  model = load_model(config, mesh, print_fn=say, progress=progress and lead,
                     vocab_size=run_data.tokenizer.vocab_size,
                     num_labels=len(run_data.label_names) or None)
  split, params = split_model(model, trainable_filter(config))
  del model
  scale = lora_scale_of(split.merge(params)) if config.lora is not None else 1.0
  optimizer = make_optimizer(config.optim, params, lora_scale=scale, max_steps=config.max_steps)
  schedule = make_schedule(config.optim, config.max_steps)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(optimizer.init)(params)
  state = TrainState(step=0, params=params, opt_state=opt_state,
                     rng=jax.random.key(config.seed))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  say(f"{config.name}: {n_params:,} trainable parameters; optimizer "
      f"{config.optim.optimizer if config.lora is not None else 'adamw'}; mesh "
      f"{dict(mesh.shape)} over {mesh.size} devices, {jax.process_count()} process(es)")

  if lead:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
  if checkpoints.steps():
    restored = checkpoints.restore_latest(state)
    if restored is not None:
      state = restored
      say(f"resumed from {checkpoints.directory / str(state.step)}")
  return _run(config, output_dir, split, state, optimizer, schedule, mesh, run_data,
              checkpoints, started=started, lead=lead, say=say, progress=progress,
              on_step=on_step)


def _run(config, output_dir, split, state, optimizer, schedule, mesh, run_data, checkpoints, *,
         started, lead, say, progress, on_step) -> TrainResult:
  loss_fn = heads.LOSSES[run_data.family]
  train_step = make_train_step(split, optimizer, label_smoothing=config.optim.label_smoothing,
                               loss_fn=loss_fn)
  eval_step = make_eval_step(split, loss_fn)
  rows = sharding.host_rows(mesh, config.batch_size)
  start_step, step = state.step, state.step
  params, opt_state = state.params, state.opt_state
  losses, eval_losses = [], []
  logger = MetricsLogger(output_dir, total_steps=config.max_steps, initial_step=step,
                         enabled=lead, progress=progress, description=config.name)
  saved_at = step if checkpoints.steps() and step in checkpoints.steps() else None

  def save():
    nonlocal saved_at
    if saved_at != step:
      checkpoints.save(TrainState(step, params, opt_state, state.rng))
      saved_at = step

  def evaluate():
    loss = _evaluate(eval_step, params, split.frozen, run_data.eval, mesh, config.batch_size)
    eval_losses.append((step, loss))
    logger.log({"step": step, "eval_loss": loss})
    return loss

  try:
    with _SigtermFlag() as sigterm, jax.set_mesh(mesh):
      while step < config.max_steps:
        tick = time.perf_counter()
        batch = data_lib.step_batch(run_data.train, config.seed, step,
                                    batch_size=config.batch_size,
                                    grad_accum=config.grad_accum, rows=rows)
        arrays = [sharding.put_batch(mesh, x, config.batch_size) for x in batch.arrays()]
        params, opt_state, metrics = train_step(params, opt_state, split.frozen, *arrays)
        step += 1
        last = step == config.max_steps
        if step % config.log_every == 0 or last:
          loss = float(metrics.loss)
          seconds = time.perf_counter() - tick
          tokens = config.examples_per_step * config.data.seq_len  # padded positions
          losses.append((step, loss))
          logger.log({"step": step, "loss": loss, "learning_rate": float(schedule(step - 1)),
                      "grad_norm": float(metrics.grad_norm),
                      "target_tokens": float(metrics.target_tokens),
                      "tokens_per_s": tokens / seconds, "step_time_s": seconds})
          logger.progress(step, loss, tokens / seconds)
        if run_data.eval is not None and config.eval_every and step % config.eval_every == 0 \
            and not last:
          evaluate()
        if config.checkpoint_every and step % config.checkpoint_every == 0:
          save()
        if on_step is not None:
          on_step(step)
        if sharding.any_process(sigterm.raised) and not last:
          save()
          raise Preempted(step, checkpoints.directory)
      save()
      if run_data.eval is not None and (not eval_losses or eval_losses[-1][0] != step):
        evaluate()
  finally:
    logger.close()
  if eval_losses:
    say(f"eval_loss {eval_losses[-1][1]:.4f} at step {step}")
  host_params = sharding.to_host(params)
  adapter_dir, base_dir = _export(config, output_dir, split, host_params, lead)
  model = split.merge(params)
  task_results = evaluate_run(config, output_dir, model, label=f"step{step}", mesh=mesh,
                              data=run_data.eval_task, tokenizer=run_data.tokenizer,
                              **heads.eval_callables(model, mesh, run_data.family),
                              print_fn=say)
  return TrainResult(output_dir=output_dir, step=step, start_step=start_step, losses=losses,
                     eval_losses=eval_losses, adapter_dir=adapter_dir, base_dir=base_dir,
                     params=host_params, seconds=time.time() - started,
                     model=model, mesh=mesh, data=run_data, task_results=task_results)


def _export(config, output_dir, split, host_params, lead) -> tuple[Path | None, Path | None]:
  """Adapter (PEFT) and, unless the base is a local folder, the base (Hugging Face)."""
  write_base = config.model.path is None
  host_frozen = sharding.to_host(split.frozen) if write_base else split.frozen
  adapter_dir = output_dir / "adapter" if config.lora is not None else None
  base_dir = output_dir / "base" if write_base else None
  if lead:
    model = split.merge(host_params, host_frozen)
    if adapter_dir is not None:
      save_adapter(model, adapter_dir)
    if base_dir is not None:
      save_hf_checkpoint(model, base_dir)
  return adapter_dir, base_dir
