"""Configs, data, schedules, mesh flags and the Hugging Face export's config, without
training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adaprelora_jax.models import config_by_name as model_config
from adaprelora_jax.models import config_from_hf_dict
from adaprelora_jax.train import ByteTokenizer, ConfigError, config_by_name, read_e2e_csv
from adaprelora_jax.train import data as data_lib
from adaprelora_jax.train import sharding, synthetic
from adaprelora_jax.train.config import OptimConfig, run_identity
from adaprelora_jax.train.export import hf_config_dict
from adaprelora_jax.train.optim import make_schedule, param_labels


def test_named_configs_and_replace():
  config = config_by_name("gpt2_e2e_tiny", learning_rate=5e-4, train_file="x.csv", max_steps=3)
  assert (config.optim.learning_rate, config.data.train_file, config.max_steps) == (
      5e-4, "x.csv", 3)
  assert config_by_name("gpt2_medium_e2e").model.compute_dtype == "bfloat16"
  with pytest.raises(ConfigError, match="unknown config"):
    config_by_name("nope")
  with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
    config_by_name("demo", optimizer="sgd")
  with pytest.raises(ConfigError, match="keep_checkpoints"):
    config_by_name("demo", keep_checkpoints=1)


def test_run_identity_ignores_only_the_resumable_fields():
  base = config_by_name("gpt2_e2e_tiny")
  same = base.replace(max_steps=99, checkpoint_every=7, eval_every=3, eval_file="e.csv",
                      eval_rows=5)
  assert run_identity(same) == run_identity(base)
  for change in ({"seed": 1}, {"learning_rate": 2e-3}, {"batch_size": 4}, {"seq_len": 256}):
    assert run_identity(base.replace(**change)) != run_identity(base), change


@pytest.mark.parametrize("kind,expected", [
    ("cosine", [0.5, 1.0, 1.0, 0.5, 0.0]),
    ("linear", [0.5, 1.0, 1.0, 0.5, 0.0]),
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedules_warm_up_then_decay(kind, expected):
  schedule = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=2, schedule=kind), 4)
  np.testing.assert_allclose([float(schedule(i)) for i in range(5)], expected, atol=1e-6)


def test_param_labels_route_pairs_to_lora_and_the_rest_to_adamw():
  params = {"layer": {"lora_a": np.zeros((4, 2)), "lora_b": np.zeros((2, 3)),
                      "bias": np.zeros(3)}, "head": np.zeros((3, 3))}
  labels = param_labels(params)
  assert labels == {"layer": {"lora_a": "lora", "lora_b": "lora", "bias": "other"},
                    "head": "other"}


def test_e2e_rendering_and_target_mask():
  tok = ByteTokenizer()
  prompt = data_lib.render_mr("name[Zizzi], food[£20-25 Fast food]")
  assert prompt == "name: Zizzi; food: £20-25 Fast food\n"
  got = data_lib.tokenize([tok.example("ab\n", "cd")], 8, pad_id=255, source="t")
  np.testing.assert_array_equal(got.tokens[0], [97, 98, 10, 99, 100, 255, 255, 255, 255])
  # Position i predicts token i + 1: positions 2, 3, 4 predict c, d and the end token.
  np.testing.assert_array_equal(got.loss_mask[0], [0, 0, 1, 1, 1, 0, 0, 0])
  with pytest.raises(ValueError):
    data_lib.render_mr("just text")


def test_long_rows_are_truncated_or_dropped_and_counted():
  tok = ByteTokenizer()
  examples = [tok.example("p\n", "t" * 20)] * 200 + [tok.example("x" * 30, "t")] + [None]
  got = data_lib.tokenize(examples, 10, pad_id=255, source="t")
  assert (len(got), got.truncated, got.dropped, got.bad_rows) == (200, 200, 1, 1)
  assert got.loss_mask.sum(axis=1).min() == 9  # the cut target still trains
  with pytest.raises(ConfigError, match="more than 1%"):
    data_lib.tokenize(examples[:50] + [tok.example("x" * 30, "t")], 10, pad_id=255,
                      source="t")


def test_e2e_devset_fits_512_bytes(e2e_dir):
  got = read_e2e_csv(e2e_dir / "devset.csv", ByteTokenizer(), 512)
  assert got.source_rows == 4672 and got.dropped == 0 and got.bad_rows == 0
  assert got.truncated <= 5
  assert got.tokens.shape == (4672, 513)


def test_data_order_is_a_pure_function_of_seed_and_step():
  a = data_lib.example_indices(3, 7, 8, 20)
  np.testing.assert_array_equal(a, data_lib.example_indices(3, 7, 8, 20))
  assert not np.array_equal(a, data_lib.example_indices(4, 7, 8, 20))
  # One epoch of steps visits every example once.
  epoch = np.concatenate([data_lib.example_indices(0, s, 5, 20) for s in range(4)])
  assert sorted(epoch.tolist()) == list(range(20))
  # A k-accumulated step sees exactly the examples of one k-times larger batch.
  tokens = synthetic.text_data(40, 0, ByteTokenizer(), 16)
  small = data_lib.step_batch(tokens, 0, 2, batch_size=4, grad_accum=2)
  big = data_lib.step_batch(tokens, 0, 2, batch_size=8, grad_accum=1)
  np.testing.assert_array_equal(small.inputs.reshape(1, 8, 16), big.inputs)


def test_mesh_flag():
  assert sharding.parse_mesh("data=2,fsdp=2,tensor=2") == {"data": 2, "fsdp": 2, "tensor": 2}
  for bad in ("fsdp", "model=2", "fsdp=0", "tensor=x"):
    with pytest.raises(ConfigError, match="--mesh"):
      sharding.parse_mesh(bad)
  mesh = sharding.build_mesh("tensor=2")
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  with pytest.raises(ConfigError, match="needs 16 devices"):
    sharding.build_mesh("fsdp=4,tensor=4")
  with pytest.raises(ConfigError, match="not a multiple"):
    sharding.check_batch(mesh, 6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "gpt2-medium", "tiny-mistral", "tiny-qwen2",
                                  "llama-2-7b"])
def test_hf_config_round_trip(name):
  config = model_config(name)
  back = config_from_hf_dict(hf_config_dict(config))
  assert back.layer_windows() == config.layer_windows()
  assert dataclasses.replace(back, layer_types=None) == dataclasses.replace(config,
                                                                            layer_types=None)


def test_generated_task_is_deterministic_and_fits_the_demo_context():
  tok = ByteTokenizer()
  a = synthetic.task_data(300, 0, tok, 256)
  np.testing.assert_array_equal(a.tokens, synthetic.task_data(300, 0, tok, 256).tokens)
  assert a.dropped == 0 and a.truncated <= 3


def test_b1_setting_reaches_the_lora_optimizer():
  """`OptimConfig.b1` (the `--b1` flag): no momentum state for AdaPreLoRA with None, the
  registry optimizer's own updates with a number, and clear errors where it cannot
  apply."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import adaprelora_jax as apl  # noqa: PLC0415
  from adaprelora_jax.train import cli  # noqa: PLC0415
  from adaprelora_jax.train.optim import make_optimizer  # noqa: PLC0415

  rng = np.random.default_rng(0)
  params = {"layer": {"lora_a": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
                      "lora_b": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)}}
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)

  def has_momentum(config):
    state = make_optimizer(config, params, lora_scale=1.0, max_steps=4).init(params)
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
        x, apl.AdaPreLoRAState)) if isinstance(s, apl.AdaPreLoRAState)]
    assert len(found) == 1
    return found[0].mu is not None

  assert has_momentum(OptimConfig(optimizer="adaprelora"))
  assert not has_momentum(OptimConfig(optimizer="adaprelora", b1=None))
  # A number is the optimizer's own b1: AdamW's updates with b1 = 0.5, which differ from
  # the default 0.9's from the second step on.
  config = OptimConfig(optimizer="adamw", b1=0.5, learning_rate=0.1, max_grad_norm=None)

  def two_updates(tx):
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    second, _ = tx.update(jax.tree.map(lambda g: -0.3 * g, grads), state, params)
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(second)])

  got = two_updates(make_optimizer(config, params, lora_scale=1.0, max_steps=4))
  schedule = make_schedule(config, 4)
  np.testing.assert_allclose(got, two_updates(apl.optimizers["adamw"](schedule, b1=0.5)),
                             rtol=1e-6)
  assert not np.allclose(got, two_updates(apl.optimizers["adamw"](schedule)), rtol=1e-3)
  with pytest.raises(ConfigError, match="only adaprelora can run without momentum"):
    OptimConfig(optimizer="adamw", b1=None)
  with pytest.raises(ConfigError, match="'adafactor' has no b1"):
    OptimConfig(optimizer="adafactor", b1=0.5)
  with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
    OptimConfig(optimizer="adaprelora", b1=1.0)
  parser = cli.build_parser()
  assert cli.make_config(parser.parse_args(["--b1", "None", "--config", "gpt2_e2e_tiny"]),
                         demo=False).optim.b1 is None
  assert cli.make_config(parser.parse_args(["--config", "gpt2_e2e_tiny"]),
                         demo=False).optim.b1 == "default"
  with pytest.raises(SystemExit):
    parser.parse_args(["--b1", "fast"])
