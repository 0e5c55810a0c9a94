"""In-process LoRA runs on the package base, shared by the quality suite and the
early-phase diagnostics: the base is loaded once, one train step is compiled per
optimizer and reused for every learning rate and seed.

The learning rate lives in the optimizer state: the LoRA optimizer is
`optax.inject_hyperparams` over `peak`, with the schedule `peak * unit(step)` (the
training loop's warmup + cosine at peak 1). The step is built once from an optimizer
made with `peak = 1`; each run initialises its state from an optimizer made with its own
peak (the update reads the peak from the state), so a new rate or seed never recompiles.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import adaprelora_jax as apl
from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_scale_of
from adaprelora_jax.models import from_pretrained
from adaprelora_jax.train import data as data_lib
from adaprelora_jax.train.base_model import ensure_package_base
from adaprelora_jax.train.config import OptimConfig
from adaprelora_jax.train.optim import LORA, make_schedule, param_labels
from adaprelora_jax.train.step import make_eval_step, make_train_step, split_model

GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
# Named settings beside the registry's defaults: name -> (registry optimizer, keyword
# arguments). AdaPreLoRA without momentum is the early-phase recommendation
# (docs/training.md); the registry's `adaprelora` keeps the SPEC default b1 = 0.9.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "adaprelora_b1_none": ("adaprelora", {"b1": None}),
}


def resolve(name: str) -> tuple[str, dict[str, Any]]:
  """(registry optimizer, keyword arguments) of a registry name or a `VARIANTS` name."""
  if name in VARIANTS:
    return VARIANTS[name]
  if name in apl.optimizers:
    return name, {}
  raise ValueError(f"unknown optimizer {name!r}; known: "
                   f"{', '.join([*apl.optimizers, *VARIANTS])}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What every run of a task shares (all but optimizer, learning rate and seed)."""

  steps: int
  batch_size: int
  warmup_steps: int = 10
  schedule: str = "cosine"
  max_grad_norm: float | None = 1.0
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = GPT2_TARGETS
  # Log the training loss every this many steps (one host sync each).
  log_every: int = 5
  # Multiplies the initial `lora_a` (PEFT's uniform init); `lora_b` starts at 0.
  a_init_scale: float = 1.0
  # More keyword arguments of every LoRA optimizer (e.g. `{"b1": None}`).
  options: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    if self.steps <= 0 or self.batch_size <= 0 or self.log_every <= 0:
      raise ValueError(f"steps, batch_size and log_every must be positive: {self}")
    if self.warmup_steps < 0 or self.warmup_steps > self.steps:
      raise ValueError(f"warmup_steps must be in [0, steps]: {self}")


@dataclasses.dataclass
class RunResult:
  """One run: the logged training losses, the final validation loss, its parameters."""

  optimizer: str
  learning_rate: float
  seed: int
  losses: list[tuple[int, float]]
  val_loss: float
  seconds: float
  params: Any = dataclasses.field(repr=False, default=None)

  @property
  def diverged(self) -> bool:
    return not np.isfinite(self.val_loss)


def lora_factory(name: str, lora_scale, options: dict[str, Any] | None = None
                 ) -> Callable[..., optax.GradientTransformation]:
  """`factory(peak, unit_schedule)`: optimizer `name` (registry or `VARIANTS`) on
  `peak * unit_schedule` (`options`: more keyword arguments, e.g. `b1` or `damping`)."""
  registry_name, variant_options = resolve(name)
  base = apl.optimizers[registry_name]
  kwargs = {"lora_scale": lora_scale} if "lora_scale" in inspect.signature(base).parameters \
      else {}
  kwargs.update(variant_options)
  kwargs.update(options or {})

  def make(peak, unit):
    return base(lambda count: peak * unit(count), **kwargs)

  return make


def make_optimizer(name: str, params, *, lora_scale, spec: RunSpec, peak: float,
                   options: dict[str, Any] | None = None) -> optax.GradientTransformation:
  """Global-norm clipping, then optimizer `name` on the LoRA pairs with the peak learning
  rate `peak` held in its state (the training loop's `make_optimizer`, minus the AdamW
  group, which a LoRA-only model does not have)."""
  labels = param_labels(params)
  if set(jax.tree.leaves(labels)) != {LORA}:
    raise ValueError("the runs train LoRA pairs only")
  unit = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=spec.warmup_steps,
                                   schedule=spec.schedule), spec.steps)
  factory = lora_factory(name, lora_scale, options)
  inner = optax.inject_hyperparams(lambda peak: factory(peak, unit))(peak=peak)
  clip = (optax.clip_by_global_norm(spec.max_grad_norm) if spec.max_grad_norm
          else optax.identity())
  return optax.chain(clip, inner)


