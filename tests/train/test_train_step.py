"""The train step: gradient accumulation equals one larger batch, and the step sharded
on the 8-device CPU mesh equals the single-device step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_modules, lora_scale_of
from adaprelora_jax.models import ShardingConfig, build_model, config_by_name
from adaprelora_jax.train import ByteTokenizer, OptimConfig, make_optimizer, make_train_step
from adaprelora_jax.train import data as data_lib
from adaprelora_jax.train import sharding, split_model, synthetic
from adaprelora_jax.train.step import loss_sums

TOKENS = synthetic.text_data(64, 0, ByteTokenizer(), 32)
# Token counts differ between micro-batches only where the mask does: give each row a
# different number of target tokens, so that the weighting matters.
TOKENS = data_lib.TokenizedData(
    TOKENS.tokens, TOKENS.loss_mask * (np.arange(32) < (8 + np.arange(64) % 24)[:, None]),
    64, 0, 0, 0)


_MODELS = {}


def _model(mesh):
  """A tiny LoRA GPT-2 on `mesh` with non-zero, well-conditioned factors, built once per
  mesh: `(split model, params)`."""
  key = (tuple(mesh.shape.items()), mesh.size)
  if key not in _MODELS:
    with jax.set_mesh(mesh):
      model = build_model(config_by_name("tiny-gpt2"), sharding=ShardingConfig.fsdp_tp(),
                          rngs=nnx.Rngs(0))
      apply_lora(model, LoRAConfig(4, 8, ("c_attn", "c_fc")), rngs=nnx.Rngs(1))
      rng = jax.random.key(2)
      for _, module in lora_modules(model):
        rng, sub = jax.random.split(rng)
        b = module.lora_b
        b.set_value(jax.device_put(0.05 * jax.random.normal(sub, b.shape),
                                   b.get_value().sharding))
      _MODELS[key] = (*split_model(model, nnx.LoRAParam), lora_scale_of(model))
  return _MODELS[key]


def _setup(mesh, optimizer: str):
  """The model of `mesh` with fresh copies of its factors (the step donates them) and a
  fresh optimizer."""
  split, params, scale = _model(mesh)
  with jax.set_mesh(mesh):
    params = jax.tree.map(jnp.copy, params)
    tx = make_optimizer(OptimConfig(optimizer=optimizer, learning_rate=1e-3), params,
                        lora_scale=scale, max_steps=10)
    opt_state = jax.jit(tx.init)(params)
  return split, params, tx, opt_state


_RUNS = {}


def _run(mesh, optimizer, steps, batch_size, grad_accum):
  """(losses, final params) of a few steps; each setting runs once per session."""
  key = (tuple(mesh.shape.items()), mesh.size, optimizer, steps, batch_size, grad_accum)
  if key not in _RUNS:
    _RUNS[key] = _compute(mesh, optimizer, steps, batch_size, grad_accum)
  return _RUNS[key]


def _compute(mesh, optimizer, steps, batch_size, grad_accum):
  split, params, tx, opt_state = _setup(mesh, optimizer)
  step = make_train_step(split, tx)
  losses = []
  with jax.set_mesh(mesh):
    for k in range(steps):
      batch = data_lib.step_batch(TOKENS, 0, k, batch_size=batch_size, grad_accum=grad_accum)
      arrays = [sharding.put_batch(mesh, x, batch_size)
                for x in (batch.inputs, batch.labels, batch.loss_mask)]
      params, opt_state, metrics = step(params, opt_state, split.frozen, *arrays)
      losses.append(float(metrics.loss))
  return losses, jax.device_get(params)


def _assert_trees_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max())


@pytest.mark.parametrize("optimizer", ["adaprelora"])
def test_grad_accumulation_equals_one_larger_batch(optimizer):
  mesh = sharding.build_mesh(None, jax.devices()[:1])
  accumulated = _run(mesh, optimizer, 2, 4, 2)
  large = _run(mesh, optimizer, 2, 8, 1)
  np.testing.assert_allclose(accumulated[0], large[0], rtol=1e-5)
  _assert_trees_close(accumulated[1], large[1], 1e-5)
  assert not np.allclose(accumulated[0][0], accumulated[0][-1])  # it trains


@pytest.mark.parametrize("optimizer", ["adaprelora"])
def test_sharded_step_equals_single_device(optimizer):
  assert len(jax.devices()) == 8
  single = _run(sharding.build_mesh(None, jax.devices()[:1]), optimizer, 2, 8, 1)
  mesh = sharding.build_mesh("fsdp=4,tensor=2")
  sharded = _run(mesh, optimizer, 2, 8, 1)
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
  _assert_trees_close(sharded[1], single[1], 1e-5)


def test_grad_accumulation_weights_micro_batches_by_target_tokens():
  """Unweighted averaging of micro-batch means would differ from the large batch."""
  mesh = sharding.build_mesh(None, jax.devices()[:1])
  split, params, _, _ = _setup(mesh, "adaprelora")
  batch = data_lib.step_batch(TOKENS, 0, 0, batch_size=4, grad_accum=2)
  counts = batch.loss_mask.sum(axis=(1, 2))
  assert counts[0] != counts[1]
  micro_loss = jax.jit(lambda p, x, y, m: loss_sums(split.merge(p)(x), y, m))
  with jax.set_mesh(mesh):
    sums = [micro_loss(params, batch.inputs[i], batch.labels[i], batch.loss_mask[i])
            for i in range(2)]
  weighted = (sums[0].loss + sums[1].loss) / (sums[0].tokens + sums[1].tokens)
  unweighted = (sums[0].loss / sums[0].tokens + sums[1].loss / sums[1].tokens) / 2
  assert abs(float(weighted - unweighted)) > 1e-4
  _, _, tx, opt_state = _setup(mesh, "adaprelora")
  step = make_train_step(split, tx)
  arrays = [jnp.asarray(x) for x in (batch.inputs, batch.labels, batch.loss_mask)]
  with jax.set_mesh(mesh):
    _, _, metrics = step(params, opt_state, split.frozen, *arrays)
  np.testing.assert_allclose(float(metrics.loss), float(weighted), rtol=1e-5)


def test_bf16_compute_keeps_float32_factors(tmp_path):
  from adaprelora_jax.train import train  # noqa: PLC0415
  from train_helpers import tiny_config  # noqa: PLC0415

  result = train(tiny_config(compute_dtype="bfloat16", max_steps=2, checkpoint_every=0),
                 tmp_path, devices=jax.devices()[:1], progress=False, print_fn=lambda _: None)
  assert all(np.isfinite(loss) for _, loss in result.losses)
  assert {x.dtype for x in jax.tree.leaves(result.params)} == {np.dtype(np.float32)}
  b = [x for path, x in jax.tree_util.tree_flatten_with_path(result.params)[0]
       if "lora_b" in jax.tree_util.keystr(path)]
  assert max(float(np.abs(x).max()) for x in b) > 0
