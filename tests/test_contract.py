"""The optax contract that every optimizer of the package passes.

Adding an optimizer to the contract is one line in `OPTIMIZERS`.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax import nnx

import adaprelora_jax as apl

# name -> (factory, keyword arguments). The factory takes the learning rate first.
OPTIMIZERS = {
    "adaprelora": (apl.adaprelora, dict(lora_scale=2.0, b1=0.9)),
    "adaprelora_no_momentum": (apl.adaprelora, dict(b1=None, clipping_threshold=None)),
    "loraplus": (apl.loraplus, dict(lr_ratio=4.0, weight_decay=1e-3)),
    "scaled_adamw": (apl.scaled_adamw, dict(reg=1e-4, weight_decay=1e-3)),
    "lora_pro": (apl.lora_pro, dict(lora_scale=2.0)),
    "lora_pro_full": (apl.optimizers["lora_pro_full"], dict(lora_scale=2.0)),
    "lora_rite": (apl.lora_rite, dict(escape_mass=True)),
}
NAMES = sorted(OPTIMIZERS)


def _make(name, learning_rate=1e-2, **overrides):
  factory, kwargs = OPTIMIZERS[name]
  return factory(learning_rate, **{**kwargs, **overrides})


def _params(dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  arr = lambda *shape: jnp.asarray(rng.normal(size=shape) / 3, dtype)
  return {
      "layers": {"attn": {"lora_a": arr(2, 12, 3), "lora_b": arr(2, 3, 10)}},
      "out": {"kernel_lora_a": arr(16, 2), "kernel_lora_b": arr(2, 2, 4)},
  }


def _loss(params):
  """A smooth loss of the adapted weights W = a @ b of each pair."""
  w1 = jnp.einsum("lnk,lkm->lnm", params["layers"]["attn"]["lora_a"],
                  params["layers"]["attn"]["lora_b"])
  w2 = jnp.einsum("nk,kho->nho", params["out"]["kernel_lora_a"],
                  params["out"]["kernel_lora_b"])
  return (jnp.sum((w1.astype(jnp.float32) - 0.3) ** 2)
          + jnp.sum(jnp.sin(w2.astype(jnp.float32) - 0.2) ** 2))


def _grads(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


def _assert_trees_close(x, y, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=atol), x, y)


class JitAndNoJitTest(chex.TestCase):
  """`chex.variants` needs an absltest class; the rest of the contract is plain pytest."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*NAMES)
  def test_jit_and_no_jit_agree(self, name):
    tx = _make(name)
    params = _params()
    state = tx.init(params)
    step = self.variant(tx.update)
    reference_tx = _make(name)
    ref_state = reference_tx.init(params)
    for seed in range(2):
      grads = _grads(params, seed)
      updates, state = step(grads, state, params)
      ref_updates, ref_state = jax.jit(reference_tx.update)(grads, ref_state, params)
      _assert_trees_close(updates, ref_updates, rtol=1e-4, atol=1e-6)
      params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", NAMES)
