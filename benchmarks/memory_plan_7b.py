"""Per-device memory of one LoRA training step of Mistral-7B, without 7B of memory.

The model (bf16 base weights), its LoRA factors (rank 16 on q/k/v/o/gate/up/down, f32)
and the optimizer state (f32) are built abstractly with `nnx.eval_shape` inside a
device mesh; one training step (loss, gradients with respect to `nnx.LoRAParam`,
optimizer update; layers rematerialised) is lowered from abstract sharded inputs and
compiled for that mesh, and `compiled.memory_analysis()` gives the bytes per device.
The base weights are an argument that is not donated (the step never writes them); the
factors and the optimizer state are donated and returned (aliased).

    python benchmarks/memory_plan_7b.py                   # the docs/lora.md table
    python benchmarks/memory_plan_7b.py --config tiny-mistral --batch 2 --seq 16 \
        --optimizer adamw --mesh 2x4 --axis-type Auto --compute-dtype float32

Needs 8 devices for the 2 x 4 mesh; on CPU the script asks XLA for 8 host devices.
CPU compilation stands in for the accelerator's: the argument bytes are exact, the
temporary bytes are XLA CPU's buffer assignment, an estimate of a GPU's or TPU's. XLA
CPU has no bf16 matmul: it converts bf16 operands to f32, and its loop-invariant code
motion then hoists the conversion of every layer's stacked weights out of the layer
loop (two f32 copies of the weights, +2x the base bytes in temporaries) where a GPU or
TPU multiplies bf16 natively. The script therefore disables that pass
(`--xla_disable_hlo_passes=while-loop-invariant-code-motion`) unless XLA_FLAGS is set.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_disable_hlo_passes=while-loop-invariant-code-motion")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import adaprelora_jax as apl  # noqa: E402
from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_scale_of  # noqa: E402
from adaprelora_jax.models import ShardingConfig, build_model, config_by_name  # noqa: E402
from adaprelora_jax.models import make_mesh  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GIB = 2 ** 30

OPTIMIZERS = {
    "adaprelora": lambda scale: apl.adaprelora(1e-4, lora_scale=scale),
    "adamw": lambda scale: optax.adamw(1e-4),
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device bytes of one compiled training step."""

  optimizer: str
  mesh: str
  compute_dtype: str
  batch: int
  seq: int
  # Argument bytes by kind: frozen base weights, LoRA factors, optimizer state, tokens.
  base: int
  lora: int
  opt_state: int
  tokens: int
  # compiled.memory_analysis() fields.
  arguments: int
  outputs: int
  temporaries: int
  generated_code: int
  aliased: int
  compile_s: float

  @property
  def peak(self) -> int:
    """Arguments + outputs + temporaries - aliased (donated buffers reused)."""
    return self.arguments + self.outputs + self.temporaries - self.aliased


