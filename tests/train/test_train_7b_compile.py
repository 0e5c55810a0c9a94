"""The paper-scale task configs: each one's train step (bf16 7B base, LoRA rank 8 on the
seven projections, the task's loss and head) lowered from abstract shapes and compiled
for its FSDP x tensor mesh on the 8 CPU devices; nothing is allocated."""

import math

import jax
import jax.numpy as jnp
import pytest

from adaprelora_jax.models import config_by_name as model_config
from adaprelora_jax.train.aot import lower_train_step
from adaprelora_jax.train.config import config_by_name

CONFIGS = ("mistral_7b_glue", "qwen2_7b_gsm8k", "qwen2_7b_arc")


def _base_params(name):
  """Parameter count of the base model from its sizes (biases of Qwen2's q/k/v included)."""
  c = model_config(name)
  q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  attn = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + (q + 2 * kv if c.qkv_bias else 0)
  mlp = 3 * c.hidden_size * c.intermediate_size
  layer = attn + mlp + 2 * c.hidden_size
  head = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
  return c.num_layers * layer + c.vocab_size * c.hidden_size + c.hidden_size + head


def _device_bytes(tree):
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def lowered():
  assert jax.device_count() >= 8, "the 8-device CPU platform of tests/conftest.py"
  return {name: lower_train_step(config_by_name(name), jax.devices()[:8]) for name in CONFIGS}


@pytest.mark.parametrize("name", CONFIGS)
def test_7b_config_shards_as_planned(lowered, name):
  config = config_by_name(name)
  step = lowered[name]
  assert dict(step.mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
  # The frozen base: bf16, split 8 ways.
  frozen = jax.tree.leaves(step.frozen)
  assert {x.dtype for x in frozen} == {jnp.dtype(jnp.bfloat16)}
  n_base = _base_params(config.model.name)
  assert sum(math.prod(x.shape) for x in frozen) == n_base
  assert _device_bytes(step.frozen) == pytest.approx(2 * n_base / 8, rel=2e-3)
  # Trainable: float32 LoRA factors of rank 8 on the seven projections of every layer
  # (and the head of the GLUE run).
  c = model_config(config.model.name)
  q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  d, f = c.hidden_size, c.intermediate_size
  per_rank = (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d)
  head = 2 * d if config.data.family == "classification" else 0
  params = jax.tree.leaves(step.params)
  assert {x.dtype for x in params} == {jnp.dtype(jnp.float32)}
  assert sum(math.prod(x.shape) for x in params) == c.num_layers * 8 * per_rank + head
  assert [x.shape for x in step.batch][0] == (1, config.batch_size, config.data.seq_len)


def test_qwen2_arc_step_is_the_gsm8k_program_up_to_the_schedule(lowered):
  """ARC trains as LM like GSM8K on the same model and batch shape: with GSM8K's step
  count and warmup (the schedule's constants) its lowered program is GSM8K's, so
  compiling the GSM8K step below covers it."""
  gsm8k = config_by_name("qwen2_7b_gsm8k")
  arc = config_by_name("qwen2_7b_arc", max_steps=gsm8k.max_steps,
                       warmup_steps=gsm8k.optim.warmup_steps,
                       learning_rate=gsm8k.optim.learning_rate)
  assert arc.replace(task="gsm8k", name=gsm8k.name, eval_split=gsm8k.data.eval_split) == gsm8k
  text = lower_train_step(arc, jax.devices()[:8]).lowered.as_text()
  assert text == lowered["qwen2_7b_gsm8k"].lowered.as_text()
  assert lowered["qwen2_7b_arc"].lowered.as_text() != text  # the schedule differs


@pytest.mark.parametrize("name", ["mistral_7b_glue", "qwen2_7b_gsm8k"])
def test_7b_train_step_compiles(lowered, name):
  step = lowered[name]
  memory = step.lowered.compile().memory_analysis()
  expected = sum(_device_bytes(t) for t in (step.params, step.opt_state, step.frozen,
                                           step.batch))
  if config_by_name(name).data.family == "classification":
    # The head replaces the LM head, which the step never reads (jit drops the argument).
    expected -= _device_bytes(step.frozen["lm_head"])
  assert memory.argument_size_in_bytes == expected
  # The trainable parameters and the optimizer state are donated (updated in place).
  assert memory.alias_size_in_bytes == _device_bytes(step.params) + _device_bytes(
      step.opt_state)
