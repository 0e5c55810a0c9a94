"""Module tree: Hugging Face names, stacked layers, `Linear` layout, remat, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from model_cases import forward

from adaprelora_jax.models import GPT2, Llama, build_model, config_by_name
from adaprelora_jax.models.layers import Linear
from adaprelora_jax.models.naming import hf_module_name, hf_param_name, hf_transposed


def _flat_params(model):
  return [(tuple(str(k) for k in path), v) for path, v in nnx.to_flat_state(nnx.state(model))]


@pytest.mark.parametrize("name", ["gpt2", "gpt2-untied-layer-scale", "llama", "qwen2"])
def test_parameter_names_map_one_to_one(loaded, name):
  torch_model, model = loaded(name)
  ours = set()
  for path, variable in _flat_params(model):
    layers = range(model.config.num_layers) if path[:2] == model.hf_layers_path else [None]
    ours.update(hf_param_name(model, path, layer) for layer in layers)
  theirs = set(torch_model.state_dict())
  if model.config.tie_word_embeddings:
    theirs.discard("lm_head.weight")
  assert ours == theirs


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_every_projection_is_a_linear_named_like_transformers(loaded, name):
  torch_model, model = loaded(name)
  projections = {n: m for n, m in torch_model.named_modules()
                 if isinstance(m, (torch.nn.Linear, transformers.pytorch_utils.Conv1D))}
  assert projections
  for hf_name, hf_module in projections.items():
    parts = hf_name.split(".")
    if "layers" in parts or "h" in parts:
      i = parts.index("layers" if "layers" in parts else "h")
      layer, parts = int(parts[i + 1]), parts[:i + 1] + parts[i + 2:]
    else:
      layer = None
    if hf_name == "lm_head" and model.lm_head is None:
      continue
    module = model
    for part in parts:
      module = getattr(module, part)
    assert isinstance(module, Linear), hf_name
    assert hf_module_name(model, parts, layer) == hf_name
    weight = hf_module.weight.detach().numpy()
    kernel = np.asarray(module.kernel[...])
    kernel = kernel if layer is None else kernel[layer]
    conv1d = isinstance(hf_module, transformers.pytorch_utils.Conv1D)
    assert module.hf_transposed == (not conv1d)
    np.testing.assert_array_equal(kernel, weight if conv1d else weight.T)
    assert kernel.shape == (module.in_features, module.out_features)


def test_stacked_layout_and_paths():
  llama = nnx.eval_shape(lambda: build_model(config_by_name("tiny-llama")))
  assert isinstance(llama, Llama)
  q = llama.model.layers.self_attn.q_proj
  assert q.kernel.shape == (2, 64, 64) and q.bias is None
  assert llama.model.layers.self_attn.k_proj.kernel.shape == (2, 64, 32)
  assert llama.model.layers.input_layernorm.scale.shape == (2, 64)
  assert hf_transposed(llama, ("model", "layers", "mlp", "down_proj", "kernel"))
  gpt2 = nnx.eval_shape(lambda: build_model(config_by_name("tiny-gpt2")))
  assert isinstance(gpt2, GPT2) and gpt2.lm_head is None
  c_attn = gpt2.transformer.h.attn.c_attn
  assert c_attn.kernel.shape == (2, 64, 192) and c_attn.bias.shape == (2, 192)
  assert not hf_transposed(gpt2, ("transformer", "h", "attn", "c_attn", "kernel"))
  assert hf_param_name(gpt2, ("transformer", "wte", "embedding")) == "transformer.wte.weight"
  assert hf_param_name(gpt2, ("transformer", "h", "ln_2", "scale"), 1) == (
      "transformer.h.1.ln_2.weight")
  with pytest.raises(ValueError, match="pass layer="):
    hf_module_name(gpt2, ("transformer", "h", "mlp", "c_fc"))
  with pytest.raises(ValueError, match="no layer index"):
    hf_module_name(gpt2, ("transformer", "ln_f"), 0)
  with pytest.raises(ValueError, match="out of range"):
    hf_module_name(gpt2, ("transformer", "h", "mlp", "c_fc"), 2)


def test_models_refuse_the_other_family():
  with pytest.raises(ValueError, match="gpt2 config"):
    GPT2(config_by_name("tiny-llama"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="got gpt2"):
    Llama(config_by_name("tiny-gpt2"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-mistral"])
def test_remat_gives_the_same_gradients(name):
  config = config_by_name(name)
  ids = jnp.asarray(np.random.RandomState(0).randint(0, config.vocab_size, (2, 10)))

  def loss(model):
    logits = model(ids[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1))

  models = [build_model(config, remat=remat) for remat in (False, True)]
  jaxprs = [str(jax.make_jaxpr(lambda m: nnx.grad(loss)(m))(m)) for m in models]
  assert "remat" not in jaxprs[0] and "remat" in jaxprs[1]
  grads = [nnx.jit(nnx.grad(loss))(m) for m in models]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  stacked = (grads[0]["transformer"]["h"]["attn"]["c_attn"] if config.is_gpt2
             else grads[0]["model"]["layers"]["self_attn"]["q_proj"])
  assert stacked["kernel"].shape[0] == config.num_layers


def test_decode_with_cache_equals_full_forward(loaded):
  _, model = loaded("mistral")  # sliding window 8 < 14 tokens
  ids = np.random.RandomState(0).randint(3, 255, (2, 14))
  full = forward(model, ids)
  decode = nnx.jit(lambda model, ids, cache: model.decode(ids, cache))
  logits, cache = decode(model, jnp.asarray(ids[:, :9]), model.init_cache(2, 16))
  steps = [logits]
  for t in range(9, 14):
    logits, cache = decode(model, jnp.asarray(ids[:, t:t + 1]), cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0,
                             atol=1e-5 * np.abs(full).max())
  assert int(cache.index) == 14 and cache.k.shape == (2, 2, 16, 2, 16)
