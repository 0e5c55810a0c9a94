"""What a run leaves behind for other tools: the base model as a Hugging Face checkpoint
folder (`config.json` + `model.safetensors`, loadable by `transformers` and by
`adaprelora_jax.models.from_pretrained`), and the adapter in PEFT's format (with the
classification head, if any, as PEFT's `modules_to_save`).

>>> from adaprelora_jax.models import config_by_name, config_from_hf_dict
>>> cfg = config_by_name("tiny-llama")
>>> config_from_hf_dict(hf_config_dict(cfg)) == cfg
True
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from flax import nnx

from adaprelora_jax.lora import save_peft_adapter
from adaprelora_jax.lora.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PREFIX
from adaprelora_jax.models import naming
from adaprelora_jax.models.base import CausalLM
from adaprelora_jax.models.config import ModelConfig
from adaprelora_jax.models.hf_config import config_from_hf_dict
from adaprelora_jax.train.heads import HEAD_NAME, HeadParam, has_score_head

_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                  "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _rope_dict(config: ModelConfig) -> dict[str, Any]:
  rope = config.rope
  params: dict[str, Any] = {"rope_type": rope.rope_type, "rope_theta": rope.theta}
  if rope.rope_type in ("linear", "llama3"):
    params["factor"] = rope.factor
  if rope.rope_type == "llama3":
    params.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor,
                  original_max_position_embeddings=rope.original_max_position_embeddings)
  return params


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
  """The Hugging Face `config.json` of `config` (transformers 5 field names).

  Raises:
    ValueError: the config has no exact Hugging Face equivalent.
  """
  common = dict(model_type=config.model_type, architectures=[_ARCHITECTURES[config.model_type]],
                vocab_size=config.vocab_size, initializer_range=config.initializer_range,
                bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id,
                eos_token_id=(list(config.eos_token_id) if isinstance(config.eos_token_id, tuple)
                              else config.eos_token_id),
                tie_word_embeddings=config.tie_word_embeddings)
  if config.is_gpt2:
    data = dict(common, n_embd=config.hidden_size, n_layer=config.num_layers,
                n_head=config.num_heads, n_inner=config.intermediate_size,
                n_positions=config.max_position_embeddings, layer_norm_epsilon=config.norm_eps,
                activation_function=config.activation,
                scale_attn_weights=config.scale_attn_weights,
                scale_attn_by_inverse_layer_idx=config.scale_attn_by_inverse_layer_idx,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  else:
    data = dict(common, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                head_dim=config.head_dim, intermediate_size=config.intermediate_size,
                max_position_embeddings=config.max_position_embeddings,
                rms_norm_eps=config.norm_eps, hidden_act=config.activation,
                rope_parameters=_rope_dict(config), rope_theta=config.rope.theta)
    if config.model_type == "llama":
      data.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif config.model_type == "mistral":
      data.update(sliding_window=config.sliding_window)
    else:
      kinds = ["full_attention" if w is None else "sliding_attention"
               for w in config.layer_windows()]
      data.update(use_sliding_window=config.sliding_window is not None,
                  sliding_window=config.sliding_window, layer_types=kinds)
      # Hugging Face always spells the layer types out.
      config = dataclasses.replace(config, layer_types=tuple(kinds))
  if config_from_hf_dict(data) != config:
    raise ValueError(f"{config.model_type} config has no exact Hugging Face equivalent: "
                     f"{config}")
  return data


def save_hf_checkpoint(model: CausalLM, folder: str | Path) -> Path:
  """Write the base weights of `model` (no LoRA factors, no task head; merged adapters
  are not unmerged first, so call it on an unmerged model) as a Hugging Face folder."""
  if not isinstance(model, CausalLM):
    raise TypeError(f"{type(model).__name__} is not a model of adaprelora_jax.models")
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  tensors = {}
  base = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam), nnx.Not(HeadParam))
  for path, variable in nnx.to_flat_state(nnx.state(model, base)):
    value = np.asarray(variable.get_value())
    transposed = naming.hf_transposed(model, path)
    if naming.is_stacked(model, path):
      for layer in range(model.config.num_layers):
        tensor = value[layer].T if transposed else value[layer]
        tensors[naming.hf_param_name(model, path, layer)] = np.ascontiguousarray(tensor)
    else:
      tensors[naming.hf_param_name(model, path)] = np.ascontiguousarray(
          value.T if transposed else value)
  safetensors.numpy.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(hf_config_dict(model.config), indent=2) + "\n")
  return folder


def save_adapter(model: CausalLM, folder: str | Path) -> Path:
  """The PEFT adapter of `model` (`save_peft_adapter`); with a classification head, as
  PEFT's sequence-classification adapter: `task_type` "SEQ_CLS", `modules_to_save`
  ["score"] and the head's weight `base_model.model.score.weight` `(num_labels, hidden)`
  beside the LoRA factors, which `peft.PeftModel.from_pretrained` loads into a
  `transformers` `AutoModelForSequenceClassification` (same logits as `class_logits`)."""
  folder = Path(folder)
  save_peft_adapter(model, folder)
  if not has_score_head(model):
    return folder
  head = getattr(model, HEAD_NAME)
  file = folder / ADAPTER_WEIGHTS
  tensors = safetensors.numpy.load_file(file)
  weight = np.asarray(head.kernel.get_value(), np.float32)
  tensors[f"{PREFIX}{HEAD_NAME}.weight"] = np.ascontiguousarray(weight.T)
  safetensors.numpy.save_file(tensors, file, metadata={
      "format": "pt", "model_type": model.config.model_type})
  config = json.loads((folder / ADAPTER_CONFIG).read_text())
  config.update(task_type="SEQ_CLS", modules_to_save=[HEAD_NAME])
  (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
  return folder
