"""`apply_lora`: LoRA adapters on the targeted linear layers of any NNX model, and the
queries the training code needs (`lora_modules`, `lora_state`, `lora_scale_of`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from adaprelora_jax.lora.config import LoRAConfig
from adaprelora_jax.lora.layer import LoRALinear, add_adapter, has_lora, is_linear
from adaprelora_jax.models import naming
from adaprelora_jax.models.base import CausalLM

Path = tuple[Any, ...]


def path_keys(path: Sequence[Any]) -> tuple[str, ...]:
  """A module path (NNX path parts or `jax.tree_util` keys) as strings."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def module_names(model, path: Path) -> tuple[str, ...]:
  """The names targets are matched against: Hugging Face module names for our models
  (one per layer under the stacked layers), the dotted NNX path otherwise."""
  if isinstance(model, CausalLM):
    if naming.is_stacked(model, path):
      return tuple(naming.hf_module_name(model, path, i) for i in range(model.config.num_layers))
    return (naming.hf_module_name(model, path),)
  return (".".join(path_keys(path)),)


def _is_output_head(model, path: Path) -> bool:
  return path_keys(path) == ("lm_head",)


def _get(root, path: Path):
  node = root
  for key in path:
    node = node[key] if isinstance(key, int) or isinstance(node, Mapping) else getattr(node, key)
  return node


def _replace(root, path: Path, new) -> None:
  parent, key = _get(root, path[:-1]), path[-1]
  if isinstance(key, int) or isinstance(parent, Mapping):
    parent[key] = new
  else:
    setattr(parent, key, new)


def _inside_adapter(path: Path) -> bool:
  return any(str(k).startswith("lora_") for k in path)


@dataclasses.dataclass(frozen=True)
class _Target:
  path: Path
  module: Any
  names: tuple[str, ...]


def select_targets(model, config: LoRAConfig) -> list[_Target]:
  """The linear modules `config` selects, in tree order; errors for a matched module
  that is not linear, a stack matched on some layers only, or no match at all."""
  targets, linear_names = [], []
  for path, module in nnx.iter_modules(model):
    if not path or _inside_adapter(path):
      continue
    names = module_names(model, path)
    if is_linear(module):
      linear_names.append(names[0])
    head = _is_output_head(model, path)
    matched = [config.matches(name, is_output_head=head) for name in names]
    if not any(matched):
      continue
    if not is_linear(module):
      if config.target_modules == "all-linear":
        continue
      raise ValueError(
          f"target_modules {config.target_modules!r} matches {names[0]}, a "
          f"{type(module).__name__}: LoRA adapts linear layers only "
          "(adaprelora_jax.models.Linear, flax.nnx.Linear). Name the projections instead.")
    if not all(matched):
      chosen = [i for i, hit in enumerate(matched) if hit]
      raise ValueError(
          f"target_modules {config.target_modules!r} matches layers {chosen} of "
          f"{len(names)} of the stacked {'.'.join(path_keys(path))}: the layers are stacked "
          "along one axis and share one adapter layout, so select all of them or none.")
    targets.append(_Target(tuple(path), module, names))
  if not targets:
    short = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
    # An example full name, from the stacked layers if there are any.
    stacked = [name for name in linear_names if any(k.isdigit() for k in name.split("."))]
    example = f" (e.g. {(stacked or linear_names)[0]})" if linear_names else ""
    raise ValueError(
        f"target_modules {config.target_modules!r} matches no linear module of "
        f"{type(model).__name__}. Its linear modules: {', '.join(short) or 'none'}{example}. "
        "A list matches names or dotted name suffixes, a string is a regex matched against "
        "the whole module name.")
  return targets


def attach(model, targets: Sequence[tuple[Path, Any]], config: LoRAConfig, *, rngs: nnx.Rngs,
           param_dtype) -> None:
  """Add `config`'s adapter to the linear modules at `targets` (in place)."""
  for path, module in targets:
    if has_lora(module):
      raise ValueError(f"{'.'.join(path_keys(path))} already has a LoRA adapter")
  for path, module in targets:
    if type(module) is nnx.Linear:
      module = LoRALinear(module)
      _replace(model, path, module)
    dropout_key = rngs["dropout"]() if config.dropout > 0 else None
    add_adapter(module, config, key=rngs.params(), dropout_key=dropout_key,
                param_dtype=param_dtype)


