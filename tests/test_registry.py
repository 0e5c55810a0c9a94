"""`adaprelora_jax.optimizers`: the registry by name, and its wrapped optax baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

import adaprelora_jax as apl

NAMES = ("adaprelora", "adamw", "adafactor", "loraplus", "scaled_adamw", "lora_pro",
         "lora_pro_full", "lora_rite")


def test_registry_has_spec_names_and_is_read_only():
  assert tuple(apl.optimizers) == NAMES
  assert apl.optimizers["loraplus"] is apl.loraplus
  assert apl.optimizers["lora_rite"] is apl.lora_rite
  with pytest.raises(TypeError):
    apl.optimizers["sgd"] = optax.sgd


def _stacked_params():
  rng = np.random.default_rng(0)
  return {"attn": {"lora_a": jnp.asarray(rng.normal(size=(2, 12, 3)) / 3, jnp.float32),
                   "lora_b": jnp.zeros((2, 3, 10), jnp.float32)}}


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_builds_from_a_learning_rate_and_trains(name):
  params = _stacked_params()
  target = jnp.asarray(np.random.default_rng(1).normal(size=(2, 12, 10)), jnp.float32)
  loss = lambda p: jnp.mean((p["attn"]["lora_a"] @ p["attn"]["lora_b"] - target) ** 2)
  # optax.adafactor's min_dim_size_to_factor decides shapes: it must stay static.
  static = ("min_dim_size_to_factor",) if name == "adafactor" else ()
  tx = optax.inject_hyperparams(apl.optimizers[name], static_args=static)(learning_rate=0.03)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  first = float(loss(params))
  for _ in range(30):
    params, state = step(params, state)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
  assert float(loss(params)) < first


def test_lora_pro_full_is_lora_pro_in_full_mode():
  params = _stacked_params()
  state = apl.optimizers["lora_pro_full"](1e-2).init(params)
  assert state[0].mu["attn"]["lora_a"].shape == (2, 12, 10)


def test_adamw_baseline_defaults_to_no_weight_decay():
  params = {"lora_a": jnp.ones((4, 2)), "lora_b": jnp.ones((2, 3))}
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = apl.optimizers["adamw"](1e-2)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_wrapped_adafactor_works_on_sharded_nnx_lora_where_optax_adafactor_fails(kind):
  axis = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[kind]
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(axis,) * 2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).normal(size=(8, 32)), jnp.float32)

  def build():
    return nnx.LoRALinear(
        16, 32, lora_rank=4, rngs=nnx.Rngs(0),
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), P(None, "tensor")),
        a_metadata={"out_sharding": P(None, None)},
        b_metadata={"out_sharding": P(None, "tensor")})

  def train(model, tx, steps=3):
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)

    @nnx.jit
    def step(model, optimizer):
      diff = nnx.DiffState(0, nnx.LoRAParam)
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2), argnums=diff)(
          model)
      optimizer.update(model, grads)
      return loss

    return [float(step(model, optimizer)) for _ in range(steps)], optimizer

  with jax.set_mesh(mesh):
    # optax.adafactor copies the factors' sharding metadata onto its (1,)-shaped
    # placeholder statistics, which cannot take a 2-D partition spec.
    with pytest.raises((AssertionError, ValueError)):
      train(build(), optax.adafactor(0.1))
    losses, optimizer = train(build(), apl.optimizers["adafactor"](0.1))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  # Rank 4 < min_dim_size_to_factor: a full second moment, sharded like lora_b.
  inner = optimizer.opt_state[0]
  v = inner.v["lora"]["lora_b"][...]
  assert v.shape == (4, 32)
  assert tuple(v.sharding.spec) == (None, "tensor")


FAMILY = ("loraplus", "scaled_adamw", "lora_pro", "lora_pro_full", "lora_rite")


@pytest.mark.parametrize("name", FAMILY)
def test_family_rejects_unpaired_leaves_and_passes_masked_holes(name):
  rng = np.random.default_rng(0)
  arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  params = {"q": {"lora_a": arr(8, 2), "lora_b": arr(2, 4)}, "bias": arr(4)}
  who = "lora_pro" if name == "lora_pro_full" else name
  with pytest.raises(ValueError, match=rf"{who}: .*\['bias'\].*optax.partition"):
    apl.optimizers[name](1e-2).init(params)
  tx = optax.masked(apl.optimizers[name](1e-2), {"q": {"lora_a": True, "lora_b": True},
                                                 "bias": False})
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
  assert bool(jnp.all(updates["bias"] == params["bias"]))  # optax.masked: passed through.
  assert bool(jnp.any(updates["q"]["lora_b"] != 0))
