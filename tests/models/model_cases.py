"""Tiny random `transformers` models saved as checkpoints, for the model tests.

Every case is built once per session, lazily. Biases and norm weights are randomised
too (transformers initialises them to 0 and 1, which would hide loading mistakes), and
`initializer_range=0.2` makes the next-token distributions peaked enough for exact
generation comparisons.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

VOCAB = 256
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             initializer_range=0.2, bos_token_id=1, eos_token_id=2)
GPT2 = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
            initializer_range=0.2, bos_token_id=255, eos_token_id=255)

# name -> (config class, model class, config kwargs, config.json edit or None)
CASES = {
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, GPT2, None),
    "gpt2-untied-layer-scale": (
        transformers.GPT2Config, transformers.GPT2LMHeadModel,
        dict(GPT2, scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False), None),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(SMALL, attention_bias=True, mlp_bias=True), None),
    # Hub style: a top-level rope_theta and no rope_parameters.
    "llama-rope-theta-top-level": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        dict(SMALL, rope_parameters=dict(rope_type="default", rope_theta=500_000.0)),
        "top_level_theta"),
    # transformers 5 style: rope_parameters with a null top-level rope_theta.
    "llama-rope-parameters": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        dict(SMALL, rope_parameters=dict(rope_type="default", rope_theta=500_000.0)),
        "null_top_level_theta"),
    "llama3-rope-scaling": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        dict(SMALL, rope_parameters=dict(
            rope_type="llama3", rope_theta=10_000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=16)),
        "legacy_rope_scaling"),
    "llama-linear-rope": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        dict(SMALL, rope_parameters=dict(rope_type="linear", rope_theta=10_000.0, factor=2.0)),
        None),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(SMALL, sliding_window=8), None),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(SMALL, tie_word_embeddings=True,
                   rope_parameters=dict(rope_type="default", rope_theta=1_000_000.0)), None),
    # Sliding window on the layers from max_window_layers on (here layer 1 only).
    "qwen2-sliding-layers": (
        transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
        dict(SMALL, use_sliding_window=True, sliding_window=6, max_window_layers=1), None),
}


def _edit_config(path: Path, edit: str | None) -> None:
  if edit is None:
    return
  file = path / "config.json"
  data = json.loads(file.read_text())
  rope = data.pop("rope_parameters")
  if edit == "top_level_theta":
    data["rope_theta"] = rope["rope_theta"]
  elif edit == "null_top_level_theta":
    data["rope_parameters"] = rope
    data["rope_theta"] = None
  elif edit == "legacy_rope_scaling":  # Llama 3.1 on the hub
    data["rope_theta"] = rope.pop("rope_theta")
    data["rope_scaling"] = rope
  file.write_text(json.dumps(data))


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
  """Give biases and norm weights random values (in place)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=generator))
      elif "norm" in name or ".ln_" in name:
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))


def make_hf(name: str, folder: Path, *, dtype=None, seed: int = 0, **save_kwargs):
  """The torch model of case `name`, saved to `folder` (a checkpoint)."""
  config_cls, model_cls, kwargs, edit = CASES[name]
  torch.manual_seed(seed)
  config = config_cls(**kwargs, attn_implementation="eager")
  model = model_cls(config).eval()
  randomize_(model, seed)
  if dtype is not None:
    model = model.to(dtype)
  model.save_pretrained(folder, **save_kwargs)
  _edit_config(folder, edit)
  return model


def torch_logits(model, ids, mask=None) -> np.ndarray:
  with torch.no_grad():
    kw = {} if mask is None else dict(attention_mask=torch.tensor(np.asarray(mask)))
    return model(torch.tensor(np.asarray(ids)), **kw).logits.float().numpy()


def relative_error(out, ref) -> float:
  """max |out - ref| / max |ref|."""
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


def forward(model, ids, mask=None, positions=None):
  """Our model's logits, jitted (one compile per model and shape)."""
  return np.asarray(_forward(model, jnp.asarray(ids), None if mask is None else jnp.asarray(mask),
                             None if positions is None else jnp.asarray(positions)))


@nnx.jit
def _forward(model, ids, mask, positions):
  return model(ids, mask, positions)


def left_pad(rows, pad_id=0):
  """Left-pad token lists into `(ids, mask)`."""
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad_id, np.int64)
  mask = np.zeros((len(rows), width), np.int64)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = r
    mask[i, width - len(r):] = 1
  return ids, mask
