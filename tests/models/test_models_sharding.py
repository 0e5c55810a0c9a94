"""Sharded models on the 8-device CPU mesh (2 x 4, both axis types) equal unsharded ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from model_cases import VOCAB, forward, left_pad

from adaprelora_jax.models import ShardingConfig, build_model, config_by_name, from_pretrained
from adaprelora_jax.models import generate, make_mesh
from adaprelora_jax.models.sharding import fit_spec

AXIS_TYPES = [AxisType.Explicit, AxisType.Auto]


def test_eight_cpu_devices():
  assert len(jax.devices()) == 8, "tests/conftest.py sets an 8-device CPU platform"


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_make_mesh(axis_type):
  mesh = make_mesh(8, fsdp=2, tensor=4, axis_types=axis_type)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
  assert mesh.axis_types == (axis_type,) * 3
  assert dict(make_mesh(tensor=2, axis_types=axis_type).shape) == {"data": 1, "fsdp": 4,
                                                                   "tensor": 2}
  assert dict(make_mesh(8, data=2, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(make_mesh(4).shape) == {"data": 1, "fsdp": 4, "tensor": 1}


def test_make_mesh_checks_sizes():
  with pytest.raises(ValueError, match="tensor=3"):
    make_mesh(8, tensor=3)
  with pytest.raises(ValueError, match="!= 8 devices"):
    make_mesh(8, data=2, fsdp=2, tensor=4)
  with pytest.raises(ValueError, match="only 8"):
    make_mesh(16)


def test_sharding_config_validation_and_fit():
  with pytest.raises(ValueError, match="embed_vd has 2 dimensions"):
    ShardingConfig(embed_vd=P("tensor", "fsdp", None))
  with pytest.raises(TypeError, match="PartitionSpec"):
    ShardingConfig(act_btd=("data", None, None))
  mesh = make_mesh(8, fsdp=2, tensor=4)
  # GPT-2's vocabulary 50257 is not divisible by 4: that axis is left whole.
  assert fit_spec(P("tensor", "fsdp"), (50257, 768), mesh) == P(None, "fsdp")
  assert fit_spec(P(("data", "fsdp"), None), (6, 3), mesh) == P(("data", "fsdp"), None)
  assert fit_spec(P("absent"), (8,), mesh) == P(None)
  assert fit_spec(P("tensor"), (8,), None) is None


def test_sharded_build_needs_a_mesh():
  with pytest.raises(ValueError, match="set_mesh"):
    build_model(config_by_name("tiny-llama"), sharding=ShardingConfig.fsdp_tp())


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_sharded_forward_equals_unsharded(checkpoints, loaded, name, axis_type):
  _, folder = checkpoints(name)
  _, model = loaded(name)
  rng = np.random.RandomState(0)
  ids, mask = left_pad([rng.randint(3, VOCAB - 1, n) for n in (12, 9, 12, 5)])
  ref = forward(model, ids, mask)
  mesh = make_mesh(8, fsdp=2, tensor=4, axis_types=axis_type)
  sharded = from_pretrained(folder, mesh=mesh)
  layers = sharded.model.layers if name == "llama" else sharded.transformer.h
  proj = layers.self_attn.q_proj if name == "llama" else layers.attn.c_attn
  kernel = proj.kernel
  assert kernel.get_metadata()["out_sharding"] == (None, "fsdp", "tensor")
  assert kernel[...].sharding.spec == P(None, "fsdp", "tensor")
  assert kernel[...].sharding.mesh.axis_types == (axis_type,) * 3
  with jax.set_mesh(mesh):
    out = forward(sharded, ids, mask)
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_sharded_generation_equals_unsharded(checkpoints, loaded, axis_type):
  _, folder = checkpoints("qwen2")
  _, model = loaded("qwen2")
  rng = np.random.RandomState(3)
  ids, mask = left_pad([rng.randint(3, VOCAB - 1, n) for n in (6, 3)])
  kw = dict(attention_mask=mask, max_new_tokens=6, num_beams=2, eos_token_id=(),
            pad_token_id=0)
  ref = np.asarray(generate(model, ids, **kw))
  mesh = make_mesh(8, fsdp=2, tensor=4, axis_types=axis_type)
  sharded = from_pretrained(folder, mesh=mesh)
  with jax.set_mesh(mesh):
    np.testing.assert_array_equal(np.asarray(generate(sharded, ids, **kw)), ref)


def test_7b_abstract_model_in_a_mesh_is_sharded():
  """`nnx.eval_shape` of Mistral-7B in a 2 x 4 mesh: sharded abstract variables, no memory."""
  mesh = make_mesh(8, fsdp=2, tensor=4)
  with jax.set_mesh(mesh):
    abstract = nnx.eval_shape(lambda: build_model(
        config_by_name("mistral-7b"), dtype=jnp.bfloat16, sharding=ShardingConfig.fsdp_tp()))
  q = abstract.model.layers.self_attn.q_proj.kernel
  assert q.shape == (32, 4096, 4096) and q.dtype == jnp.bfloat16
  assert q.get_value().sharding.spec == P(None, "fsdp", "tensor")
  o = abstract.model.layers.self_attn.o_proj.kernel
  assert o.get_value().sharding.spec == P(None, "tensor", "fsdp")
  embed = abstract.model.embed_tokens.embedding
  assert embed.get_value().sharding.spec == P("tensor", "fsdp")
  shardings = nnx.get_named_sharding(nnx.state(abstract), mesh)
  assert shardings["lm_head"]["kernel"].get_value().spec == P("fsdp", "tensor")


def test_7b_training_step_compiles_from_abstract_inputs():
  """Loss and gradients of the bf16 Mistral-7B on a 2 x 4 Explicit mesh, lowered from
  abstract sharded inputs: every weight split eight ways (no replicated copy)."""
  mesh = make_mesh(8, fsdp=2, tensor=4)
  config = config_by_name("mistral-7b")
  with jax.set_mesh(mesh):
    graphdef, state = nnx.get_abstract_model(lambda: build_model(
        config, dtype=jnp.bfloat16, sharding=ShardingConfig.fsdp_tp(), remat=True), mesh)
    ids = jax.ShapeDtypeStruct((2, 64), jnp.int32,
                               sharding=jax.NamedSharding(mesh, P(("data", "fsdp"), None)))

    def loss(state, ids):
      logits = nnx.merge(graphdef, state)(ids[:, :-1])
      labels = jax.nn.one_hot(ids[:, 1:], logits.shape[-1], dtype=logits.dtype)
      return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))

    compiled = jax.jit(jax.value_and_grad(loss)).lower(state, ids).compile()
  weights = 7_241_732_096 * 2  # bf16 bytes
  memory = compiled.memory_analysis()
  assert memory.argument_size_in_bytes == pytest.approx(weights / 8, rel=1e-3)
  assert memory.output_size_in_bytes == pytest.approx(weights / 8, rel=1e-3)