class TestContract:

  def test_no_retrace_on_second_step(self, name):
    tx = _make(name)
    params = _params()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for seed in range(3):
      params, state = step(params, state, _grads(params, seed))
    chex.clear_trace_counter()

  def test_vmap_over_ensemble_equals_per_member(self, name):
    tx = _make(name)
    members = [_params(seed=i) for i in range(3)]
    grads = [_grads(p, 10 + i) for i, p in enumerate(members)]
    states = [tx.init(p) for p in members]
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    vm_updates, vm_state = jax.jit(jax.vmap(tx.update))(
        stack(grads), stack(states), stack(members))
    for i in range(3):
      updates, state = jax.jit(tx.update)(grads[i], states[i], members[i])
      _assert_trees_close(jax.tree.map(lambda x: x[i], vm_updates), updates)
      _assert_trees_close(jax.tree.map(lambda x: x[i], vm_state), state)

  def test_inject_hyperparams_equals_plain(self, name):
    factory, kwargs = OPTIMIZERS[name]
    params = _params()
    plain = factory(3e-2, **kwargs)
    injected = optax.inject_hyperparams(factory)(learning_rate=3e-2, **kwargs)
    s_plain, s_inj = plain.init(params), injected.init(params)
    step_plain, step_inj = jax.jit(plain.update), jax.jit(injected.update)
    for seed in range(3):
      grads = _grads(params, seed)
      u_plain, s_plain = step_plain(grads, s_plain, params)
      u_inj, s_inj = step_inj(grads, s_inj, params)
      _assert_trees_close(u_plain, u_inj, rtol=1e-5, atol=1e-7)
      params = optax.apply_updates(params, u_plain)
    # The injected learning rate really drives the update.
    s_half = s_inj._replace(hyperparams={**s_inj.hyperparams,
                                         "learning_rate": jnp.asarray(1.5e-2)})
    grads = _grads(params, 99)
    u_full, _ = step_inj(grads, s_inj, params)
    u_half, _ = step_inj(grads, s_half, params)
    _assert_trees_close(jax.tree.map(lambda x: x / 2, u_full), u_half)

  def test_multi_steps_accumulates(self, name):
    tx = optax.MultiSteps(_make(name), every_k_schedule=2)
    params = _params()
    state = tx.init(params)
    step = jax.jit(tx.update)
    g1, g2 = _grads(params, 1), _grads(params, 2)
    u1, state = step(g1, state, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u1))
    u2, state = step(g2, state, params)
    inner = _make(name)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    expected, _ = inner.update(mean, inner.init(params), params)
    _assert_trees_close(u2, expected, rtol=1e-4, atol=1e-6)

  def test_chain_with_clipping_and_schedule_trains(self, name):
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 5, 60)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     _make(name, learning_rate=schedule))
    params = _params()
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      loss, grads = jax.value_and_grad(_loss)(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(60):
      params, state, loss = step(params, state)
      first = loss if first is None else first
    assert float(loss) < 0.5 * float(first)

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_dtypes_are_preserved(self, name, dtype):
    tx = _make(name)
    params = _params(dtype)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(_grads(params, 0), state, params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype and u.shape == p.shape
      assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32))))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))

  def test_nnx_optimizer_on_lora_linear(self, name):
    class Model(nnx.Module):
      def __init__(self, rngs):
        self.l1 = nnx.LoRALinear(8, 16, lora_rank=2, rngs=rngs)
        self.l2 = nnx.LoRALinear(16, 4, lora_rank=2, rngs=rngs)

      def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))

    model = Model(nnx.Rngs(0))
    frozen = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
    base = {k: np.asarray(v) for k, v in
            jax.tree_util.tree_leaves_with_path(nnx.state(model, frozen))}
    assert len(base) == 4
    optimizer = nnx.Optimizer(model, _make(name, learning_rate=2e-2), wrt=nnx.LoRAParam)
    x = jax.random.normal(jax.random.key(1), (32, 8))
    y = jax.random.normal(jax.random.key(2), (32, 4))

    @nnx.jit
    def step(model, optimizer):
      loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
      loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(
          model)
      optimizer.update(model, grads)
      return loss

    losses = [float(step(model, optimizer)) for _ in range(40)]
    assert losses[-1] < 0.9 * losses[0]
    after = dict(jax.tree_util.tree_leaves_with_path(nnx.state(model, frozen)))
    for path, value in base.items():  # Frozen base weights did not move.
      np.testing.assert_array_equal(np.asarray(after[path]), value)

  def test_apply_if_finite_skips_non_finite_steps(self, name):
    tx = optax.apply_if_finite(_make(name), max_consecutive_errors=3)
    params = _params()
    state = tx.init(params)
    step = jax.jit(tx.update)
    bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), _grads(params, 0))
    updates, state = step(bad, state, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(updates))
    assert int(state.notfinite_count) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.inner_state))
    updates, state = step(_grads(params, 1), state, params)
    assert int(state.notfinite_count) == 0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(updates))
    assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(updates))
