"""Reading a Hugging Face `config.json` into a `ModelConfig`.

Field names and defaults follow transformers 5 (`GPT2Config`, `LlamaConfig`,
`MistralConfig`, `Qwen2Config`). RoPE settings are read from `rope_scaling` or
`rope_parameters` (transformers 5, which may leave a null top-level `rope_theta`) with a
top-level `rope_theta` (checkpoints on the hub) as the fallback, as transformers does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaprelora_jax.models.checkpoint import read_json
from adaprelora_jax.models.config import MODEL_TYPES, ModelConfig, RopeConfig


def read_hf_config(path: str | Path) -> ModelConfig:
  """The `ModelConfig` of a checkpoint folder (or of a `config.json` file)."""
  path = Path(path)
  file = path / "config.json" if path.is_dir() else path
  data = read_json(file, "no config.json (not a Hugging Face checkpoint folder?)")
  return config_from_hf_dict(data, source=str(file))


def config_from_hf_dict(data: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
  """The `ModelConfig` of a parsed Hugging Face config dict."""
  model_type = data.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(
        f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)}"
    )

  def need(key):
    if data.get(key) is None:
      raise ValueError(f"{source}: missing field {key!r} for model_type {model_type!r}")
    return data[key]

  eos = data.get("eos_token_id")
  common = dict(
      model_type=model_type,
      vocab_size=need("vocab_size"),
      initializer_range=data.get("initializer_range", 0.02),
      eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
      pad_token_id=data.get("pad_token_id"),
      bos_token_id=data.get("bos_token_id"),
  )
  try:
    if model_type == "gpt2":
      return _gpt2(data, need, common)
    return _llama_family(data, need, common, source)
  except (TypeError, ValueError) as e:
    if str(e).startswith(source):
      raise
    raise ValueError(f"{source}: {e}") from e


def _gpt2(data, need, common) -> ModelConfig:
  hidden = need("n_embd")
  return ModelConfig(
      hidden_size=hidden,
      num_layers=need("n_layer"),
      num_heads=need("n_head"),
      intermediate_size=data.get("n_inner") or 4 * hidden,
      max_position_embeddings=need("n_positions"),
      norm_eps=data.get("layer_norm_epsilon", 1e-5),
      tie_word_embeddings=data.get("tie_word_embeddings", True),
      activation=data.get("activation_function", "gelu_new"),
      qkv_bias=True,
      o_bias=True,
      mlp_bias=True,
      scale_attn_weights=data.get("scale_attn_weights", True),
      scale_attn_by_inverse_layer_idx=data.get("scale_attn_by_inverse_layer_idx", False),
      **common,
  )


def _rope(data, source) -> RopeConfig:
  params = dict(data.get("rope_scaling") or data.get("rope_parameters") or {})
  top_theta = data.get("rope_theta")
  theta = params.get("rope_theta")
  if theta is None:
    theta = top_theta if top_theta is not None else 10_000.0
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in ("default", "linear", "llama3"):
    raise ValueError(f"{source}: unsupported rope_type {rope_type!r} "
                     "(supported: default, linear, llama3)")
  kw = dict(theta=float(theta), rope_type=rope_type)
  if rope_type in ("linear", "llama3"):
    kw["factor"] = float(params["factor"])
  if rope_type == "llama3":
    kw.update(
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params.get(
            "original_max_position_embeddings", data["max_position_embeddings"])),
    )
  return RopeConfig(**kw)


def _llama_family(data, need, common, source) -> ModelConfig:
  model_type = common["model_type"]
  hidden = need("hidden_size")
  heads = need("num_attention_heads")
  num_layers = need("num_hidden_layers")
  kw = dict(
      hidden_size=hidden,
      num_layers=num_layers,
      num_heads=heads,
      num_kv_heads=data.get("num_key_value_heads") or heads,
      head_dim=data.get("head_dim") or hidden // heads,
      intermediate_size=need("intermediate_size"),
      max_position_embeddings=need("max_position_embeddings"),
      norm_eps=data.get("rms_norm_eps", 1e-6),
      tie_word_embeddings=data.get("tie_word_embeddings", False),
      activation=data.get("hidden_act", "silu"),
      rope=_rope(data, source),
  )
  if model_type == "llama":
    bias = bool(data.get("attention_bias", False))
    kw.update(qkv_bias=bias, o_bias=bias, mlp_bias=bool(data.get("mlp_bias", False)))
  elif model_type == "mistral":
    kw.update(sliding_window=data.get("sliding_window", 4096))
  else:  # qwen2
    window = data.get("sliding_window", 4096) if data.get("use_sliding_window", False) else None
    layer_types = data.get("layer_types")
    if layer_types is None:
      first = data.get("max_window_layers", 28)
      layer_types = ["sliding_attention" if window is not None and i >= first
                     else "full_attention" for i in range(num_layers)]
    kw.update(qkv_bias=True, sliding_window=window, layer_types=tuple(layer_types))
  return ModelConfig(**kw, **common)
