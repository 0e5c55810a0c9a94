"""The optimizers of the package by name, for scripts and `--optimizer`: one import to compare them.

`adaprelora_jax.optimizers[name](learning_rate, **kwargs)` returns an
`optax.GradientTransformation`; the names are SPEC section 5's. `adamw` and `adafactor`
are optax's, as JAX users run them on LoRA factors today, with two changes that keep the
comparison fair and the sharded NNX case working (see their docstrings).
"""

from __future__ import annotations

import types
from typing import Any

import jax.numpy as jnp
import optax

from adaprelora_jax._src import paired
from adaprelora_jax._src.adaprelora import adaprelora
from adaprelora_jax._src.lora_pro import lora_pro
from adaprelora_jax._src.lora_rite import lora_rite
from adaprelora_jax._src.loraplus import loraplus
from adaprelora_jax._src.scaled_adamw import scaled_adamw


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any | None = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  """`optax.adamw` on the LoRA factors, the LoRA baseline (`weight_decay` defaults to 0).

  optax's default decay is 1e-4; 0 here, as for every optimizer of the family, so that
  a comparison by name compares the directions. `init` sees plain arrays.
  """
  return paired.with_plain_init(optax.adamw(
      learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask,
      mu_dtype=mu_dtype), "adamw")


def adafactor(
    learning_rate: optax.ScalarOrSchedule | None = None,
    *,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformation:
  """`optax.adafactor` on the LoRA factors, whose `init` works on sharded NNX state.

  Two things to know when comparing against it:

  * optax factors the second moment over a leaf's two *largest* axes, and only when the
    second largest has at least `min_dim_size_to_factor` (128) entries. A LoRA factor
    of rank r < 128 (`(in, r)`, `(r, out)`, stacked or not) is therefore never factored:
    it keeps a full second moment, the size of the factor, as Adam does, and the
    baseline is "Adafactor's update rule (relative step, update clipping, decay
    `t^-0.8`) with an unfactored second moment". Lowering `min_dim_size_to_factor`
    to r factors `(in, r)` into in- and r-statistics, but for stacked factors whose
    layer count exceeds r it would pick the layer axis instead: keep the default.
  * `nnx.Optimizer` hands `init` NNX Variables; optax builds its state with
    `jax.tree.map` over them, copying each parameter's sharding metadata onto state
    leaves of other shapes (the `(1,)` placeholders of unfactored leaves), which fails on
    a sharded model. Here `init` unwraps the Variables first.

  Under `optax.inject_hyperparams`, pass `static_args=("min_dim_size_to_factor",)`: it
  decides the state's shapes.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return paired.with_plain_init(optax.adafactor(
      learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
      decay_offset=decay_offset, multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      dtype_momentum=dtype_momentum, weight_decay_rate=weight_decay_rate, eps=eps,
      factored=factored, weight_decay_mask=weight_decay_mask), "adafactor")


def lora_pro_full(
    learning_rate: optax.ScalarOrSchedule,
    *,
    lora_scale: Any = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    damping: float = 1e-6,
    mask: Any | None = None,
    dimension_numbers: Any = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  """`lora_pro(learning_rate, mode="full", ...)`: m x n Adam state per pair (memory-hungry)."""
  return lora_pro(learning_rate, lora_scale=lora_scale, b1=b1, b2=b2, eps=eps,
                  weight_decay=weight_decay, mode="full", damping=damping, mask=mask,
                  dimension_numbers=dimension_numbers, mu_dtype=mu_dtype)


#: The optimizers of the package by name (read-only): ``optimizers[name](learning_rate,
#: **kwargs)`` returns an ``optax.GradientTransformation``; the names are SPEC section 5's.
optimizers = types.MappingProxyType({
    "adaprelora": adaprelora,
    "adamw": adamw,
    "adafactor": adafactor,
    "loraplus": loraplus,
    "scaled_adamw": scaled_adamw,
    "lora_pro": lora_pro,
    "lora_pro_full": lora_pro_full,
    "lora_rite": lora_rite,
})
