"""Adapters in PEFT's format: `save_peft_adapter`, `load_peft_adapter`.

A PEFT LoRA adapter is a folder with `adapter_config.json` (`LoraConfig`'s fields) and
`adapter_model.safetensors`, one pair of tensors per adapted Hugging Face module and
layer, in PyTorch's `(out, in)` convention:

  `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` `(r, in)`  = `lora_a[0].T`
  `base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight` `(out, r)` = `lora_b[0].T`

for both `nn.Linear` and GPT-2's `Conv1D` (PEFT's `fan_in_fan_out` only changes how it
merges a Conv1D). `peft.PeftModel.from_pretrained(hf_model, folder)` then gives the same
logits as our model, and adapters trained in PyTorch load into ours.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from adaprelora_jax.lora.apply import attach, lora_modules, module_names, path_keys
from adaprelora_jax.lora.apply import select_targets
from adaprelora_jax.lora.config import LoRAConfig
from adaprelora_jax.lora.layer import is_linear, stack_shape
from adaprelora_jax.models.base import CausalLM
from adaprelora_jax.models.checkpoint import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight")

# adapter_config.json fields whose non-default values change what the adapter computes
# in ways this package does not implement.
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "a bias on lora_B",
    "modules_to_save": "fully trained extra modules",
    "layers_to_transform": "adapters on some layers only",
    "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas",
    "layer_replication": "layer replication",
    "target_parameters": "adapters on parameters",
    "trainable_token_indices": "trainable token embeddings",
    "use_qalora": "QA-LoRA",
}


def _check_hf_model(model) -> None:
  if not isinstance(model, CausalLM):
    raise TypeError(
        f"PEFT adapters name Hugging Face modules; {type(model).__name__} has no Hugging "
        "Face names. Use a model of adaprelora_jax.models (from_pretrained, build_model).")


def _per_layer(model, path, module) -> list[tuple[int | None, str]]:
  """`(layer, Hugging Face module name)` of each layer of the linear `module`."""
  names = module_names(model, path)
  if stack_shape(module):
    return list(enumerate(names))
  return [(None, names[0])]


def save_peft_adapter(model: nnx.Module, path: str | Path, *,
                      base_model_name_or_path: str | None = None) -> None:
  """Writes the model's LoRA adapters as a PEFT adapter folder.

  `adapter_model.safetensors` holds `base_model.model.<module>.lora_A.weight = lora_a.T`
  `(r, in)` and `.lora_B.weight = lora_b.T` `(out, r)` per Hugging Face module and layer
  (float32 factors stay float32); `adapter_config.json` holds `peft_type: "LORA"`,
  `task_type: "CAUSAL_LM"`, `r`, `lora_alpha`, `target_modules`, `use_rslora`,
  `lora_dropout`, `fan_in_fan_out` (true for GPT-2's Conv1D), `bias: "none"`. The adapter
  is the same whether the model is merged or not.

  Args:
    model: a model of `adaprelora_jax.models` with adapters from one `LoRAConfig`.
    path: the folder (created if needed).
    base_model_name_or_path: recorded in the config for PEFT (e.g. the hub id).

  Raises:
    TypeError: a model without Hugging Face names.
    ValueError: no adapter, or adapters from several configs (PEFT has one r and alpha).
  """
  _check_hf_model(model)
  modules = lora_modules(model)
  if not modules:
    raise ValueError(f"{type(model).__name__} has no LoRA adapter to save")
  configs = {m.lora_config for _, m in modules}
  if len(configs) != 1:
    raise ValueError("the model's adapters come from several LoRAConfigs; a PEFT adapter "
                     "has one r and lora_alpha for all modules")
  config = configs.pop()
  tensors = {}
  for module_path, module in modules:
    a = np.asarray(jax.device_get(module.lora_a.get_value()))
    b = np.asarray(jax.device_get(module.lora_b.get_value()))
    for layer, name in _per_layer(model, module_path, module):
      a_i, b_i = (a, b) if layer is None else (a[layer], b[layer])
      tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
      tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
  targets = config.target_modules
  peft_config = {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "inference_mode": True,
      "r": config.rank,
      "lora_alpha": config.alpha,
      "target_modules": targets if isinstance(targets, str) else list(targets),
      "exclude_modules": (config.exclude_modules if not isinstance(config.exclude_modules, tuple)
                          else list(config.exclude_modules)),
      "lora_dropout": config.dropout,
      "use_rslora": config.use_rslora,
      "fan_in_fan_out": any(not m.hf_transposed for _, m in modules),
      "bias": "none",
      "init_lora_weights": True,
      "modules_to_save": None,
  }
  folder = Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file(tensors, folder / ADAPTER_WEIGHTS,
                              metadata={"format": "pt", "model_type": model.config.model_type})
  (folder / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")


def read_peft_config(path: str | Path) -> LoRAConfig:
  """The `LoRAConfig` of a PEFT adapter folder; refuses adapters this package cannot run
  (not LoRA, DoRA, biases, per-module ranks, ...), saying which field."""
  file = Path(path) / ADAPTER_CONFIG
  cfg = read_json(file, "no PEFT adapter config")
  if cfg.get("peft_type") != "LORA":
    raise ValueError(f"{file}: peft_type {cfg.get('peft_type')!r} is not LORA")
  for field, what in _UNSUPPORTED.items():
    if cfg.get(field):
      raise ValueError(f"{file}: {field}={cfg[field]!r} ({what}) is not supported")
  if cfg.get("bias", "none") != "none":
    raise ValueError(f"{file}: bias={cfg['bias']!r} (trained base biases) is not supported; "
                     "only bias='none'")
  for field in ("r", "lora_alpha", "target_modules"):
    if cfg.get(field) is None:
      raise ValueError(f"{file}: {field} is missing")
  return LoRAConfig(rank=cfg["r"], alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"],
                    dropout=float(cfg.get("lora_dropout") or 0.0),
                    use_rslora=bool(cfg.get("use_rslora", False)),
                    exclude_modules=cfg.get("exclude_modules"))


def _read_tensors(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  file = folder / ADAPTER_WEIGHTS
  if not file.is_file():
    if (folder / "adapter_model.bin").is_file():
      raise ValueError(f"{folder}: adapter_model.bin (a pickled PyTorch file) is not read; "
                       "save the adapter with safe_serialization=True (PEFT's default)")
    raise FileNotFoundError(f"{file}: no adapter weights")
  try:
    with safetensors.safe_open(file, framework="numpy") as f:
      metadata = f.metadata() or {}
    return safetensors.numpy.load_file(file), metadata
  except safetensors.SafetensorError as e:
    raise ValueError(f"{file}: not a readable safetensors file ({e})") from e


# Tensors of an adapter file by module: {module path: (module, {layer: {"A"/"B": array}})}.
Found = dict[tuple, tuple[object, dict[int | None, dict[str, np.ndarray]]]]


def _collect(model, config: LoRAConfig, tensors: dict[str, np.ndarray], file: Path) -> Found:
  """The adapter's tensors by module and layer; errors for keys that are not LoRA factors
  of a linear module of `model`, and for shapes that do not fit it."""
  index = {}  # Hugging Face name -> (module path, layer, module)
  for module_path, module in nnx.iter_modules(model):
    if module_path and is_linear(module) and not any(str(k).startswith("lora_")
                                                     for k in module_path):
      for layer, name in _per_layer(model, module_path, module):
        index[name] = (tuple(module_path), layer, module)
  found: Found = {}
  for key in sorted(tensors):
    match = _KEY.fullmatch(key)
    if match is None:
      raise ValueError(
          f"{file}: tensor {key!r} is not a LoRA factor of a module (expected "
          f"'{PREFIX}<module>.lora_A.weight' / '.lora_B.weight'; DoRA magnitudes, embedding "
          "adapters and modules_to_save are not supported)")
    name, factor = match["module"], match["factor"]
    if name not in index:
      raise ValueError(
          f"{file}: tensor {key!r} adapts {name!r}, which is not a linear module of this "
          f"{type(model).__name__} ({model.config.model_type}; e.g. "
          f"{next(iter(index), 'none')!r}): the adapter was made for another base "
          "architecture")
    module_path, layer, module = index[name]
    n, m = module.kernel.shape[-2:]
    expected = (config.rank, n) if factor == "A" else (m, config.rank)
    shape = tuple(tensors[key].shape)
    if shape != expected:
      rank_axis = 0 if factor == "A" else 1
      why = (f"adapter_config.json has r={config.rank}"
             if len(shape) == 2 and shape[rank_axis] != config.rank else
             f"the base module is {n} -> {m}: another base model size")
      raise ValueError(f"{file}: tensor {key!r} has shape {shape}, expected {expected} "
                       f"(lora_{factor}.weight of {name}: {why})")
    layers = found.setdefault(module_path, (module, {}))[1]
    layers.setdefault(layer, {})[factor] = tensors[key]
  return found


def _check_coverage(model, found: Found, wanted: dict, source: str, file: Path) -> None:
  """Both factors of every layer of every `wanted` module, and nothing else."""
  for module_path, module in wanted.items():
    layers = found.get(module_path, (module, {}))[1]
    for layer, name in _per_layer(model, module_path, module):
      for factor in "AB":
        if factor not in layers.get(layer, {}):
          raise ValueError(f"{file}: tensor '{PREFIX}{name}.lora_{factor}.weight' is missing "
                           f"({name} is among {source})")
  for module_path, (module, layers) in found.items():
    if module_path not in wanted:
      layer, factors = next(iter(layers.items()))
      name = dict(_per_layer(model, module_path, module))[layer]
      raise ValueError(f"{file}: tensor '{PREFIX}{name}.lora_{sorted(factors)[0]}.weight' "
                       f"adapts {name}, which is not among {source}")


def load_peft_adapter(model: nnx.Module, path: str | Path, *, rngs: nnx.Rngs | None = None,
                      param_dtype=jnp.float32, is_trainable: bool = False) -> nnx.Module:
  """Loads a PEFT LoRA adapter folder into `model`, in place (ours or PyTorch's).

  A model without adapters gets them from the adapter's config (`apply_lora` on exactly
  the modules the adapter has tensors for); a model with adapters must have them on the
  same modules, with the same rank and scale. Everything is checked before the model is
  changed: the config (`peft_type` LORA, no DoRA, biases or per-module ranks), that each
  tensor names a linear module of this architecture, its shape (`lora_A` `(r, in)`,
  `lora_B` `(out, r)`), and that no tensor is missing or extra. Errors name the tensor
  and say why.

  Args:
    model: a model of `adaprelora_jax.models`, not merged.
    path: the adapter folder (`adapter_config.json`, `adapter_model.safetensors`).
    rngs: seeds the adapters' dropout when adding adapters (default `nnx.Rngs(0)`).
    param_dtype: dtype of new factors (loaded values are cast to the factors' dtype).
    is_trainable: keep the adapters' dropout active (training); by default it is off,
      like PEFT's inference mode (`model.train()` turns it back on).

  Returns:
    `model`.
  """
  _check_hf_model(model)
  folder = Path(path)
  config = read_peft_config(folder)
  tensors, metadata = _read_tensors(folder)
  file = folder / ADAPTER_WEIGHTS
  ours = model.config.model_type
  if metadata.get("model_type", ours) != ours:
    raise ValueError(f"{file}: adapter for a {metadata['model_type']} model, this model is "
                     f"a {ours} ({type(model).__name__})")
  existing = lora_modules(model)
  merged = [".".join(path_keys(p)) for p, m in existing if m.lora_merged]
  if merged:
    raise ValueError(f"{type(model).__name__} has merged adapters ({merged[0]}, ...): "
                     "unmerge_lora first")

  found = _collect(model, config, tensors, file)
  if existing:
    wanted = {tuple(p): m for p, m in existing}
    source = "the model's LoRA layers"
  else:
    try:
      wanted = {t.path: t.module for t in select_targets(model, config)}
    except ValueError as e:
      raise ValueError(f"{folder / ADAPTER_CONFIG}: {e}") from e
    source = f"the layers target_modules {config.target_modules!r} selects"
  _check_coverage(model, found, wanted, source, file)
  for module_path, module in existing:
    if module.lora_config.rank != config.rank or module.lora_scale != config.scale:
      raise ValueError(
          f"{folder / ADAPTER_CONFIG}: r={config.rank}, scale {config.scale} (lora_alpha "
          f"{config.alpha}, use_rslora {config.use_rslora}); the model's adapter on "
          f"{'.'.join(path_keys(module_path))} has r={module.lora_config.rank}, scale "
          f"{module.lora_scale}")

  if not existing:
    attach(model, list(wanted.items()), config, rngs=nnx.Rngs(0) if rngs is None else rngs,
           param_dtype=param_dtype)
  for module_path, module in lora_modules(model):
    layers = found[tuple(module_path)][1]
    for factor, variable in (("A", module.lora_a), ("B", module.lora_b)):
      if None in layers:
        value = layers[None][factor].T
      else:
        value = np.stack([layers[layer][factor].T for layer in sorted(layers)])
      old = variable.get_value()
      value = jnp.asarray(value, old.dtype)
      variable.set_value(jax.device_put(value, old.sharding))
    if module.lora_dropout is not None and not is_trainable:
      module.lora_dropout.eval()
  return model

