"""The pairing rule (SPEC section 2) and the errors for bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import adaprelora_jax as apl


def _keystrs(pairs):
  return [(jax.tree_util.keystr(a), jax.tree_util.keystr(b)) for a, b in pairs]


def test_pairs_plain_dict_in_tree_order():
  params = {"z": {"lora_b": jnp.zeros((2, 3)), "lora_a": jnp.zeros((4, 2))},
            "a": {"lora_a": jnp.zeros((5, 2)), "lora_b": jnp.zeros((2, 6))}}
  assert _keystrs(apl.lora_pairs(params)) == [
      ("['a']['lora_a']", "['a']['lora_b']"), ("['z']['lora_a']", "['z']['lora_b']")]


def test_pairs_qwix_names_and_siblings_only():
  params = {"attn": {"q_lora_a": jnp.zeros((4, 2)), "q_lora_b": jnp.zeros((2, 4)),
                     "kv_lora_a": jnp.zeros((4, 2)), "kv_lora_b": jnp.zeros((2, 8))}}
  assert _keystrs(apl.lora_pairs(params)) == [
      ("['attn']['kv_lora_a']", "['attn']['kv_lora_b']"),
      ("['attn']['q_lora_a']", "['attn']['q_lora_b']")]
  # Factors under different parents never pair.
  split = {"x": {"lora_a": jnp.zeros((4, 2))}, "y": {"lora_b": jnp.zeros((2, 4))}}
  assert apl.lora_pairs(split) == []


def test_pairs_nnx_state_drops_value_from_paths():
  model = nnx.LoRALinear(6, 5, lora_rank=2, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.LoRAParam)
  pairs = apl.lora_pairs(state)
  assert _keystrs(pairs) == [("['lora']['lora_a']", "['lora']['lora_b']")]
  assert _keystrs(apl.lora_pairs(nnx.as_pure(state))) == _keystrs(pairs)


def test_pairs_linen_params_and_dataclass_pytrees():
  class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
      a = self.param("lora_a", nn.initializers.normal(), (x.shape[-1], 2))
      b = self.param("lora_b", nn.initializers.zeros, (2, 3))
      return x @ a @ b

  params = Dense().init(jax.random.key(0), jnp.ones((1, 4)))["params"]
  assert _keystrs(apl.lora_pairs(params)) == [("['lora_a']", "['lora_b']")]

  pair = jax.tree_util.register_dataclass(
      dataclasses.make_dataclass("Pair", ["lora_a", "lora_b"]))
  tree = [pair(jnp.zeros((4, 2)), jnp.zeros((2, 3)))]
  assert _keystrs(apl.lora_pairs(tree)) == [("[0].lora_a", "[0].lora_b")]


def _init_error(params, **kw):
  with pytest.raises(ValueError) as info:
    apl.scale_by_adaprelora(**kw).init(params)
  return str(info.value)


def test_unpaired_leaf_is_an_error_naming_path_and_fix():
  msg = _init_error({"dense": {"kernel": jnp.zeros((4, 4))},
                     "lora": {"lora_a": jnp.zeros((4, 2)), "lora_b": jnp.zeros((2, 4))}})
  assert "['dense']['kernel']" in msg and "optax.partition" in msg
  msg = _init_error({"lora": {"lora_a": jnp.zeros((4, 2))}})
  assert "['lora']['lora_a']" in msg


def test_inconsistent_shapes_are_errors():
  assert "ranks disagree" in _init_error(
      {"lora_a": jnp.zeros((4, 2)), "lora_b": jnp.zeros((3, 4))})
  assert "batch axes disagree" in _init_error(
      {"lora_a": jnp.zeros((2, 4, 2)), "lora_b": jnp.zeros((3, 2, 4))})
  assert "LoRADimensionNumbers" in _init_error(
      {"lora_a": jnp.zeros((4,)), "lora_b": jnp.zeros((2, 4))})
  assert "LoRADimensionNumbers" in _init_error(
      {"lora_a": jnp.zeros((2, 4, 2)), "lora_b": jnp.zeros((2, 2, 4))},
      dimension_numbers=apl.LoRADimensionNumbers(batch_axes=2))


def test_no_pairs_non_arrays_and_integer_dtypes_are_errors():
  assert "no leaves" in _init_error({})
  assert "not an array" in _init_error({"lora_a": "x", "lora_b": jnp.zeros((2, 4))})
  assert "floating point" in _init_error(
      {"lora_a": jnp.zeros((4, 2), jnp.int32), "lora_b": jnp.zeros((2, 4))})
  with pytest.raises(ValueError, match="lora_scale"):
    params = {"lora_a": jnp.zeros((4, 2)), "lora_b": jnp.zeros((2, 4))}
    tx = apl.scale_by_adaprelora(lora_scale=-1.0)
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match="needs the current LoRA factors"):
    tx = apl.scale_by_adaprelora()
    tx.update(params, tx.init(params))


def test_dimension_numbers_forms_agree():
  rng = np.random.default_rng(0)
  params = {"stacked": {"lora_a": jnp.asarray(rng.normal(size=(2, 3, 4, 2)), jnp.float32),
                        "lora_b": jnp.asarray(rng.normal(size=(2, 2, 5)), jnp.float32)},
            "flat": {"lora_a": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
                     "lora_b": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)}}
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
  dn = apl.LoRADimensionNumbers
  variants = [
      {"stacked": dn(1), "flat": None},
      {"stacked": dn(1), "flat": dn(0)},
      lambda p: {"stacked": dn(1), "flat": dn(0)},
  ]
  results = []
  for dims in variants:
    tx = apl.scale_by_adaprelora(dimension_numbers=dims)
    state = tx.init(params)
    assert state.nu["stacked"]["lora_a"].shape == (2, 3, 4)  # batch + two input axes
    results.append(tx.update(grads, state, params)[0])
  for other in results[1:]:
    jax.tree.map(np.testing.assert_array_equal, results[0], other)
  # The stacked pair with input axes (3, 4) equals the same pair with them flattened.
  flat_params = {"lora_a": params["stacked"]["lora_a"].reshape(2, 12, 2),
                 "lora_b": params["stacked"]["lora_b"]}
  flat_grads = {"lora_a": grads["stacked"]["lora_a"].reshape(2, 12, 2),
                "lora_b": grads["stacked"]["lora_b"]}
  tx = apl.scale_by_adaprelora()
  flat_updates, _ = tx.update(flat_grads, tx.init(flat_params), flat_params)
  np.testing.assert_allclose(results[0]["stacked"]["lora_a"].reshape(2, 12, 2),
                             flat_updates["lora_a"], rtol=1e-5, atol=1e-7)
  with pytest.raises(TypeError):
    dn(1.5)


def test_masked_holes_pass_through():
  rng = np.random.default_rng(0)
  params = {"lora": {"lora_a": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
                     "lora_b": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)},
            "bias": jnp.ones((4,))}
  mask = {"lora": {"lora_a": True, "lora_b": True}, "bias": False}
  tx = optax.masked(apl.scale_by_adaprelora(), mask)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["bias"], grads["bias"])  # Untouched.
  plain = apl.scale_by_adaprelora()
  lora_updates, _ = plain.update(grads["lora"], plain.init(params["lora"]), params["lora"])
  jax.tree.map(np.testing.assert_array_equal, updates["lora"], lora_updates)


def test_lora_scale_callable_gets_parent_path_and_scales_per_pair():
  rng = np.random.default_rng(2)
  params = {name: {"lora_a": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
                   "lora_b": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)}
            for name in ("q", "v")}
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
  seen = []

  def scale(parent):
    seen.append(jax.tree_util.keystr(parent))
    return {"q": 2.0, "v": 0.5}[parent[-1].key]

  tx = apl.scale_by_adaprelora(lora_scale=scale)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert set(seen) == {"['q']", "['v']"}
  for name, s in (("q", 2.0), ("v", 0.5)):
    single = apl.scale_by_adaprelora(lora_scale=s)
    expected, _ = single.update(grads[name], single.init(params[name]), params[name])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), updates[name],
                 expected)


@pytest.mark.parametrize("clip", [1.0, 1e-3, None])
def test_wrong_lora_scale_multiplies_the_update_exactly(clip):
  """SPEC 3: computing with s' instead of s gives s / s' times the update, clipping included."""
  rng = np.random.default_rng(3)
  params = {"lora_a": jnp.asarray(rng.normal(size=(12, 3)), jnp.float32),
            "lora_b": jnp.asarray(rng.normal(size=(3, 9)), jnp.float32)}
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
           for _ in range(3)]
  runs = {}
  for s in (2.0, 0.5, 0.3):
    tx = apl.scale_by_adaprelora(lora_scale=s, clipping_threshold=clip)
    state, outs = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      outs.append(u)
    runs[s] = outs
  for t in range(3):
    for k in params:
      np.testing.assert_allclose(runs[0.5][t][k], 4.0 * runs[2.0][t][k], rtol=1e-6)
      np.testing.assert_allclose(runs[0.3][t][k], (2.0 / 0.3) * runs[2.0][t][k], rtol=1e-4)
