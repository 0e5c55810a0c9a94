"""A many-pair stacked step (the shape that once deadlocked batched LAPACK on 2 CPU cores).

Seven Llama-block projections of 512- and 1376-wide factors, r = 16, two stacked layers,
several steps under a timeout: a hang fails the test instead of stalling CI.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaprelora_jax as apl

SHAPES = {"q_proj": (512, 512), "k_proj": (512, 512), "v_proj": (512, 512),
          "o_proj": (512, 512), "gate_proj": (512, 1376), "up_proj": (512, 1376),
          "down_proj": (1376, 512)}


def llama_block_factors(layers=2, rank=16, seed=0):
  rng = np.random.default_rng(seed)
  return {name: {"lora_a": jnp.asarray(rng.normal(size=(layers, n, rank)) / np.sqrt(n),
                                       jnp.float32),
                 "lora_b": jnp.asarray(rng.normal(size=(layers, rank, m)) * 1e-2,
                                       jnp.float32)}
          for name, (n, m) in SHAPES.items()}


OPTIMIZERS = {
    "adaprelora": lambda: apl.adaprelora(1e-3, lora_scale=2.0),
    "loraplus": lambda: apl.loraplus(1e-3),
    "scaled_adamw": lambda: apl.scaled_adamw(1e-3),
    "lora_pro": lambda: apl.lora_pro(1e-3, lora_scale=2.0),  # One batched eigh per step.
    "lora_rite": lambda: apl.lora_rite(1e-3, escape_mass=True),  # One batched eigh per step.
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_many_pair_stacked_step_finishes(name):
  tx = OPTIMIZERS[name]()
  params = llama_block_factors()
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for seed in range(3):
    grads = llama_block_factors(seed=seed + 1)
    params, state = jax.block_until_ready(step(params, state, grads))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params, state)))


def _primitives(jaxpr):
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _primitives(sub)


@pytest.mark.parametrize("name, eighs", [("lora_pro", 1), ("lora_rite", 1), ("scaled_adamw", 0)])
def test_one_batched_eigh_per_step_and_no_other_lapack_call(name, eighs):
  """Seven pairs of one rank: one `eigh` for all their r x r matrices, no QR/Cholesky/solve."""
  tx = OPTIMIZERS[name]()
  params = llama_block_factors(layers=2)
  state = jax.eval_shape(tx.init, params)
  prims = list(_primitives(jax.make_jaxpr(tx.update)(params, state, params)))
  assert prims.count("eigh") == eighs, prims.count("eigh")
  lapack = {"cholesky", "qr", "householder_product", "lu", "triangular_solve", "svd", "geqrf"}
  assert not lapack & set(prims), lapack & set(prims)
