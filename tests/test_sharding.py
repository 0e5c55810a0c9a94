"""Sharded steps on a 2x4 CPU mesh (FSDP x tensor), for Explicit and Auto axis types."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import adaprelora_jax as apl

AXIS_TYPES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}

# name -> (lora_a shape, lora_a spec, lora_b shape, lora_b spec)
LAYOUT = {
    "stacked": ((2, 16, 4), P(None, "fsdp", None), (2, 4, 24), P(None, None, "tensor")),
    "heads": ((32, 4), P("fsdp", None), (4, 4, 6), P(None, "tensor", None)),
    "replicated": ((8, 2), P(), (2, 8), P()),
}
# How each optimizer of the package is built here; the family adds lines.
OPTIMIZERS = {
    "adaprelora": lambda: apl.adaprelora(1e-2, lora_scale=2.0, weight_decay=1e-3),
}


def _mesh(kind):
  return jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AXIS_TYPES[kind],) * 2)


def _host_params(seed):
  rng = np.random.default_rng(seed)
  return {name: {"lora_a": rng.normal(size=sa).astype(np.float32) / 3,
                 "lora_b": rng.normal(size=sb).astype(np.float32) / 3}
          for name, (sa, _, sb, _) in LAYOUT.items()}


def _specs():
  return {name: {"lora_a": pa, "lora_b": pb} for name, (_, pa, _, pb) in LAYOUT.items()}


def _put(tree, mesh):
  return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)),
                      tree, _specs())


def _spec_of(x):
  spec = tuple(x.sharding.spec)
  return spec + (None,) * (x.ndim - len(spec))


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", sorted(AXIS_TYPES))
def test_sharded_steps_equal_single_device_steps(kind, opt):
  mesh = _mesh(kind)
  tx = OPTIMIZERS[opt]()
  host = _host_params(0)
  grads_host = [_host_params(s) for s in (1, 2, 3)]

  # Single device.
  params = jax.tree.map(jnp.asarray, host)
  state = tx.init(params)
  step = jax.jit(tx.update)
  expected = []
  for g in grads_host:
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    expected.append(params)

  with jax.set_mesh(mesh):
    params = _put(host, mesh)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g, want in zip(grads_host, expected):
      updates, state = step(_put(g, mesh), state, params)
      params = optax.apply_updates(params, updates)
      jax.tree.map(lambda x, y: np.testing.assert_allclose(
          np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6), params, want)
    # Updates and parameters keep the factors' shardings.
    for x, spec in zip(jax.tree.leaves(updates), jax.tree.leaves(_specs())):
      assert _spec_of(x) == tuple(spec) + (None,) * (x.ndim - len(spec)), (x.sharding, spec)


def _expected_state_specs():
  """nu: lora_a's spec without the rank axis / lora_b's without it; mu like the factor."""
  out = {}
  for name, (sa, pa, sb, pb) in LAYOUT.items():
    pa = tuple(pa) + (None,) * (len(sa) - len(pa))
    pb = tuple(pb) + (None,) * (len(sb) - len(pb))
    nb = len(sa) - 2
    out[name] = dict(nu_a=pa[:-1], nu_b=pb[:nb] + pb[nb + 1:], mu_a=pa, mu_b=pb)
  return out


@pytest.mark.parametrize("kind", sorted(AXIS_TYPES))
def test_init_on_shape_dtype_structs_shards_state_along_indexed_axes(kind):
  mesh = _mesh(kind)
  abstract = jax.tree.map(
      lambda x, spec: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16,
                                           sharding=NamedSharding(mesh, spec)),
      _host_params(0), _specs())
  tx = apl.scale_by_adaprelora(mu_dtype=jnp.float32)
  with jax.set_mesh(mesh):
    eager = tx.init(abstract)
    traced = jax.eval_shape(tx.init, abstract) if kind == "explicit" else None
  for name, want in _expected_state_specs().items():
    for state in filter(None, (eager, traced)):
      got = {"nu_a": state.nu[name]["lora_a"], "nu_b": state.nu[name]["lora_b"],
             "mu_a": state.mu[name]["lora_a"], "mu_b": state.mu[name]["lora_b"]}
      for key, x in got.items():
        assert _spec_of(x) == want[key], (name, key, x.sharding, want[key])
      assert got["nu_a"].dtype == jnp.float32 and got["mu_a"].dtype == jnp.float32


@pytest.mark.parametrize("kind", sorted(AXIS_TYPES))
def test_nnx_lora_linear_with_sharding_metadata_trains(kind):
  mesh = _mesh(kind)
  # Contracted axes stay unsharded under Explicit axes (the model's own matmuls would
  # otherwise need out_sharding); the optimizer contracts over the sharded out axis.
  a_spec = P("fsdp", None) if kind == "auto" else P(None, None)

  def build(sharded):
    if not sharded:  # The same initial values, without sharding metadata.
      return nnx.LoRALinear(16, 32, lora_rank=4, rngs=nnx.Rngs(0))
    return nnx.LoRALinear(
        16, 32, lora_rank=4, rngs=nnx.Rngs(0),
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                          P(None, "tensor")),
        a_metadata={"out_sharding": a_spec}, b_metadata={"out_sharding": P(None, "tensor")})

  x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
  y = np.random.default_rng(1).normal(size=(8, 32)).astype(np.float32)

  def train(model, x, y):
    optimizer = nnx.Optimizer(model, apl.adaprelora(3e-2, lora_scale=1.0),
                              wrt=nnx.LoRAParam)

    @nnx.jit
    def step(model, optimizer, x, y):
      loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
      diff = nnx.DiffState(0, nnx.LoRAParam)
      loss, grads = nnx.value_and_grad(loss_fn, argnums=diff)(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(5)]
    return losses, optimizer

  want_losses, _ = train(build(False), jnp.asarray(x), jnp.asarray(y))
  with jax.set_mesh(mesh):
    model = build(True)
    assert _spec_of(model.lora.lora_b[...]) == (None, "tensor")
    xs = jax.device_put(x, NamedSharding(mesh, P("fsdp", None)))
    ys = jax.device_put(y, NamedSharding(mesh, P("fsdp", "tensor")))
    losses, optimizer = train(model, xs, ys)
    # The optimizer state is plain arrays sharded along the axis each leaf indexes.
    state = optimizer.opt_state[0]
    row = state.nu["lora"]["lora_b"][...]
    assert row.shape == (32,) and _spec_of(row) == ("tensor",)
    assert _spec_of(state.mu["lora"]["lora_b"][...]) == (None, "tensor")
    assert _spec_of(model.lora.lora_b[...]) == (None, "tensor")
  np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
  assert losses[-1] < losses[0]
