"""Flax NNX models to fine-tune: GPT-2 and the Llama family (Llama, Mistral, Qwen2).

`from_pretrained` loads a Hugging Face checkpoint folder (optionally straight into a
mesh's shardings), `build_model` initialises a config at random, `generate` runs greedy
or beam search like `transformers`. See docs/models.md.
"""

from adaprelora_jax.models.attention import KVCache
from adaprelora_jax.models.base import CausalLM
from adaprelora_jax.models.config import ModelConfig
from adaprelora_jax.models.config import RopeConfig
from adaprelora_jax.models.config import config_by_name
from adaprelora_jax.models.generation import generate
from adaprelora_jax.models.gpt2 import GPT2
from adaprelora_jax.models.hf_config import config_from_hf_dict
from adaprelora_jax.models.hf_config import read_hf_config
from adaprelora_jax.models.layers import Linear
from adaprelora_jax.models.llama import Llama
from adaprelora_jax.models.loading import from_pretrained
from adaprelora_jax.models.model import build_model
from adaprelora_jax.models.naming import hf_module_name
from adaprelora_jax.models.naming import hf_param_name
from adaprelora_jax.models.sharding import ShardingConfig
from adaprelora_jax.models.sharding import make_mesh

__all__ = (
    "CausalLM",
    "GPT2",
    "KVCache",
    "Linear",
    "Llama",
    "ModelConfig",
    "RopeConfig",
    "ShardingConfig",
    "build_model",
    "config_by_name",
    "config_from_hf_dict",
    "from_pretrained",
    "generate",
    "hf_module_name",
    "hf_param_name",
    "make_mesh",
    "read_hf_config",
)
