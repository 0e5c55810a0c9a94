"""A run's train step lowered and compiled from abstract shapes, nothing allocated: checks
that a paper-scale config (a 7B base on an FSDP x tensor mesh) builds, shards and
compiles before any accelerator time is spent, and gives XLA's memory plan.

The model (base weights in the config's dtype, LoRA factors, the task head) is built
with `nnx.eval_shape` inside the run's mesh, the optimizer state placed where a jitted
init puts it, and the loop's own jitted step (`make_train_step` with the task's loss) is
lowered for one step's batch `(grad_accum, batch_size, seq_len)` and compiled.

>>> import jax
>>> from adaprelora_jax.train.config import config_by_name
>>> config = config_by_name("llama_tiny_glue", mesh=None, batch_size=2, seq_len=16)
>>> plan = lower_train_step(config, jax.devices()[:1])
>>> [x.shape for x in plan.batch]
[(1, 2, 16), (1, 2, 16), (1, 2), (1, 2)]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adaprelora_jax.lora import lora_scale_of
from adaprelora_jax.train import heads, sharding
from adaprelora_jax.train.config import TrainConfig
from adaprelora_jax.train.optim import make_optimizer
from adaprelora_jax.train.step import make_train_step, split_model


@dataclasses.dataclass(frozen=True)
class LoweredStep:
  """The lowered step and the abstract arguments it was lowered for."""

  lowered: Any
  params: Any
  opt_state: Any
  frozen: Any
  batch: tuple[jax.ShapeDtypeStruct, ...]
  mesh: jax.sharding.Mesh


def _on_mesh(tree, mesh):
  """Abstract leaves with `NamedSharding`s on `mesh` (replicated where none is set)."""

  def leaf(x):
    spec = x.sharding.spec if isinstance(getattr(x, "sharding", None), NamedSharding) else P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

  return jax.tree.map(leaf, tree)


def batch_structs(config: TrainConfig, mesh) -> tuple[jax.ShapeDtypeStruct, ...]:
  """One step's batch as abstract arrays, split over the batch axis like `put_batch`."""
  lead = (config.grad_accum, config.batch_size)
  seq = config.data.seq_len
  if config.data.family == "classification":
    shapes = [(lead + (seq,), jnp.int32), (lead + (seq,), jnp.bool_), (lead, jnp.int32),
              (lead, jnp.float32)]
  else:
    shapes = [(lead + (seq,), jnp.int32), (lead + (seq,), jnp.int32),
              (lead + (seq,), jnp.float32)]
  return tuple(jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=sharding.batch_sharding(mesh, len(shape)))
               for shape, dtype in shapes)


def lower_train_step(config: TrainConfig, devices=None, *, num_labels: int = 2) -> LoweredStep:
  """The loop's train step of `config`, lowered from abstract shapes on the run's mesh
  over `devices` (`.lowered.compile()` compiles it; nothing is allocated). The base is
  the architecture `config.model.name` (a `--model-path` is not read)."""
  from adaprelora_jax.train.loop import build_named_model, trainable_filter  # noqa: PLC0415

  mesh = sharding.build_mesh(config.mesh, devices)
  sharding.check_batch(mesh, config.batch_size)
  family = config.data.family
  labels = num_labels if family == "classification" else None
  with jax.set_mesh(mesh):
    model = nnx.eval_shape(lambda: build_named_model(config, num_labels=labels))
    split, params = split_model(model, trainable_filter(config))
    split = dataclasses.replace(split, frozen=_on_mesh(split.frozen, mesh))
    params = _on_mesh(params, mesh)
    scale = lora_scale_of(model) if config.lora is not None else 1.0
    optimizer = make_optimizer(config.optim, params, lora_scale=scale,
                               max_steps=config.max_steps)
    placed = jax.jit(optimizer.init).lower(params).compile().output_shardings
    opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             jax.eval_shape(optimizer.init, params), placed)
    batch = batch_structs(config, mesh)
    step = make_train_step(split, optimizer, label_smoothing=config.optim.label_smoothing,
                           loss_fn=heads.LOSSES[family])
    lowered = step.lower(params, opt_state, split.frozen, *batch)
  return LoweredStep(lowered, params, opt_state, split.frozen, batch, mesh)
