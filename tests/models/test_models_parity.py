"""Logits of our models against `transformers` (PyTorch, CPU) on tiny random checkpoints."""

import json

import numpy as np
import pytest
from model_cases import CASES, VOCAB, forward, left_pad, relative_error, torch_logits

SEQ = 20  # longer than the sliding windows (8 and 6) and than llama3's original context (16)


def _ids(batch=2, seq=SEQ, seed=0):
  return np.random.RandomState(seed).randint(3, VOCAB - 1, (batch, seq))


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(loaded, name):
  torch_model, model = loaded(name)
  ids = _ids()
  err = relative_error(forward(model, ids), torch_logits(torch_model, ids))
  assert err < 1e-4, f"{name}: max relative logits error {err:.2e}"


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "qwen2"])
def test_padded_batch_equals_unpadded(loaded, name):
  torch_model, model = loaded(name)
  rng = np.random.RandomState(1)
  rows = [rng.randint(3, VOCAB - 1, n) for n in (SEQ, 13, 5)]
  ids, mask = left_pad(rows)
  out = forward(model, ids, mask)
  right_ids = np.zeros_like(ids)
  right_mask = np.zeros_like(mask)
  for i, row in enumerate(rows):
    right_ids[i, :len(row)] = row
    right_mask[i, :len(row)] = 1
  right = forward(model, right_ids, right_mask)
  for i, row in enumerate(rows):
    alone = forward(model, row[None])[0]
    atol = 1e-5 * np.abs(alone).max()
    np.testing.assert_allclose(out[i, SEQ - len(row):], alone, rtol=0, atol=atol)
    np.testing.assert_allclose(right[i, :len(row)], alone, rtol=0, atol=atol)
    assert relative_error(alone, torch_logits(torch_model, row[None])[0]) < 1e-4


def test_explicit_positions_equal_default(loaded):
  _, model = loaded("llama")
  ids, mask = left_pad([np.arange(3, 13), np.arange(3, 8)])
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  default = forward(model, ids, mask)
  np.testing.assert_allclose(forward(model, ids, mask, positions), default, rtol=0, atol=1e-5)
  stretched = forward(model, ids, mask, 2 * positions)  # RoPE: only distances matter
  assert np.abs(stretched - default).max() > 1e-3


# A setting of the checkpoint's config.json, removed: the logits must then differ from
# transformers', so the parity above really checks that setting.
SETTINGS = {
    "mistral": lambda c: c.update(sliding_window=None),
    "qwen2-sliding-layers": lambda c: c.update(use_sliding_window=False),
    "llama-rope-theta-top-level": lambda c: c.update(rope_theta=10_000.0),
    "llama-rope-parameters": lambda c: c["rope_parameters"].update(rope_theta=10_000.0),
    "llama3-rope-scaling": lambda c: c.pop("rope_scaling"),
    "llama-linear-rope": lambda c: c.pop("rope_parameters"),
    "gpt2-untied-layer-scale": lambda c: c.update(scale_attn_by_inverse_layer_idx=False),
    "llama": lambda c: c.update(attention_bias=False),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_matter(checkpoints, tmp_path, name):
  from adaprelora_jax.models import from_pretrained

  torch_model, _ = checkpoints(name)
  folder = checkpoints.copy(name, tmp_path / name)
  config = json.loads((folder / "config.json").read_text())
  SETTINGS[name](config)
  (folder / "config.json").write_text(json.dumps(config))
  ids = _ids()
  if name == "llama":  # the checkpoint's attention biases are now surplus
    with pytest.warns(UserWarning, match="tensors not used by the model"):
      model = from_pretrained(folder)
  else:
    model = from_pretrained(folder)
  assert relative_error(forward(model, ids), torch_logits(torch_model, ids)) > 1e-3
