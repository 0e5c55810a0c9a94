"""`merge_lora` / `unmerge_lora`: the folded kernel against NumPy, the round trip, the
forward of a merged model, idempotence, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lora_helpers import MLP, arrays, randomize_adapters

from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_modules, merge_lora, unmerge_lora
from adaprelora_jax.models import build_model, config_by_name

TARGETS = ["q_proj", "o_proj", "up_proj", "down_proj"]


def _rel(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(x - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def adapted_llama():
  model = build_model(config_by_name("tiny-llama"))
  apply_lora(model, LoRAConfig(4, 8, TARGETS, use_rslora=True), rngs=nnx.Rngs(1))
  randomize_adapters(model, seed=2, b_std=0.2)
  return model


def test_merge_folds_the_adapter_and_unmerge_restores(adapted_llama):
  model = adapted_llama
  ids = jax.random.randint(jax.random.key(0), (2, 10), 0, model.config.vocab_size)
  forward = nnx.jit(lambda m, ids: m(ids))
  logits = np.asarray(forward(model, ids))
  before = {path: (arrays(m.kernel), arrays(m.lora_a), arrays(m.lora_b))
            for path, m in lora_modules(model)}
  merge_lora(model)
  for path, m in lora_modules(model):
    assert m.lora_merged
    kernel, a, b = before[path]
    assert kernel.ndim == 3
    # W0 + s * A B per layer, in float64 NumPy; s = alpha / sqrt(r) = 4 (rsLoRA).
    ref = np.stack([kernel[i].astype(np.float64) + 4.0 * a[i].astype(np.float64) @ b[i]
                    for i in range(kernel.shape[0])])
    assert _rel(arrays(m.kernel), ref) < 1e-6
    assert np.abs(arrays(m.kernel) - kernel).max() > 1e-3  # the fold is not negligible
  # The merged model computes x @ kernel only, with the same logits.
  assert _rel(forward(model, ids), logits) < 1e-5
  merge_lora(model)  # merging twice is a no-op
  for path, m in lora_modules(model):
    assert _rel(arrays(m.kernel), before[path][0] + 4.0 * before[path][1] @ before[path][2]) < 1e-6
  unmerge_lora(model)
  for path, m in lora_modules(model):
    assert not m.lora_merged
    assert _rel(arrays(m.kernel), before[path][0]) < 1e-6
    np.testing.assert_array_equal(arrays(m.lora_a), before[path][1])
  unmerge_lora(model)  # a no-op on unmerged layers
  for path, m in lora_modules(model):
    assert _rel(arrays(m.kernel), before[path][0]) < 1e-6
  assert _rel(forward(model, ids), logits) < 1e-5


def test_merge_unmerge_plain_nnx_model():
  model = apply_lora(MLP(nnx.Rngs(0)), LoRAConfig(3, 3, ["up", "down"]), rngs=nnx.Rngs(1))
  randomize_adapters(model, seed=5, b_std=0.5)
  x = jax.random.normal(jax.random.key(2), (4, 8))
  y = np.asarray(model(x))
  kernel = arrays(model.up.kernel)
  merge_lora(model)
  np.testing.assert_allclose(arrays(model.up.kernel),
                             kernel + arrays(model.up.lora_a) @ arrays(model.up.lora_b),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(model(x)), y, rtol=1e-5, atol=1e-6)
  unmerge_lora(model)
  assert _rel(arrays(model.up.kernel), kernel) < 1e-6


def test_bf16_merge_is_rounded():
  model = build_model(config_by_name("tiny-llama"), dtype=jnp.bfloat16)
  apply_lora(model, LoRAConfig(4, 8, ["q_proj"]), rngs=nnx.Rngs(1))
  randomize_adapters(model, seed=3, b_std=0.2)
  proj = model.model.layers.self_attn.q_proj
  kernel = arrays(proj.kernel).astype(np.float64)
  merge_lora(model)
  assert proj.kernel.dtype == jnp.bfloat16
  ref = kernel + 2.0 * arrays(proj.lora_a).astype(np.float64) @ arrays(proj.lora_b)
  assert _rel(arrays(proj.kernel), ref) < 2 ** -8  # one bf16 rounding
  merged = np.abs(arrays(proj.kernel).astype(np.float64)).max()
  unmerge_lora(model)
  # Two roundings at the merged kernel's magnitude: close, but not the original bits.
  error = np.abs(arrays(proj.kernel).astype(np.float64) - kernel).max()
  assert 0 < error <= 2 ** -7 * merged


def test_merge_without_adapters_is_an_error():
  with pytest.raises(ValueError, match="no LoRA adapter"):
    merge_lora(MLP(nnx.Rngs(0)))
  with pytest.raises(ValueError, match="no LoRA adapter"):
    unmerge_lora(MLP(nnx.Rngs(0)))
