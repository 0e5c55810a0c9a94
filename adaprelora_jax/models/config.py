"""Architecture configs for GPT-2 and the Llama family, and the named variants.

One `ModelConfig` describes every supported architecture; `model_type` picks the
module family (`gpt2` -> `GPT2`; `llama`, `mistral`, `qwen2` -> `Llama`). The named
variants carry the sizes of the public checkpoints, so a model can be built (or
`nnx.eval_shape`-d) without one:

>>> cfg = config_by_name("mistral-7b")
>>> cfg.num_layers, cfg.num_kv_heads, cfg.sliding_window
(32, 8, 4096)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary position embedding settings, as Hugging Face's `rope_parameters`."""

  # Base wavelength `rope_theta`.
  theta: float = 10_000.0
  # "default" (plain RoPE), "linear" (positions / factor) or "llama3" (Llama 3.1 smoothing).
  rope_type: str = "default"
  # Scaling factor of "linear" and "llama3".
  factor: float = 1.0
  # "llama3": wavelengths above original_max_position_embeddings / low_freq_factor are scaled.
  low_freq_factor: float = 1.0
  # "llama3": wavelengths below original_max_position_embeddings / high_freq_factor are kept.
  high_freq_factor: float = 4.0
  # "llama3": the pretraining context length.
  original_max_position_embeddings: int | None = None

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(
          f"unsupported rope_type {self.rope_type!r}; supported: {', '.join(ROPE_TYPES)}"
      )
    if self.theta <= 0:
      raise ValueError(f"rope theta must be positive, got {self.theta}")
    if self.factor <= 0:
      raise ValueError(f"rope factor must be positive, got {self.factor}")
    if self.rope_type == "llama3":
      if self.original_max_position_embeddings is None:
        raise ValueError("llama3 rope scaling needs original_max_position_embeddings")
      if self.high_freq_factor <= self.low_freq_factor:
        raise ValueError(
            "llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
            f"{self.high_freq_factor} <= {self.low_freq_factor}"
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a causal language model (no runtime options: see `build_model`)."""

  # "gpt2", "llama", "mistral" or "qwen2" (Hugging Face's `model_type`).
  model_type: str
  # Vocabulary size (rows of the token embedding and of the output head).
  vocab_size: int
  # Model width d.
  hidden_size: int
  # Number of transformer layers (stacked along a leading axis).
  num_layers: int
  # Number of query heads.
  num_heads: int
  # Width of the MLP hidden layer.
  intermediate_size: int
  # Longest sequence; the size of GPT-2's learned position table.
  max_position_embeddings: int
  # Number of key/value heads (grouped-query attention); None means num_heads.
  num_kv_heads: int | None = None
  # Width of one head; None means hidden_size // num_heads.
  head_dim: int | None = None
  # Epsilon of LayerNorm (GPT-2) or RMSNorm (Llama family).
  norm_eps: float = 1e-5
  # Output head shares the token embedding matrix.
  tie_word_embeddings: bool = False
  # MLP activation, by its Hugging Face name.
  activation: str = "silu"
  # Biases on the q/k/v projections (GPT-2's c_attn, Qwen2, Llama's attention_bias).
  qkv_bias: bool = False
  # Bias on the attention output projection (GPT-2's attn.c_proj, Llama's attention_bias).
  o_bias: bool = False
  # Biases on the MLP projections (GPT-2, Llama's mlp_bias).
  mlp_bias: bool = False
  # Rotary embeddings; None for GPT-2's learned positions.
  rope: RopeConfig | None = None
  # Sliding-window attention span (a query sees keys less than this many slots back).
  sliding_window: int | None = None
  # Per-layer "full_attention" / "sliding_attention"; None: every layer slides if
  # sliding_window is set (Mistral).
  layer_types: tuple[str, ...] | None = None
  # GPT-2: divide attention logits by sqrt(head_dim).
  scale_attn_weights: bool = True
  # GPT-2: also divide attention logits by (layer index + 1).
  scale_attn_by_inverse_layer_idx: bool = False
  # Default end-of-sequence token(s) for `generate`.
  eos_token_id: int | tuple[int, ...] | None = None
  # Default padding token for `generate`.
  pad_token_id: int | None = None
  # Default beginning-of-sequence token.
  bos_token_id: int | None = None
  # Standard deviation of the normal init of weights without a checkpoint.
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(
          f"unsupported model_type {self.model_type!r}; supported: {', '.join(MODEL_TYPES)}"
      )
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                 "intermediate_size", "max_position_embeddings"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.num_kv_heads is None:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(
            f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
        )
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
      )
    if self.activation not in ACTIVATIONS:
      raise ValueError(
          f"unsupported activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}"
      )
    if self.is_gpt2:
      if self.rope is not None:
        raise ValueError("gpt2 uses learned positions: rope must be None")
      if self.head_dim * self.num_heads != self.hidden_size:
        raise ValueError("gpt2 needs head_dim * num_heads == hidden_size")
      if self.num_kv_heads != self.num_heads:
        raise ValueError("gpt2 has no grouped-query attention: num_kv_heads == num_heads")
    elif self.rope is None:
      object.__setattr__(self, "rope", RopeConfig())
    if self.head_dim % 2 and not self.is_gpt2:
      raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ValueError(f"sliding_window must be positive, got {self.sliding_window}")
    if self.layer_types is not None:
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
            f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
        )
      bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if bad:
        raise ValueError(f"unsupported layer_types {bad}; supported: {', '.join(LAYER_TYPES)}")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

  @property
  def is_gpt2(self) -> bool:
    return self.model_type == "gpt2"

  def layer_windows(self) -> tuple[int | None, ...]:
    """The sliding window of each layer (None: full causal attention)."""
    if self.sliding_window is None:
      return (None,) * self.num_layers
    if self.layer_types is None:
      return (self.sliding_window,) * self.num_layers
    return tuple(self.sliding_window if t == "sliding_attention" else None
                 for t in self.layer_types)

  def replace(self, **changes) -> ModelConfig:
    """A copy with `changes`; a defaulted `num_kv_heads` / `head_dim` follows new sizes."""
    if "num_kv_heads" not in changes and self.num_kv_heads == self.num_heads:
      changes["num_kv_heads"] = None
    if "head_dim" not in changes and self.head_dim * self.num_heads == self.hidden_size:
      changes["head_dim"] = None
    return dataclasses.replace(self, **changes)


# Named variants: the public checkpoints' sizes and tiny ones for tests.


def gpt2_small() -> ModelConfig:
  """`openai-community/gpt2` (124M)."""
  return ModelConfig(
      model_type="gpt2", vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
      intermediate_size=3072, max_position_embeddings=1024, norm_eps=1e-5,
      tie_word_embeddings=True, activation="gelu_new", qkv_bias=True, o_bias=True,
      mlp_bias=True, eos_token_id=50256, bos_token_id=50256)


def gpt2_medium() -> ModelConfig:
  """`openai-community/gpt2-medium` (355M)."""
  return gpt2_small().replace(hidden_size=1024, num_layers=24, num_heads=16,
                              intermediate_size=4096)


def llama2_7b() -> ModelConfig:
  """`meta-llama/Llama-2-7b-hf`."""
  return ModelConfig(
      model_type="llama", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
      num_kv_heads=32, intermediate_size=11008, max_position_embeddings=4096, norm_eps=1e-5,
      rope=RopeConfig(theta=10_000.0), bos_token_id=1, eos_token_id=2)


def mistral_7b() -> ModelConfig:
  """`mistralai/Mistral-7B-v0.1` (sliding window 4096)."""
  return ModelConfig(
      model_type="mistral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
      num_kv_heads=8, intermediate_size=14336, max_position_embeddings=32768, norm_eps=1e-5,
      rope=RopeConfig(theta=10_000.0), sliding_window=4096, bos_token_id=1, eos_token_id=2)


def qwen2_7b() -> ModelConfig:
  """`Qwen/Qwen2-7B` (q/k/v biases; its sliding window is switched off)."""
  return ModelConfig(
      model_type="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
      num_kv_heads=4, intermediate_size=18944, max_position_embeddings=131072, norm_eps=1e-6,
      rope=RopeConfig(theta=1_000_000.0), qkv_bias=True, eos_token_id=151643,
      bos_token_id=151643)


def tiny_gpt2() -> ModelConfig:
  """A 2-layer GPT-2 for CPU tests."""
  return gpt2_small().replace(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                              intermediate_size=256, max_position_embeddings=128,
                              eos_token_id=255, bos_token_id=255)


def tiny_llama() -> ModelConfig:
  """A 2-layer Llama with grouped-query attention for CPU tests."""
  return ModelConfig(
      model_type="llama", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
      num_kv_heads=2, intermediate_size=128, max_position_embeddings=128, norm_eps=1e-6,
      rope=RopeConfig(theta=10_000.0), bos_token_id=1, eos_token_id=2)


def tiny_mistral() -> ModelConfig:
  """A 2-layer Mistral with a sliding window of 8 for CPU tests."""
  return tiny_llama().replace(model_type="mistral", sliding_window=8)


def tiny_qwen2() -> ModelConfig:
  """A 2-layer Qwen2 (q/k/v biases, tied embeddings) for CPU tests."""
  return tiny_llama().replace(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True,
                              rope=RopeConfig(theta=1_000_000.0))


CONFIGS: dict[str, Callable[[], ModelConfig]] = {
    "gpt2": gpt2_small,
    "gpt2-small": gpt2_small,
    "gpt2-medium": gpt2_medium,
    "llama-2-7b": llama2_7b,
    "mistral-7b": mistral_7b,
    "qwen2-7b": qwen2_7b,
    "tiny-gpt2": tiny_gpt2,
    "tiny-llama": tiny_llama,
    "tiny-mistral": tiny_mistral,
    "tiny-qwen2": tiny_qwen2,
}


def config_by_name(name: str, **overrides) -> ModelConfig:
  """The named config (`gpt2`, `gpt2-medium`, `llama-2-7b`, `mistral-7b`, `qwen2-7b`,
  `tiny-gpt2`, ...; `_` and `-` are interchangeable), with fields overridden."""
  key = name.lower().replace("_", "-")
  if key not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
  config = CONFIGS[key]()
  return config.replace(**overrides) if overrides else config