def _per_device_bytes(tree) -> int:
  """Bytes of one device's shard of every array in `tree` (abstract or concrete)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.shape
    if isinstance(getattr(leaf, "sharding", None), NamedSharding):
      shape = leaf.sharding.shard_shape(shape)
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def _concrete(tree, mesh):
  """Abstract values as `ShapeDtypeStruct`s with `NamedSharding`s on `mesh`."""

  def leaf(x):
    spec = x.sharding.spec if isinstance(getattr(x, "sharding", None), NamedSharding) else P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

  return jax.tree.map(leaf, tree)


def _loss(model, ids):
  logits = model(ids[:, :-1])
  # A one-hot product, not a gather: on an Explicit mesh the logits are vocab-sharded.
  labels = jax.nn.one_hot(ids[:, 1:], logits.shape[-1], dtype=logits.dtype)
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))


def train_step(graphdefs, base, lora, opt_state, ids):
  """One step: gradients of the loss with respect to the LoRA factors, optimizer update.
  Returns the new factors, the new optimizer state and the loss."""
  model_def, opt_def = graphdefs
  model = nnx.merge(model_def, lora, base)
  optimizer = nnx.merge(opt_def, opt_state)
  loss, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, ids)
  optimizer.update(model, grads)
  return nnx.state(model, nnx.LoRAParam), nnx.state(optimizer), loss


def plan(config_name: str = "mistral-7b", *, optimizer: str = "adaprelora", rank: int = 16,
         batch: int = 8, seq: int = 512, fsdp: int = 2, tensor: int = 4,
         axis_type: AxisType = AxisType.Explicit, compute_dtype=jnp.bfloat16) -> Plan:
  """Build abstractly, lower and compile one step; the per-device bytes."""
  mesh = make_mesh(fsdp * tensor, fsdp=fsdp, tensor=tensor, axis_types=axis_type)
  config = config_by_name(config_name)
  lora_config = LoRAConfig(rank=rank, alpha=2 * rank, target_modules=list(TARGETS))

  def build():
    model = build_model(config, dtype=jnp.bfloat16, compute_dtype=compute_dtype,
                        sharding=ShardingConfig.fsdp_tp(), remat=True)
    return apply_lora(model, lora_config, rngs=nnx.Rngs(0))

  with jax.set_mesh(mesh):
    model = nnx.eval_shape(build)
    tx = OPTIMIZERS[optimizer](lora_scale_of(model))
    # (The model is an argument, not a closure: its values are then tracers, which the
    # optimizer's init handles on both axis types.)
    opt_def, opt_state = nnx.split(nnx.eval_shape(
        lambda m: nnx.Optimizer(m, tx, wrt=nnx.LoRAParam), model))
    model_def, lora, base = nnx.split(model, nnx.LoRAParam, ...)
    base, lora = (_concrete(s, mesh) for s in (base, lora))

    # The optimizer state where a jitted init places it (on an Auto mesh, by XLA's
    # sharding propagation from the factors).
    def init(base, lora):
      return nnx.state(nnx.Optimizer(nnx.merge(model_def, lora, base), tx, wrt=nnx.LoRAParam))

    placed = jax.jit(init).lower(base, lora).compile().output_shardings
    opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             opt_state, placed)
    ids = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32,
                               sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))
    step = functools.partial(train_step, (model_def, opt_def))

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(1, 2)).lower(base, lora, opt_state, ids).compile()
    compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  return Plan(
      optimizer=optimizer, mesh=f"{fsdp}x{tensor} {axis_type.name}",
      compute_dtype=jnp.dtype(compute_dtype).name, batch=batch, seq=seq,
      base=_per_device_bytes(base), lora=_per_device_bytes(lora),
      opt_state=_per_device_bytes(opt_state), tokens=_per_device_bytes(ids),
      arguments=memory.argument_size_in_bytes, outputs=memory.output_size_in_bytes,
      temporaries=memory.temp_size_in_bytes,
      generated_code=memory.generated_code_size_in_bytes,
      aliased=memory.alias_size_in_bytes, compile_s=compile_s)


def table(plans: list[Plan], unit: int = GIB, unit_name: str = "GiB") -> str:
  """The plans as a markdown table (bytes per device)."""
  cols = ["optimizer", "mesh", "compute", "tokens", "base bf16", "LoRA f32", "opt state f32",
          "arguments", "outputs", "temporaries", "code", "aliased", "peak", "compile"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for p in plans:
    b = lambda x: f"{x / unit:.3f}"  # noqa: E731
    lines.append("| " + " | ".join([
        p.optimizer, p.mesh, p.compute_dtype, f"{p.batch} x {p.seq}", b(p.base), b(p.lora),
        b(p.opt_state), b(p.arguments), b(p.outputs), b(p.temporaries), b(p.generated_code), b(p.aliased),
        b(p.peak), f"{p.compile_s:.0f} s"]) + " |")
  return "\n".join(lines) + f"\n\n(per device, {unit_name})"


# The docs/lora.md table: (optimizer, mesh, axis type, compute dtype, batch, sequence);
# None takes --batch / --seq.
SCENARIOS = (
    ("adaprelora", "2x4", "Explicit", "bfloat16", None, None),
    ("adamw", "2x4", "Explicit", "bfloat16", None, None),
    ("adaprelora", "2x4", "Explicit", "float32", None, None),
    ("adaprelora", "2x4", "Auto", "bfloat16", None, None),
    ("adaprelora", "2x4", "Explicit", "bfloat16", 32, 2048),
    ("adaprelora", "1x1", "Explicit", "bfloat16", None, None),
    ("adamw", "1x1", "Explicit", "bfloat16", None, None),
    ("adaprelora", "1x1", "Explicit", "bfloat16", 1, 512),
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="mistral-7b")
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="one scenario: optimizer")
  parser.add_argument("--mesh", default="2x4", help="fsdp x tensor, e.g. 2x4 or 1x1")
  parser.add_argument("--axis-type", default="Explicit", choices=["Explicit", "Auto"])
  parser.add_argument("--compute-dtype", default="bfloat16", choices=["bfloat16", "float32"])
  args = parser.parse_args()
  scenarios = SCENARIOS if args.optimizer is None else (
      (args.optimizer, args.mesh, args.axis_type, args.compute_dtype, None, None),)
  plans = []
  for optimizer, mesh, axis_type, compute_dtype, batch, seq in scenarios:
    fsdp, tensor = (int(n) for n in mesh.split("x"))
    plans.append(plan(args.config, optimizer=optimizer, rank=args.rank,
                      batch=batch or args.batch, seq=seq or args.seq, fsdp=fsdp, tensor=tensor,
                      axis_type=AxisType[axis_type], compute_dtype=jnp.dtype(compute_dtype)))
    print(table(plans[-1:]), flush=True)
  print(f"\n{args.config}, LoRA rank {args.rank} on {', '.join(TARGETS)}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}\n")
  print(table(plans))


if __name__ == "__main__":
  main()
