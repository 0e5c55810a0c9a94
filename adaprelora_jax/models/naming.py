"""The one-to-one map between NNX paths and Hugging Face names.

An NNX path is the Hugging Face module path with the layer index left out (the layers
are stacked along a leading axis) and the leaf renamed (`kernel`, `embedding`, `scale`
-> `weight`):

>>> from flax import nnx
>>> from adaprelora_jax.models import build_model, config_by_name
>>> model = nnx.eval_shape(lambda: build_model(config_by_name("tiny-llama")))
>>> hf_param_name(model, ("model", "layers", "self_attn", "q_proj", "kernel"), layer=1)
'model.layers.1.self_attn.q_proj.weight'
>>> hf_module_name(model, ("model", "layers", "mlp", "down_proj"), layer=0)
'model.layers.0.mlp.down_proj'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaprelora_jax.models.layers import HF_LEAF_NAMES


def _keys(path: Sequence[Any]) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def is_stacked(model, path: Sequence[Any]) -> bool:
  """Whether `path` lies under the stacked layers (its arrays have a layer axis)."""
  layers = model.hf_layers_path
  return _keys(path)[:len(layers)] == layers


def hf_module_name(model, module_path: Sequence[Any], layer: int | None = None) -> str:
  """The Hugging Face module name of the NNX module at `module_path`.

  `layer` is required under the stacked layers and refused elsewhere.
  """
  keys = _keys(module_path)
  if is_stacked(model, keys):
    if layer is None:
      raise ValueError(f"{'.'.join(keys)} is under the stacked layers: pass layer=")
    if not 0 <= layer < model.config.num_layers:
      raise ValueError(f"layer {layer} out of range for {model.config.num_layers} layers")
    n = len(model.hf_layers_path)
    keys = keys[:n] + (str(layer),) + keys[n:]
  elif layer is not None:
    raise ValueError(f"{'.'.join(keys)} is not under the stacked layers: no layer index")
  return ".".join(keys)


def hf_param_name(model, path: Sequence[Any], layer: int | None = None) -> str:
  """The Hugging Face tensor name of the NNX parameter at `path`."""
  keys = _keys(path)
  if keys[-1] not in HF_LEAF_NAMES:
    raise ValueError(f"{'.'.join(keys)}: no Hugging Face name for leaf {keys[-1]!r}")
  return hf_module_name(model, keys[:-1], layer) + "." + HF_LEAF_NAMES[keys[-1]]


def hf_transposed(model, path: Sequence[Any]) -> bool:
  """Whether the Hugging Face tensor of `path` is the transpose of the NNX array (per
  layer): true for `nn.Linear` kernels, false for GPT-2's Conv1D kernels."""
  keys = _keys(path)
  if keys[-1] != "kernel":
    return False
  module = model
  for key in keys[:-1]:
    module = getattr(module, key)
  return bool(module.hf_transposed)
