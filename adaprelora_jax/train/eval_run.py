"""Task evaluation of a run: at the end of training, and of a saved run or adapter
(`adaprelora-finetune --eval-only`).

Both evaluate the run's evaluation split (the E2E `--eval-file` or a task's
`--eval-source`, its first `--eval-rows` rows) with `evaluate.evaluate_task` and write
`OUTPUT_DIR/results/<task>_<split>_<label>.json`, the label `step<N>` for a checkpoint
(or the end of a run) and `adapter` for a PEFT adapter folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
from flax import nnx

from adaprelora_jax.data import DataError, TaskData, load_task, load_tokenizer
from adaprelora_jax.train import data as data_lib
from adaprelora_jax.train import heads, sharding
from adaprelora_jax.train.config import ConfigError, TrainConfig, run_identity
from adaprelora_jax.train.evaluate import TaskResults, evaluate_task


def eval_task_data(config: TrainConfig) -> TaskData | None:
  """The evaluation split of `config` as records (None: the run has none): the E2E
  `--eval-file` or a task's `--eval-source`, its first `--eval-rows` rows, by
  `adaprelora_jax.data.load_task`."""
  d = config.data
  try:
    if d.kind == "e2e_csv" and d.eval_file:
      return load_task("e2e", d.eval_file, "test", max_rows=d.eval_rows)
    if d.kind == "task" and d.eval_source:
      return load_task(d.task, d.eval_source, d.eval_split, max_rows=d.eval_rows)
  except DataError as e:
    raise ConfigError(str(e)) from e
  return None


def evaluate_run(config: TrainConfig, output_dir: str | Path, model: nnx.Module, *, label: str,
                 mesh, data: TaskData | None = None, tokenizer=None, class_logits=None,
                 lm_logits=None, print_fn: Callable[[str], None] = print,
                 required: bool = False) -> TaskResults | None:
  """Evaluates `model` on the run's evaluation split (or `data`) and writes the results
  file (process 0). None when task evaluation is off or there is no evaluation split
  (a ConfigError instead when `required`)."""
  if not config.evaluation.task_eval and not required:
    return None
  data = eval_task_data(config) if data is None else data
  if data is None:
    if required:
      raise ConfigError("nothing to evaluate on: this config has no evaluation split; pass "
                        "--eval-file")
    return None
  tokenizer = data_lib.ByteTokenizer() if tokenizer is None else tokenizer
  model.eval()  # adapters' dropout off
  with jax.set_mesh(mesh):
    results = evaluate_task(data, tokenizer, model=model, class_logits=class_logits,
                            lm_logits=lm_logits, settings=config.evaluation,
                            seq_len=config.data.seq_len)
  results = dataclasses.replace(results, info=dict(results.info, label=label,
                                                   config=config.name))
  if jax.process_index() == 0:
    results = results.save(output_dir, label)
    print_fn(f"{results.summary()}; written to {results.path}")
  error = results.info.get("metrics_error")
  if error and required:
    raise ConfigError(f"the metrics of {data.task} cannot be computed here ({error}); the "
                      f"predictions are saved in {results.path}. Install the eval extra "
                      "(pip install 'adaprelora-jax[eval]', and java for METEOR/PTB) and "
                      "run again")
  if error:
    print_fn(f"warning: no task metrics ({error}); the predictions are saved, recompute "
             "them with adaprelora_jax.train.metrics_from_predictions")
  return results


def evaluate_saved(config: TrainConfig, output_dir: str | Path, *,
                   adapter: str | Path | None = None, devices=None,
                   print_fn: Callable[[str], None] = print,
                   progress: bool = False) -> TaskResults:
  """`--eval-only`: evaluates the newest restorable checkpoint of `output_dir` (a run of
  `config`), or the PEFT adapter folder `adapter` on `config`'s base model, without
  training. ConfigError when there is nothing to evaluate."""
  from adaprelora_jax.lora import read_peft_config  # noqa: PLC0415
  from adaprelora_jax.train.loop import load_model  # noqa: PLC0415 (import cycle)

  output_dir = Path(output_dir)
  data = eval_task_data(config)
  if data is None:
    raise ConfigError(f"nothing to evaluate on: config {config.name!r} has no evaluation split; "
                      "pass --eval-file")
  mesh = sharding.build_mesh(config.mesh, devices)
  family = config.data.family
  tokenizer = (load_tokenizer(config.data.tokenizer) if config.data.kind == "task"
               else data_lib.ByteTokenizer())
  num_labels = len(data.label_names) if family == "classification" else None
  if adapter is not None and family == "classification":
    raise ConfigError("--adapter: a classification adapter carries its head in PEFT's "
                      "modules_to_save, which --adapter does not load yet; evaluate the run's "
                      "checkpoint instead (--eval-only --output-dir RUN)")
  if adapter is not None:
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
      raise ConfigError(f"--adapter {folder}: not a PEFT adapter folder (no adapter_config.json)")
    try:
      lora = read_peft_config(folder)
    except ValueError as e:
      raise ConfigError(f"--adapter {folder}: {e}") from e
    model = load_model(config.replace(lora=lora), mesh, print_fn=print_fn, progress=progress,
                       vocab_size=tokenizer.vocab_size)
    from adaprelora_jax.lora import load_peft_adapter  # noqa: PLC0415

    with jax.set_mesh(mesh):
      try:
        load_peft_adapter(model, folder)
      except ValueError as e:
        raise ConfigError(f"--adapter {folder}: {e}") from e
    label = "adapter"
  else:
    model, step = _restore_latest(config, output_dir, mesh, print_fn=print_fn,
                                  progress=progress, vocab_size=tokenizer.vocab_size,
                                  num_labels=num_labels)
    label = f"step{step}"
  return evaluate_run(config, output_dir, model, label=label, mesh=mesh, data=data,
                      tokenizer=tokenizer, **heads.eval_callables(model, mesh, family),
                      print_fn=print_fn, required=True)


def _restore_latest(config: TrainConfig, output_dir: Path, mesh, *, print_fn, progress,
                    vocab_size: int, num_labels: int | None):
  """The model of the newest restorable checkpoint in `output_dir/checkpoints`."""
  from adaprelora_jax.train.checkpoints import Checkpoints, TrainState  # noqa: PLC0415
  from adaprelora_jax.train.loop import load_model, trainable_filter  # noqa: PLC0415
  from adaprelora_jax.train.optim import make_optimizer  # noqa: PLC0415
  from adaprelora_jax.train.step import split_model  # noqa: PLC0415

  directory = output_dir / "checkpoints"
  if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
    raise ConfigError(f"nothing to evaluate: {directory} holds no checkpoint. Train first (the "
                      "same command without --eval-only), or pass --adapter DIR")
  checkpoints = Checkpoints(directory, keep=config.keep_checkpoints,
                            identity=run_identity(config))
  try:
    checkpoints.check_identity()
    model = load_model(config, mesh, print_fn=print_fn, progress=progress,
                       vocab_size=vocab_size, num_labels=num_labels)
    split, params = split_model(model, trainable_filter(config))
    optimizer = make_optimizer(config.optim, params, max_steps=config.max_steps,
                               lora_scale=_scale(split, params, config))
    with jax.set_mesh(mesh):
      opt_state = jax.jit(optimizer.init)(params)
    restored = checkpoints.restore_latest(TrainState(0, params, opt_state,
                                                     jax.random.key(config.seed)))
  finally:
    checkpoints.close()
  if restored is None:
    raise ConfigError(f"nothing to evaluate: no checkpoint in {directory} could be restored")
  print_fn(f"evaluating {directory / str(restored.step)}")
  with jax.set_mesh(mesh):
    return split.merge(restored.params), restored.step


def _scale(split, params, config: TrainConfig) -> float:
  from adaprelora_jax.lora import lora_scale_of  # noqa: PLC0415

  return lora_scale_of(split.merge(params)) if config.lora is not None else 1.0