class Harness:
  """The package base with a LoRA adapter, split once; runs share its compiled steps."""

  def __init__(self, spec: RunSpec, *, base_path: str | Path | None = None):
    self.spec = spec
    self.base_path = Path(base_path) if base_path else ensure_package_base(
        progress=False, print_fn=lambda _: None)
    self.lora = LoRAConfig(rank=spec.rank, alpha=spec.alpha, target_modules=spec.targets)
    model = self.model(0)
    self.split, params0 = split_model(model, nnx.LoRAParam)
    self.lora_scale = lora_scale_of(model)
    self._steps: dict[str, Callable] = {}
    self._eval = make_eval_step(self.split)
    self.params_template = params0

  def model(self, seed: int) -> nnx.Module:
    """A fresh base with the adapter initialised from `seed` (`lora_b = 0`)."""
    model = from_pretrained(self.base_path)
    apply_lora(model, self.lora, rngs=nnx.Rngs(params=jax.random.fold_in(
        jax.random.key(seed), 1)))
    return model

  def init_params(self, seed: int):
    _, params = split_model(self.model(seed), nnx.LoRAParam)
    if self.spec.a_init_scale != 1.0:
      params = jax.tree_util.tree_map_with_path(
          lambda path, x: x * self.spec.a_init_scale
          if str(getattr(path[-1], "key", "")).endswith("lora_a") else x, params)
    return params

  def optimizer(self, name: str, peak: float) -> optax.GradientTransformation:
    return make_optimizer(name, self.params_template, lora_scale=self.lora_scale,
                          spec=self.spec, peak=peak, options=dict(self.spec.options))

  def train_step(self, name: str):
    if name not in self._steps:
      self._steps[name] = make_train_step(self.split, self.optimizer(name, 1.0))
    return self._steps[name]

  def val_loss(self, params, data: data_lib.TokenizedData, batch_size: int = 32) -> float:
    loss = tokens = 0.0
    for batch in data_lib.eval_batches(data, batch_size):
      sums = self._eval(params, self.split.frozen, batch.inputs, batch.labels,
                        batch.loss_mask)
      loss += float(sums.loss)
      tokens += float(sums.tokens)
    return loss / max(tokens, 1.0)

  def run(self, name: str, lr: float, seed: int, train: data_lib.TokenizedData,
          val: data_lib.TokenizedData | None,
          on_step: Callable[[int, Any, Any, Any], None] | None = None,
          stop_after: int | None = None) -> RunResult:
    """Optimizer `name` at peak `lr` from the adapter init and data order of `seed`.

    `on_step(step, params_before, batch, opt_state)` is called before each step (the
    diagnostics use it). A run whose loss turns non-finite stops and reports NaN;
    `stop_after` ends the run early (the schedule stays that of `spec.steps`).
    """
    start = time.perf_counter()
    spec = self.spec
    step_fn = self.train_step(name)
    params = self.init_params(seed)
    opt_state = self.optimizer(name, lr).init(params)
    losses = []
    pending = []
    last = spec.steps if stop_after is None else min(stop_after, spec.steps)
    for step in range(last):
      batch = data_lib.step_batch(train, seed, step, batch_size=spec.batch_size, grad_accum=1)
      if on_step is not None:
        on_step(step, params, batch, opt_state)
      params, opt_state, metrics = step_fn(params, opt_state, self.split.frozen,
                                           batch.inputs, batch.labels, batch.loss_mask)
      pending.append((step + 1, metrics.loss))
      if (step + 1) % spec.log_every == 0 or step + 1 == last:
        logged = [(s, float(v)) for s, v in pending]
        pending = []
        losses.append((logged[-1][0], float(np.mean([v for _, v in logged]))))
        if not np.isfinite(losses[-1][1]):
          return RunResult(name, lr, seed, losses, float("nan"),
                           time.perf_counter() - start, None)
    val_loss = self.val_loss(params, val) if val is not None else float("nan")
    host = jax.tree.map(np.asarray, params)
    return RunResult(name, lr, seed, losses, val_loss, time.perf_counter() - start, host)

  def merged(self, params) -> nnx.Module:
    """The model with trained adapter `params` (for generation and scoring)."""
    return self.split.merge(jax.tree.map(jnp.asarray, params))
