"""`LoRAConfig` and `apply_lora`: targets by name and regex, stacked layers, init, the
forward against NumPy, dropout, scales, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lora_helpers import MLP, Scanned, arrays, np_linear, randomize_adapters

import adaprelora_jax as apl
from adaprelora_jax.lora import LoRAConfig, LoRALinear, apply_lora, lora_modules
from adaprelora_jax.lora import lora_scale_of, lora_state
from adaprelora_jax.models import build_model, config_by_name


def _lora_paths(model):
  return {tuple(str(k) for k in path) for path, _ in nnx.to_flat_state(lora_state(model))}


@pytest.fixture(scope="module")
def llama_config():
  return config_by_name("tiny-llama")


def test_config_scale_and_validation():
  assert LoRAConfig(8, 16, ["q_proj"]).scale == 2.0
  assert LoRAConfig(16, 8, ["q_proj"], use_rslora=True).scale == 2.0
  assert LoRAConfig(4, 4, {"v_proj", "q_proj"}).target_modules == ("q_proj", "v_proj")
  assert LoRAConfig(4, 4, ["q_proj"]) == LoRAConfig(4, 4, ("q_proj",))
  hash(LoRAConfig(4, 4, ["q_proj"], exclude_modules=["x"]))  # a static NNX attribute
  for kwargs, match in [(dict(rank=0), "rank"), (dict(rank=2.0), "rank"),
                        (dict(alpha=-1), "alpha"), (dict(alpha=math.inf), "alpha"),
                        (dict(dropout=1.0), "dropout"), (dict(target_modules=[]), "list"),
                        (dict(target_modules="q_proj("), "regex"),
                        (dict(target_modules=None), "required")]:
    args = dict(rank=4, alpha=8, target_modules=["q_proj"]) | kwargs
    with pytest.raises(ValueError, match=match):
      LoRAConfig(**args)
  with pytest.raises(TypeError):
    LoRAConfig(4, 8, 3)


def test_targets_by_name_on_stacked_layers(llama_config):
  model = build_model(llama_config)
  kernels = {name: arrays(getattr(model.model.layers.self_attn, name).kernel)
             for name in ("q_proj", "v_proj")}
  apply_lora(model, LoRAConfig(4, 8, ["q_proj", "v_proj"]), rngs=nnx.Rngs(3))
  assert _lora_paths(model) == {("model", "layers", "self_attn", p, f)
                                for p in ("q_proj", "v_proj") for f in ("lora_a", "lora_b")}
  attn = model.model.layers.self_attn
  layers, d = llama_config.num_layers, llama_config.hidden_size
  kv = llama_config.num_kv_heads * llama_config.head_dim
  assert attn.q_proj.lora_a.shape == (layers, d, 4)
  assert attn.q_proj.lora_b.shape == (layers, 4, d)
  assert attn.v_proj.lora_a.shape == (layers, d, 4)
  assert attn.v_proj.lora_b.shape == (layers, 4, kv)
  for name in ("q_proj", "v_proj"):
    proj = getattr(attn, name)
    assert type(proj.lora_a) is nnx.LoRAParam and type(proj.lora_b) is nnx.LoRAParam
    assert type(proj.kernel) is nnx.Param  # frozen base weight, at its old path
    np.testing.assert_array_equal(arrays(proj.kernel), kernels[name])
    assert proj.lora_scale == 2.0 and not proj.lora_merged
    np.testing.assert_array_equal(arrays(proj.lora_b), 0.0)
    # PEFT's default init of lora_A (r, in): kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in)).
    a = arrays(proj.lora_a)
    bound = 1 / math.sqrt(d)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(a.std() - bound / math.sqrt(3)) < 0.1 * bound
    assert not np.allclose(a[0], a[1])  # one adapter per layer
  assert attn.k_proj.lora_a is None and model.model.layers.mlp.up_proj.lora_a is None


@pytest.mark.parametrize("targets, adapted", [
    (["attn.c_proj"], {"attn.c_proj"}),
    (["c_proj"], {"attn.c_proj", "mlp.c_proj"}),
    ([r"c_attn", "c_fc"], {"attn.c_attn", "mlp.c_fc"}),
    (r"transformer\.h\.\d+\.mlp\.c_(fc|proj)", {"mlp.c_fc", "mlp.c_proj"}),
    (r".*\.c_attn", {"attn.c_attn"}),
])
def test_targets_by_suffix_and_regex(targets, adapted):
  model = build_model(config_by_name("tiny-gpt2"))
  apply_lora(model, LoRAConfig(2, 2, targets), rngs=nnx.Rngs(0))
  assert {".".join(str(k) for k in path[2:]) for path, _ in lora_modules(model)} == adapted


def test_all_linear_skips_the_output_head_and_exclude_modules(llama_config):
  assert not llama_config.tie_word_embeddings
  model = build_model(llama_config)
  apply_lora(model, LoRAConfig(2, 2, "all-linear", exclude_modules=["down_proj"]),
             rngs=nnx.Rngs(0))
  names = {str(path[-1]) for path, _ in lora_modules(model)}
  assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"}
  assert model.lm_head.lora_a is None
  head = apply_lora(build_model(llama_config), LoRAConfig(2, 2, ["lm_head"]), rngs=nnx.Rngs(0))
  assert head.lm_head.lora_a.shape == (llama_config.hidden_size, 2)  # not stacked


def test_target_errors(llama_config):
  model = build_model(llama_config)
  with pytest.raises(ValueError, match=r"matches no linear module of Llama.*q_proj.*"
                     r"model\.layers\.0\.mlp\.down_proj"):
    apply_lora(model, LoRAConfig(2, 2, ["query"]), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"matches layers \[0\] of 2 of the stacked"):
    apply_lora(model, LoRAConfig(2, 2, r"model\.layers\.0\.self_attn\.q_proj"),
               rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="LlamaAttention: LoRA adapts linear layers only"):
    apply_lora(model, LoRAConfig(2, 2, ["self_attn"]), rngs=nnx.Rngs(0))
  assert not lora_modules(model)  # nothing changed by the failed calls
  apply_lora(model, LoRAConfig(2, 2, ["q_proj"]), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="already has a LoRA adapter"):
    apply_lora(model, LoRAConfig(2, 2, ["q_proj", "k_proj"]), rngs=nnx.Rngs(0))
  assert model.model.layers.self_attn.k_proj.lora_a is None
  with pytest.raises(ValueError, match="matches no linear module of MLP.*down, up"):
    apply_lora(MLP(nnx.Rngs(0)), LoRAConfig(2, 2, ["proj"]), rngs=nnx.Rngs(0))


def test_zero_lora_b_leaves_the_output_unchanged(llama_config):
  model = build_model(llama_config)
  ids = jax.random.randint(jax.random.key(0), (2, 12), 0, llama_config.vocab_size)
  before = np.asarray(model(ids))
  apply_lora(model, LoRAConfig(4, 8, "all-linear"), rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(np.asarray(model(ids)), before)
  mlp = MLP(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 8))
  before = np.asarray(mlp(x))
  apply_lora(mlp, LoRAConfig(4, 8, ["up", "down"]), rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(np.asarray(mlp(x)), before)


def test_nnx_linear_becomes_lora_linear_with_the_same_variables():
  mlp = MLP(nnx.Rngs(0))
  kernel, bias = mlp.up.kernel, mlp.up.bias
  apply_lora(mlp, LoRAConfig(4, 8, ["up"]), rngs=nnx.Rngs(1))
  assert type(mlp.up) is LoRALinear and isinstance(mlp.up, nnx.Linear)
  assert mlp.up.kernel is kernel and mlp.up.bias is bias
  assert (mlp.up.in_features, mlp.up.out_features) == (8, 16)
  assert type(mlp.down) is nnx.Linear
  assert {tuple(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(mlp, nnx.Param))} == {
      ("up", "kernel"), ("up", "bias"), ("up", "lora_a"), ("up", "lora_b"), ("down", "kernel")}


def test_forward_against_numpy_plain_model():
  mlp = MLP(nnx.Rngs(0))
  apply_lora(mlp, LoRAConfig(4, 6, ["up", "down"]), rngs=nnx.Rngs(1))
  randomize_adapters(mlp, seed=2, b_std=0.5)
  x = np.asarray(jax.random.normal(jax.random.key(3), (5, 8)))
  up, down = mlp.up, mlp.down
  h = np.tanh(np_linear(x, arrays(up.kernel), arrays(up.bias), arrays(up.lora_a),
                        arrays(up.lora_b), 1.5))
  ref = np_linear(h, arrays(down.kernel), None, arrays(down.lora_a), arrays(down.lora_b), 1.5)
  without = np_linear(np.tanh(np_linear(x, arrays(up.kernel), arrays(up.bias))),
                      arrays(down.kernel))
  assert np.abs(ref - without).max() > 0.1 * np.abs(ref).max()  # the adapter matters
  np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)


def _scanned_reference(model, x, scale, rate=0.0):
  proj = model.blocks.proj
  k, bias, a, b = (arrays(v) for v in (proj.kernel, proj.bias, proj.lora_a, proj.lora_b))
  x = np.asarray(x, np.float64)
  for layer in range(k.shape[0]):
    x = x + np.tanh(np_linear(x, k[layer], bias[layer], a[layer], b[layer], scale))
  return x


def test_forward_against_numpy_scanned_layers():
  model = Scanned(3, nnx.Rngs(0))
  apply_lora(model, LoRAConfig(2, 4, ["proj"]), rngs=nnx.Rngs(1))
  proj = model.blocks.proj
  assert proj.kernel.shape == (3, 8, 8)
  assert proj.lora_a.shape == (3, 8, 2) and proj.lora_b.shape == (3, 2, 8)
  randomize_adapters(model, seed=4, b_std=0.5)
  x = jax.random.normal(jax.random.key(5), (4, 8))
  ref = _scanned_reference(model, x, 2.0)
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(model, x)), ref,
                             rtol=1e-5, atol=1e-5)


def test_dropout_on_the_adapter_input_only():
  model = Scanned(2, nnx.Rngs(0))
  apply_lora(model, LoRAConfig(2, 4, ["proj"], dropout=0.5), rngs=nnx.Rngs(params=1, dropout=2))
  dropout = model.blocks.proj.lora_dropout
  assert isinstance(dropout, nnx.Dropout) and dropout.rate == 0.5
  assert dropout.rngs.key.shape == (2,)  # one stream per stacked layer
  x = jax.random.normal(jax.random.key(5), (16, 8))
  forward = nnx.jit(lambda m, x: m(x))
  # lora_b = 0: the base path has no dropout, so the output is the base output.
  base = _scanned_reference(model, x, 2.0)
  np.testing.assert_allclose(np.asarray(forward(model, x)), base, rtol=1e-5, atol=1e-5)
  randomize_adapters(model, seed=4, b_std=0.5)
  ref = _scanned_reference(model, x, 2.0)
  first, second = np.asarray(forward(model, x)), np.asarray(forward(model, x))
  assert np.abs(first - ref).max() > 1e-2 and np.abs(first - second).max() > 1e-2
  model.eval()
  np.testing.assert_allclose(np.asarray(forward(model, x)), ref, rtol=1e-5, atol=1e-5)
  model.train()
  assert np.abs(np.asarray(forward(model, x)) - ref).max() > 1e-2
  # No dropout module at all for rate 0.
  plain = apply_lora(Scanned(2, nnx.Rngs(0)), LoRAConfig(2, 4, ["proj"]), rngs=nnx.Rngs(1))
  assert plain.blocks.proj.lora_dropout is None


def test_factor_dtypes_with_bf16_base_weights(llama_config):
  model = build_model(llama_config, dtype=jnp.bfloat16)
  apply_lora(model, LoRAConfig(4, 8, ["q_proj"]), rngs=nnx.Rngs(1))
  proj = model.model.layers.self_attn.q_proj
  assert proj.kernel.dtype == jnp.bfloat16 and proj.lora_a.dtype == jnp.float32
  model = build_model(llama_config, dtype=jnp.bfloat16)
  apply_lora(model, LoRAConfig(4, 8, ["q_proj"]), rngs=nnx.Rngs(1), param_dtype=jnp.bfloat16)
  assert model.model.layers.self_attn.q_proj.lora_b.dtype == jnp.bfloat16


def test_lora_scale_of_one_scale_and_per_module(llama_config):
  model = build_model(llama_config)
  with pytest.raises(ValueError, match="no LoRA adapter"):
    lora_scale_of(model)
  apply_lora(model, LoRAConfig(4, 8, ["q_proj"]), rngs=nnx.Rngs(1))
  assert lora_scale_of(model) == 2.0
  apply_lora(model, LoRAConfig(4, 12, ["v_proj"], use_rslora=True), rngs=nnx.Rngs(2))
  scale = lora_scale_of(model)
  assert callable(scale)
  params = lora_state(model)
  by_module = {}
  for a_path, _ in apl.lora_pairs(params):
    by_module[str(a_path[-2].key)] = scale(a_path[:-1])
  assert by_module == {"q_proj": 2.0, "v_proj": 6.0}
  with pytest.raises(ValueError, match="not a LoRA layer"):
    scale(("model", "layers", "mlp"))
  # The optimizer takes the callable: each pair's step is the step with its own scale.
  params = nnx.to_pure_dict(params)
  grads = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size).reshape(x.shape)), params)
  tx = apl.scale_by_adaprelora(lora_scale=scale, b1=None)
  updates, _ = tx.update(grads, tx.init(params), params)
  attn = lambda tree: tree["model"]["layers"]["self_attn"]  # noqa: E731
  for name, s in (("q_proj", 2.0), ("v_proj", 6.0)):
    alone = apl.scale_by_adaprelora(lora_scale=s, b1=None)
    p, g = attn(params)[name], attn(grads)[name]
    expected, _ = alone.update(g, alone.init(p), p)
    for f in ("lora_a", "lora_b"):
      np.testing.assert_allclose(attn(updates)[name][f], expected[f], rtol=1e-6, atol=1e-12)
