"""Configs: named variants, validation, and reading Hugging Face `config.json` files."""

import jax
import jax.numpy as jnp
import pytest
import transformers
from flax import nnx

from adaprelora_jax.models import ModelConfig, RopeConfig, build_model, config_by_name
from adaprelora_jax.models.hf_config import config_from_hf_dict, read_hf_config

# Parameter counts of the public checkpoints.
SIZES = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "llama-2-7b": 6_738_415_616,
    "mistral-7b": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_real_sizes_build_abstractly_with_the_right_parameter_count(name):
  abstract = nnx.eval_shape(lambda: build_model(config_by_name(name), dtype=jnp.bfloat16))
  leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
  assert sum(x.size for x in leaves) == SIZES[name]
  assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}


def test_named_configs():
  assert config_by_name("mistral_7b") == config_by_name("mistral-7b")
  qwen = config_by_name("qwen2-7b")
  assert (qwen.qkv_bias, qwen.o_bias, qwen.num_kv_heads, qwen.rope.theta) == (True, False, 4, 1e6)
  assert config_by_name("tiny-qwen2").tie_word_embeddings
  gpt2 = config_by_name("gpt2")
  assert gpt2.rope is None and gpt2.tie_word_embeddings and gpt2.head_dim == 64
  assert config_by_name("gpt2", num_layers=3).num_layers == 3
  with pytest.raises(ValueError, match="unknown config 'gpt5'"):
    config_by_name("gpt5")


def test_replace_recomputes_defaulted_sizes():
  small = config_by_name("gpt2")
  medium = small.replace(hidden_size=1024, num_heads=16)
  assert (medium.head_dim, medium.num_kv_heads) == (64, 16)
  mistral = config_by_name("mistral-7b").replace(num_layers=2)
  assert (mistral.num_kv_heads, mistral.head_dim) == (8, 128)


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="bert"), "unsupported model_type 'bert'"),
    (dict(num_heads=3), "not a multiple of num_heads"),
    (dict(num_kv_heads=3), "not a multiple of num_kv_heads"),
    (dict(activation="tanh"), "unsupported activation"),
    (dict(vocab_size=0), "vocab_size must be positive"),
    (dict(sliding_window=0), "sliding_window must be positive"),
    (dict(layer_types=("full_attention",)), "layer_types has 1 entries for 2 layers"),
    (dict(layer_types=("full_attention", "local")), "unsupported layer_types"),
])
def test_config_validation(changes, message):
  with pytest.raises(ValueError, match=message):
    config_by_name("tiny-llama").replace(**changes)


def test_rope_config_validation():
  with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
    RopeConfig(rope_type="yarn")
  with pytest.raises(ValueError, match="original_max_position_embeddings"):
    RopeConfig(rope_type="llama3", factor=8.0)
  with pytest.raises(ValueError, match="learned positions"):
    config_by_name("gpt2").replace(rope=RopeConfig())


def _hf(config: transformers.PretrainedConfig) -> ModelConfig:
  return config_from_hf_dict(config.to_dict())


def test_reads_transformers_configs():
  gpt2 = _hf(transformers.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=32,
                                     layer_norm_epsilon=1e-4))
  assert (gpt2.hidden_size, gpt2.num_layers, gpt2.num_heads, gpt2.intermediate_size,
          gpt2.max_position_embeddings, gpt2.norm_eps, gpt2.activation) == (
              64, 3, 4, 256, 32, 1e-4, "gelu_new")
  assert gpt2.tie_word_embeddings and gpt2.qkv_bias and gpt2.mlp_bias
  llama = _hf(transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=32, rms_norm_eps=1e-5, attention_bias=True))
  assert (llama.num_kv_heads, llama.head_dim, llama.norm_eps) == (2, 32, 1e-5)
  assert llama.qkv_bias and llama.o_bias and not llama.mlp_bias
  assert llama.rope == RopeConfig(theta=10_000.0)
  mistral = _hf(transformers.MistralConfig(num_hidden_layers=2))
  assert mistral.sliding_window == 4096 and mistral.layer_windows() == (4096, 4096)
  assert _hf(transformers.MistralConfig(sliding_window=None)).sliding_window is None
  qwen = _hf(transformers.Qwen2Config(num_hidden_layers=4))
  assert qwen.qkv_bias and not qwen.o_bias and qwen.layer_windows() == (None,) * 4
  sliding = _hf(transformers.Qwen2Config(num_hidden_layers=4, use_sliding_window=True,
                                         sliding_window=16, max_window_layers=2))
  assert sliding.layer_windows() == (None, None, 16, 16)


def test_mistral_without_sliding_window_field_defaults_like_transformers():
  data = transformers.MistralConfig(num_hidden_layers=2).to_dict()
  del data["sliding_window"]
  assert config_from_hf_dict(data).sliding_window == 4096


BASE = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=8,
            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)


@pytest.mark.parametrize("fields, rope", [
    (dict(rope_theta=500000.0), RopeConfig(theta=500000.0)),  # the hub's Llama 3
    (dict(rope_theta=None, rope_parameters=dict(rope_type="default", rope_theta=5e5)),
     RopeConfig(theta=5e5)),  # transformers 5
    (dict(rope_parameters=dict(rope_type="default", rope_theta=5e5)), RopeConfig(theta=5e5)),
    (dict(rope_theta=1e6, rope_parameters=dict(rope_type="default")), RopeConfig(theta=1e6)),
    ({}, RopeConfig(theta=10_000.0)),
    (dict(rope_theta=5e5, rope_scaling=dict(type="linear", factor=2.0)),
     RopeConfig(theta=5e5, rope_type="linear", factor=2.0)),  # the legacy "type" key
    (dict(rope_theta=5e5, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192)),
     RopeConfig(theta=5e5, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                high_freq_factor=4.0, original_max_position_embeddings=8192)),
    (dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                            high_freq_factor=4.0)),
     RopeConfig(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64)),
])
def test_rope_fields(fields, rope):
  assert config_from_hf_dict(dict(BASE, **fields)).rope == rope


def test_rope_fields_agree_with_transformers():
  """transformers' own reading of the same fields gives the same theta and type."""
  for fields in (dict(rope_theta=5e5), dict(rope_theta=None, rope_parameters=dict(
      rope_type="linear", rope_theta=2e5, factor=4.0))):
    data = dict(BASE, **fields)
    ours = config_from_hf_dict(data).rope
    theirs = transformers.LlamaConfig.from_dict(data).rope_parameters
    assert (ours.theta, ours.rope_type) == (theirs["rope_theta"], theirs["rope_type"])


def test_hf_config_errors(tmp_path):
  with pytest.raises(ValueError, match="x.json: missing field 'hidden_size'"):
    config_from_hf_dict(dict(BASE, hidden_size=None), source="x.json")
  with pytest.raises(ValueError, match="unsupported rope_type 'dynamic'"):
    config_from_hf_dict(dict(BASE, rope_scaling=dict(rope_type="dynamic", factor=2.0)))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json: not valid JSON"):
    read_hf_config(tmp_path)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    read_hf_config(tmp_path / "absent")
