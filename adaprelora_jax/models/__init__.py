"""Flax NNX models to fine-tune: GPT-2 and the Llama family (Llama, Mistral, Qwen2)."""

from adaprelora_jax.models.attention import KVCache
from adaprelora_jax.models.base import CausalLM
from adaprelora_jax.models.config import ModelConfig
from adaprelora_jax.models.config import RopeConfig
from adaprelora_jax.models.config import config_by_name
from adaprelora_jax.models.generation import generate
from adaprelora_jax.models.gpt2 import GPT2
from adaprelora_jax.models.llama import Llama
from adaprelora_jax.models.loading import from_pretrained
from adaprelora_jax.models.model import build_model
from adaprelora_jax.models.sharding import ShardingConfig
from adaprelora_jax.models.sharding import make_mesh

__all__ = (
    "CausalLM",
    "GPT2",
    "KVCache",
    "Llama",
    "ModelConfig",
    "RopeConfig",
    "ShardingConfig",
    "build_model",
    "config_by_name",
    "from_pretrained",
    "generate",
    "make_mesh",
)
