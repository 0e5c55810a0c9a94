"""The classification head against Hugging Face: our adapter (LoRA factors + `score` as
PEFT's `modules_to_save`) loaded by `peft.PeftModel.from_pretrained` into
`transformers`' `AutoModelForSequenceClassification` gives our `class_logits`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_modules
from adaprelora_jax.models import build_model, config_by_name
from adaprelora_jax.train.export import save_adapter, save_hf_checkpoint
from adaprelora_jax.train.heads import add_score_head, class_logits, classification_loss

TARGETS = {"tiny-llama": ("q_proj", "v_proj", "down_proj"), "tiny-gpt2": ("c_attn", "c_fc")}
PAD = 0
NUM_LABELS = 3


def _model(name):
  model = build_model(config_by_name(name), rngs=nnx.Rngs(0))
  apply_lora(model, LoRAConfig(4, 8, TARGETS[name]), rngs=nnx.Rngs(1))
  for i, (_, module) in enumerate(lora_modules(model)):  # non-zero B: the adapter counts
    b = module.lora_b
    b.set_value(0.05 * jax.random.normal(jax.random.key(10 + i), b.shape, b.dtype))
  add_score_head(model, NUM_LABELS, rngs=nnx.Rngs(2))
  return model


def _batch():
  """Right-padded rows of different lengths (PAD never inside a row)."""
  rng = np.random.default_rng(0)
  lengths = np.array([12, 5, 9])
  tokens = rng.integers(3, 250, (3, 12))
  mask = np.arange(12)[None, :] < lengths[:, None]
  return np.where(mask, tokens, PAD).astype(np.int32), mask


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_seq_cls_adapter_loads_in_peft_with_our_logits(tmp_path, name):
  model = _model(name)
  save_hf_checkpoint(model, tmp_path / "base")
  save_adapter(model, tmp_path / "adapter")
  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
  tensors = safetensors.numpy.load_file(tmp_path / "adapter" / "adapter_model.safetensors")
  np.testing.assert_array_equal(tensors["base_model.model.score.weight"],
                                np.asarray(model.score.kernel[...]).T)
  base = safetensors.numpy.load_file(tmp_path / "base" / "model.safetensors")
  assert not any("score" in k for k in base), "the head is not part of the base"

  hf = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "base", num_labels=NUM_LABELS, pad_token_id=PAD, dtype=torch.float32)
  hf_before = hf.score.weight.detach().clone()
  hf = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
  tokens, mask = _batch()
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  ours = np.asarray(class_logits(model, jnp.asarray(tokens), jnp.asarray(mask)))
  assert not np.allclose(hf_before.numpy(), tensors["base_model.model.score.weight"])
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
  # Padding does not change a row's logits: row 1 alone, unpadded.
  alone = class_logits(model, jnp.asarray(tokens[1:2, :5]), jnp.asarray(mask[1:2, :5]))
  np.testing.assert_allclose(np.asarray(alone)[0], ours[1], rtol=1e-4, atol=1e-5)


def test_classification_loss_is_weighted_cross_entropy():
  model = _model("tiny-llama")
  tokens, mask = _batch()
  labels = np.array([0, 2, 1])
  weights = np.array([1.0, 0.0, 1.0], np.float32)
  sums = classification_loss(model, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(labels),
                             jnp.asarray(weights))
  logits = np.asarray(class_logits(model, jnp.asarray(tokens), jnp.asarray(mask)), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(logp[np.arange(3), labels] * weights).sum()
  assert float(sums.tokens) == 2.0
  np.testing.assert_allclose(float(sums.loss), expected, rtol=1e-5)
