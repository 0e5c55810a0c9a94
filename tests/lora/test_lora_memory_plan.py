"""`benchmarks/memory_plan_7b.py`: the abstract build, lowering and compilation of a LoRA
training step on the 2 x 4 mesh, for a tiny model and for Mistral-7B itself, with the
per-device bytes checked against counts made here from the shapes."""

import importlib.util
import sys
from pathlib import Path

import pytest

from adaprelora_jax.models import config_by_name

_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_plan_7b.py"
_SPEC = importlib.util.spec_from_file_location("memory_plan_7b", _FILE)
memory_plan = sys.modules.setdefault("memory_plan_7b", importlib.util.module_from_spec(_SPEC))
_SPEC.loader.exec_module(memory_plan)

FSDP, TENSOR = 2, 4


def _lora_bytes(config, rank):
  """Per-device f32 bytes of the factors: `lora_a (L, in, r)` split like the kernel's
  `in` axis, `lora_b (L, r, out)` like its `out` axis, the rank whole."""
  d, f = config.hidden_size, config.intermediate_size
  q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  # (in, out, mesh size of in, of out): column-parallel (fsdp, tensor), row (tensor, fsdp).
  modules = [(d, q, FSDP, TENSOR), (d, kv, FSDP, TENSOR), (d, kv, FSDP, TENSOR),
             (q, d, TENSOR, FSDP), (d, f, FSDP, TENSOR), (d, f, FSDP, TENSOR),
             (f, d, TENSOR, FSDP)]
  per_rank = sum(n // sn + m // sm for n, m, sn, sm in modules)
  return config.num_layers * rank * per_rank * 4, config.num_layers * per_rank * 4


@pytest.mark.parametrize("optimizer", ["adaprelora", "adamw"])
def test_plan_of_a_tiny_model(optimizer):
  config = config_by_name("tiny-mistral")
  plan = memory_plan.plan("tiny-mistral", optimizer=optimizer, rank=4, batch=2, seq=16,
                          fsdp=FSDP, tensor=TENSOR)
  lora, vectors = _lora_bytes(config, 4)
  assert plan.lora == lora
  # AdaPreLoRA: momentum like the factors, row/column statistics like their axes; AdamW:
  # two moments like the factors; both: optax's count and nnx.Optimizer's step (int32).
  expected_state = lora + vectors + 8 if optimizer == "adaprelora" else 2 * lora + 8
  assert plan.opt_state == expected_state
  assert plan.tokens == 2 * 17 * 4 // FSDP
  # XLA's accounting equals ours: all arguments, the donated factors and state aliased.
  assert plan.arguments == plan.base + plan.lora + plan.opt_state + plan.tokens
  assert plan.aliased == plan.lora + plan.opt_state
  # The loss, and XLA CPU's table of output buffers.
  assert plan.aliased + 4 <= plan.outputs < plan.aliased + 1024
  assert plan.temporaries > 0
  assert "| " + optimizer in memory_plan.table([plan])


def test_plan_of_mistral_7b():
  """The real 7B model compiles in about 15 s on CPU: the plan runs as it is documented."""
  config = config_by_name("mistral-7b")
  plan = memory_plan.plan("mistral-7b", optimizer="adaprelora", rank=16, batch=8, seq=512)
  assert plan.base == pytest.approx(7_241_732_096 * 2 / 8, rel=1e-3)  # bf16, split 8 ways
  lora, vectors = _lora_bytes(config, 16)
  assert (plan.lora, plan.opt_state) == (lora, lora + vectors + 8)
  assert plan.arguments == plan.base + plan.lora + plan.opt_state + plan.tokens
  assert plan.aliased == plan.lora + plan.opt_state
  # Activations for 8 x 512 tokens fit a 16 GB accelerator next to the weights.
  assert plan.peak < 8 * 2 ** 30
