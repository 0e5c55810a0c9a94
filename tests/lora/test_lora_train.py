"""Training with `nnx.Optimizer(model, adaprelora(..., lora_scale=lora_scale_of(model)),
wrt=nnx.LoRAParam)` moves only the LoRA factors, on one device and on the 8-device CPU
mesh (both axis types), where the factors are sharded like their kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from lora_helpers import lm_loss

import adaprelora_jax as apl
from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_scale_of, merge_lora, unmerge_lora
from adaprelora_jax.models import ShardingConfig, build_model, config_by_name, make_mesh

TARGETS = ["q_proj", "o_proj", "down_proj"]  # column- and row-parallel kernels
BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
STEPS = 4


def _flat(state):
  return {tuple(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


@nnx.jit
def _step(model, optimizer, ids):
  loss, grads = nnx.value_and_grad(lm_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, ids)
  optimizer.update(model, grads)
  return loss


def _train(model, ids):
  """STEPS AdaPreLoRA steps on the factors; the losses."""
  tx = apl.adaprelora(1e-3, lora_scale=lora_scale_of(model))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
  return [float(_step(model, optimizer, ids)) for _ in range(STEPS)]


def _ids(config, seed=0):
  return jax.random.randint(jax.random.key(seed), (4, 17), 0, config.vocab_size)


def _check_only_factors_moved(before, model):
  base, lora = _flat(nnx.state(model, BASE)), _flat(nnx.state(model, nnx.LoRAParam))
  assert base.keys() == before["base"].keys()
  for path, value in base.items():
    np.testing.assert_array_equal(value, before["base"][path], err_msg=str(path))
  for path, value in lora.items():
    assert np.abs(value - before["lora"][path]).max() > 0, f"{path} did not move"


def _snapshot(model):
  return {"base": _flat(nnx.state(model, BASE)), "lora": _flat(nnx.state(model, nnx.LoRAParam))}


@pytest.fixture(scope="module")
def single_device_run():
  """Tiny Llama, remat on, LoRA with dropout: (factors before, after, losses)."""
  config = config_by_name("tiny-llama")
  model = build_model(config, remat=True, rngs=nnx.Rngs(0))
  apply_lora(model, LoRAConfig(4, 8, TARGETS, dropout=0.1), rngs=nnx.Rngs(1))
  before = _snapshot(model)
  losses = _train(model, _ids(config))
  return model, before, losses


def test_training_moves_only_the_factors(single_device_run):
  model, before, losses = single_device_run
  assert losses[-1] < losses[0]
  _check_only_factors_moved(before, model)
  # The step updated the dropout's RNG counts (one stream per stacked layer).
  assert model.model.layers.self_attn.q_proj.lora_dropout.rngs.count.shape == (2,)
  # Merged for inference and unmerged: the trained model is unchanged.
  ids = _ids(model.config, seed=1)
  model.eval()
  forward = nnx.jit(lambda m, ids: m(ids))
  logits = np.asarray(forward(model, ids))
  merge_lora(model)
  np.testing.assert_allclose(np.asarray(forward(model, ids)), logits, rtol=1e-5,
                             atol=1e-5 * np.abs(logits).max())
  unmerge_lora(model)
  model.train()


@pytest.fixture(scope="module")
def one_device_reference():
  """The unsharded run the mesh runs must reproduce: (initial snapshot, model, losses)."""
  config = config_by_name("tiny-llama")
  model = apply_lora(build_model(config, rngs=nnx.Rngs(0)), LoRAConfig(4, 8, TARGETS),
                     rngs=nnx.Rngs(1))
  init = _snapshot(model)
  return init, model, _train(model, _ids(config))


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_factors_and_training_on_the_mesh(one_device_reference, axis_type):
  """On a 2 x 4 mesh: factor shardings, only factors move, the same steps as one device."""
  reference_init, reference, reference_losses = one_device_reference
  config = config_by_name("tiny-llama")
  lora_config = LoRAConfig(4, 8, TARGETS)
  ids = _ids(config)
  mesh = make_mesh(8, fsdp=2, tensor=4, axis_types=axis_type)
  with jax.set_mesh(mesh):
    model = build_model(config, sharding=ShardingConfig.fsdp_tp(), rngs=nnx.Rngs(0))
  # Outside the mesh context: the factors are made in the kernels' own mesh.
  apply_lora(model, lora_config, rngs=nnx.Rngs(1))
  layers = model.model.layers
  expected = {  # kernel spec -> lora_a shares its `in` axis, lora_b its `out` axis
      layers.self_attn.q_proj: (P(None, "fsdp", "tensor"), P(None, "fsdp", None),
                                P(None, None, "tensor")),
      layers.self_attn.o_proj: (P(None, "tensor", "fsdp"), P(None, "tensor", None),
                                P(None, None, "fsdp")),
      layers.mlp.down_proj: (P(None, "tensor", "fsdp"), P(None, "tensor", None),
                             P(None, None, "fsdp")),
  }
  for module, (kernel, a, b) in expected.items():
    assert module.kernel[...].sharding.spec == kernel
    assert module.lora_a.get_metadata()["out_sharding"] == tuple(a)
    assert module.lora_a[...].sharding.spec == a and module.lora_b[...].sharding.spec == b
    assert module.lora_a[...].sharding.mesh.axis_types == (axis_type,) * 3
  before = _snapshot(model)
  for kind in ("base", "lora"):  # the same initial model as on one device
    for path, value in before[kind].items():
      np.testing.assert_array_equal(value, reference_init[kind][path], err_msg=str(path))
  with jax.set_mesh(mesh):
    losses = _train(model, ids)
    assert model.model.layers.self_attn.q_proj.lora_b[...].sharding.spec == P(None, None,
                                                                              "tensor")
  _check_only_factors_moved(before, model)
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-4)
  ours, ref = _flat(nnx.state(model, nnx.LoRAParam)), _flat(nnx.state(reference, nnx.LoRAParam))
  for path, value in ours.items():
    np.testing.assert_allclose(value, ref[path], rtol=0, atol=1e-4 * np.abs(ref[path]).max(),
                               err_msg=str(path))
  # Merging on the mesh keeps the kernels' shardings.
  with jax.set_mesh(mesh):
    merge_lora(model)
  assert layers.self_attn.o_proj.kernel[...].sharding.spec == P(None, "tensor", "fsdp")


def test_bf16_base_weights_train_f32_factors():
  config = config_by_name("tiny-gpt2")
  model = build_model(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  apply_lora(model, LoRAConfig(4, 8, ["c_attn"]), rngs=nnx.Rngs(1))
  before = _snapshot(model)
  losses = _train(model, _ids(config))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  assert model.transformer.h.attn.c_attn.lora_a.dtype == jnp.float32
  _check_only_factors_moved(before, model)


def test_plain_nnx_model_factors_on_the_mesh():
  """`nnx.Linear` kernels sharded by metadata or only by their value's sharding."""
  mesh = make_mesh(8, fsdp=2, tensor=4)

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.tagged = nnx.Linear(16, 32, kernel_metadata={"out_sharding": ("fsdp", "tensor")},
                               rngs=rngs)
      self.placed = nnx.Linear(32, 16, rngs=rngs)

    def __call__(self, x):
      # Both contracting axes split over "tensor": an Explicit mesh needs the output spec.
      return self.placed(self.tagged(x), out_sharding=P(None, "fsdp"))

  with jax.set_mesh(mesh):
    net = Net(nnx.Rngs(0))
  placed = net.placed.kernel
  placed.set_value(jax.device_put(placed.get_value(),
                                  jax.NamedSharding(mesh, P("tensor", "fsdp"))))
  apply_lora(net, LoRAConfig(2, 2, ["tagged", "placed"]), rngs=nnx.Rngs(1))
  assert net.tagged.lora_a[...].sharding.spec == P("fsdp", None)
  assert net.tagged.lora_b[...].sharding.spec == P(None, "tensor")
  assert net.placed.lora_a[...].sharding.spec == P("tensor", None)
  assert net.placed.lora_b[...].sharding.spec == P(None, "fsdp")
  with jax.set_mesh(mesh):
    y = net(jnp.ones((4, 16)))
  assert y.shape == (4, 16) and y.sharding.spec == P(None, "fsdp")