def apply_lora(model: nnx.Module, config: LoRAConfig, *, rngs: nnx.Rngs,
               param_dtype=jnp.float32) -> nnx.Module:
  """Adds LoRA adapters to the linear layers of `model` that `config` targets, in place.

  Each targeted layer keeps its frozen `nnx.Param` `kernel (..., in, out)` and `bias` at
  their paths and gains `nnx.LoRAParam` siblings `lora_a (..., in, r)` (PEFT's default
  init, uniform in `+-1/sqrt(in)`) and `lora_b (..., r, out)` (zeros), so the model's
  output is unchanged until `lora_b` is trained:
  `y = x @ (kernel + s * lora_a @ lora_b) + bias`, `s = config.scale`. Leading axes of
  stacked layers are kept (one adapter per layer). On a mesh, `lora_a` is sharded like
  the kernel's `in` axis and `lora_b` like its `out` axis (rank replicated).
  `adaprelora_jax.models.Linear` layers are adapted in place, `nnx.Linear` layers are
  replaced by `LoRALinear` (same Variables).

  Args:
    model: any NNX module; our models match `config.target_modules` against Hugging Face
      module names (`model.layers.0.self_attn.q_proj`), other modules against their
      dotted NNX path (`blocks.0.proj`).
    config: rank, alpha, targets, dropout, rsLoRA.
    rngs: the `params` stream (or `default`) initialises `lora_a`; the `dropout` stream
      (or `default`) seeds the adapters' dropout when `config.dropout > 0`.
    param_dtype: dtype of the factors (float32, also for bf16 base weights).

  Returns:
    `model`, with the adapters.

  Raises:
    ValueError: the targets match nothing (the message lists the linear modules), match
      a module that is not linear, or match only some layers of a stack; a target
      already has an adapter.

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> import adaprelora_jax as apl
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.up = nnx.Linear(4, 8, rngs=rngs)
  ...     self.down = nnx.Linear(8, 4, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.down(jnp.tanh(self.up(x)))
  >>> model = apply_lora(MLP(nnx.Rngs(0)), LoRAConfig(2, 4, ["up", "down"]), rngs=nnx.Rngs(1))
  >>> model.up.lora_a.shape, model.up.lora_b.shape, lora_scale_of(model)
  ((4, 2), (2, 8), 2.0)
  >>> optimizer = nnx.Optimizer(model, apl.adaprelora(1e-3, lora_scale=lora_scale_of(model)),
  ...                           wrt=nnx.LoRAParam)
  """
  attach(model, [(t.path, t.module) for t in select_targets(model, config)], config, rngs=rngs,
         param_dtype=param_dtype)
  return model


def lora_modules(model: nnx.Module) -> list[tuple[Path, Any]]:
  """`(path, module)` of every layer of `model` that carries a LoRA adapter, in tree order."""
  return [(tuple(path), m) for path, m in nnx.iter_modules(model) if has_lora(m)]


def lora_state(model: nnx.Module) -> nnx.State:
  """The adapters' factors: `nnx.state(model, nnx.LoRAParam)`."""
  return nnx.state(model, nnx.LoRAParam)


def lora_scale_of(model: nnx.Module) -> float | Callable[[Sequence[Any]], float]:
  """The LoRA scale the optimizer needs: `adaprelora(..., lora_scale=lora_scale_of(model))`.

  A float when every adapter has the same scale; otherwise a callable from the key path
  of a pair's parent (as `jax.tree_util` gives it on `nnx.state(model, nnx.LoRAParam)`)
  to that adapter's scale. A wrong scale multiplies the learning rate, so take it from
  here rather than recomputing `alpha / rank`.

  Raises:
    ValueError: `model` has no adapter.
  """
  scales = {path_keys(path): float(m.lora_scale) for path, m in lora_modules(model)}
  if not scales:
    raise ValueError(f"{type(model).__name__} has no LoRA adapter: call apply_lora first")
  values = set(scales.values())
  if len(values) == 1:
    return values.pop()

  def scale_of(parent_path: Sequence[Any]) -> float:
    keys = path_keys(parent_path)
    if keys not in scales:
      raise ValueError(f"{'.'.join(keys) or '<root>'} is not a LoRA layer of "
                       f"{type(model).__name__}; its LoRA layers: "
                       f"{', '.join('.'.join(k) for k in scales)}")
    return scales[keys]

  return scale_of
