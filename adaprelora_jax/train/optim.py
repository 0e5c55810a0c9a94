"""The optimizer of a run: the schedule, global-norm clipping, and one optimizer per
group of trainable parameters (`optax.partition`): LoRA pairs to the chosen optimizer of
the registry with the model's own `lora_scale`, anything else trainable to AdamW.

>>> schedule = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=2,
...                                      schedule="linear"), max_steps=4)
>>> [round(float(schedule(i)), 2) for i in range(5)]
[0.5, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import optax

import adaprelora_jax as apl
from adaprelora_jax.train.config import OptimConfig

LORA = "lora"
OTHER = "other"


def make_schedule(config: OptimConfig, max_steps: int) -> optax.Schedule:
  """Linear warmup to the peak (`peak * (i + 1) / warmup` at step i, so no step has a
  zero rate), then cosine or linear decay to 0 at `max_steps`, or constant."""
  peak, warmup = config.learning_rate, min(config.warmup_steps, max_steps)
  if config.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif config.schedule == "linear":
    after = optax.linear_schedule(peak, 0.0, max(1, max_steps - warmup))
  else:
    after = optax.cosine_decay_schedule(peak, max(1, max_steps - warmup))
  if warmup == 0:
    return after
  ramp = optax.linear_schedule(peak / warmup, peak, warmup - 1)
  return optax.join_schedules([ramp, after], [warmup])


def param_labels(params: Any) -> Any:
  """`LORA` for the leaves of a LoRA pair, `OTHER` for every other leaf."""
  pairs = set()
  if any(_is_factor(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]):
    for a, b in apl.lora_pairs(params):
      pairs.update((a, b))

  def label(path, _):
    return LORA if tuple(path) in pairs else OTHER

  return jax.tree_util.tree_map_with_path(label, params)


def _is_factor(path) -> bool:
  last = path[-1]
  name = str(getattr(last, "key", getattr(last, "name", last)))
  return name.endswith(("lora_a", "lora_b"))


def make_optimizer(config: OptimConfig, params: Any, *, lora_scale: Any,
                   max_steps: int) -> optax.GradientTransformation:
  """Clipping, then the LoRA optimizer on the pairs and AdamW on the rest, both on the
  run's schedule (the other parameters' peak is `other_learning_rate`)."""
  labels = param_labels(params)
  present = set(jax.tree.leaves(labels))
  transforms = {}
  if LORA in present:
    factory = apl.optimizers[config.optimizer]
    kwargs = {}
    if "lora_scale" in inspect.signature(factory).parameters:
      kwargs["lora_scale"] = lora_scale
    kwargs.update(config.optimizer_kwargs())
    transforms[LORA] = factory(make_schedule(config, max_steps), **kwargs)
  if OTHER in present:
    other = config if config.other_learning_rate is None else OptimConfig(
        optimizer=config.optimizer, learning_rate=config.other_learning_rate,
        schedule=config.schedule, warmup_steps=config.warmup_steps)
    transforms[OTHER] = optax.adamw(make_schedule(other, max_steps),
                                    weight_decay=config.other_weight_decay)
  clip = (optax.clip_by_global_norm(config.max_grad_norm) if config.max_grad_norm
          else optax.identity())
  return optax.chain(clip, optax.partition(transforms, labels))
