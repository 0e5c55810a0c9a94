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
    "loraplus": lambda: apl.loraplus(1e-2, lr_ratio=4.0, weight_decay=1e-3),
    "scaled_adamw": lambda: apl.scaled_adamw(1e-2, weight_decay=1e-3),
    "lora_pro": lambda: apl.lora_pro(1e-2, lora_scale=2.0),
    "lora_pro_full": lambda: apl.lora_pro(1e-2, lora_scale=2.0, mode="full"),
    "lora_rite": lambda: apl.lora_rite(1e-2, escape_mass=True),
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



# The family's own layouts: the shared ones plus experts whose batch axis is sharded, so
# that per-pair r x r state must follow the batch sharding.
FAMILY_LAYOUT = {**LAYOUT,
                 "experts": ((4, 8, 2), P("fsdp", None, None), (4, 2, 8), P("fsdp", None, "tensor"))}


def _family_tree(fn):
  return {k: {"lora_a": fn(k, sa, pa), "lora_b": fn(k, sb, pb)}
          for k, (sa, pa, sb, pb) in FAMILY_LAYOUT.items()}


def _family_params(seed, mesh=None):
  rng = np.random.default_rng(seed)
  def make(key, shape, spec):
    x = rng.normal(size=shape).astype(np.float32) / 3
    return jnp.asarray(x) if mesh is None else jax.device_put(x, NamedSharding(mesh, spec))
  return _family_tree(make)


def _family_state_specs(name, state):
  """(layout, array, expected spec) of the family's state leaves."""
  out = []
  for key, (sa, pa, sb, pb) in FAMILY_LAYOUT.items():
    pa = tuple(pa) + (None,) * (len(sa) - len(pa))
    pb = tuple(pb) + (None,) * (len(sb) - len(pb))
    nb = len(sa) - 2
    batch_rr = pa[:nb] + (None, None)
    if name == "lora_pro_full":
      out.append((key, state.mu[key]["lora_a"], pa[:-1] + pb[nb + 1:]))
      out.append((key, state.nu[key]["lora_a"], pa[:-1] + pb[nb + 1:]))
      assert state.mu[key]["lora_b"] is None
    else:
      for field in ("mu", "nu") + (("prev",) if name == "lora_rite" else ()):
        leaves = getattr(state, field)[key]
        is_rr = name == "lora_rite" and field == "nu"
        out.append((key, leaves["lora_a"], batch_rr if is_rr else pa))
        out.append((key, leaves["lora_b"], batch_rr if is_rr else pb))
    if name == "lora_rite":
      out.append((key, state.prev_inv[key]["lora_b"], batch_rr))
      out.append((key, state.escape[key]["lora_a"], pa[:nb]))
  return out


FAMILY_STATE = {
    "scaled_adamw": lambda: apl.scale_by_scaled_adamw(),
    "lora_pro": lambda: apl.scale_by_lora_pro(),
    "lora_pro_full": lambda: apl.scale_by_lora_pro(mode="full"),
    "lora_rite": lambda: apl.scale_by_lora_rite(escape_mass=True),
}


@pytest.mark.parametrize("name", sorted(FAMILY_STATE))
def test_family_state_follows_indexed_axes_and_sharded_steps_match(name):
  """State specs at init (ShapeDtypeStructs) and after sharded steps; values as unsharded.

  Factor-shaped state is sharded like its factor, r x r state like the batch axes only,
  LoRA-Pro's full-mode m x n moments like lora_a on `in` and lora_b on `out`.
  """
  mesh = _mesh("explicit")
  tx = FAMILY_STATE[name]()
  step = jax.jit(tx.update)
  params, grads = _family_params(0), [_family_params(s) for s in (1, 2)]
  state = tx.init(params)
  want = []
  for g in grads:
    updates, state = step(g, state, params)
    want.append(updates)
  abstract = _family_tree(lambda key, shape, spec: jax.ShapeDtypeStruct(
      shape, jnp.float32, sharding=NamedSharding(mesh, spec)))
  with jax.set_mesh(mesh):
    state = tx.init(abstract)
    for key, x, spec in _family_state_specs(name, state):
      assert _spec_of(x) == tuple(spec), (key, x.sharding, spec)
    params = _family_params(0, mesh)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for seed, expected in zip((1, 2), want):
      updates, state = step(_family_params(seed, mesh), state, params)
      # Adam-normalised directions (entries ~1, not times a learning rate): f32
      # reductions in another order move a few entries by ~1e-5.
      jax.tree.map(lambda x, y: np.testing.assert_allclose(
          np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5), updates, expected)
      for key, x, spec in _family_state_specs(name, state):
        assert _spec_of(x) == tuple(spec), (key, x.sharding, spec)


@pytest.mark.parametrize("kind", sorted(AXIS_TYPES))
@pytest.mark.parametrize("opt", ["adaprelora", "scaled_adamw", "lora_rite"])
def test_jitted_init_shards_state_from_variable_metadata(kind, opt):
  """Under `jit` a tracer on Auto axes carries no sharding: the Variables' metadata does."""
  mesh = _mesh(kind)
  tx = apl.optimizers[opt](1e-3)
  with jax.set_mesh(mesh):
    model = nnx.LoRALinear(16, 32, lora_rank=4, rngs=nnx.Rngs(0),
                           a_metadata={"out_sharding": P("fsdp", None)},
                           b_metadata={"out_sharding": P(None, "tensor")})
    variables = nnx.state(model, nnx.LoRAParam)
    state = jax.jit(tx.init)(variables)
    # ShapeDtypeStructs inside a trace (nnx.eval_shape-style abstract init) work too.
    abstract = jax.eval_shape(tx.init, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        nnx.as_pure(variables)))
  inner = state[0]  # The chain's first transform holds the moments.
  mu = inner.mu["lora"]
  assert _spec_of(mu["lora_a"]) == ("fsdp", None)
  assert _spec_of(mu["lora_b"]) == (None, "tensor")
  if opt == "adaprelora":
    assert _spec_of(inner.nu["lora"]["lora_b"]) == ("tensor",)
    assert _spec_of(inner.nu["lora"]["lora_a"]) == ("fsdp",)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
