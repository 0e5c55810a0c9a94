"""Whole training step (forward, backward, update) per optimizer, relative to AdamW.

The package's own train step (`adaprelora_jax.train.make_train_step`, with the optimizer
the training CLI builds: global-norm clipping, then the LoRA optimizer) on randomly
initialised models, nothing downloaded. Per model, every optimizer's step is compiled,
its peak memory read from `compiled.memory_analysis()` (arguments + outputs +
temporaries - donated aliases), and the steps are timed in interleaved repeats (each
repeat runs every optimizer once), min and median, as ratios to AdamW's.

    python benchmarks/train_step.py            # writes its section of docs/benchmarks.md
    python benchmarks/train_step.py --quick    # tiny models, a smoke run (prints only)
    python benchmarks/train_step.py --models gpt2 --repeats 3 --no-write

Models (pinned): `gpt2` (124M, LoRA r = 16 on c_attn / c_proj / c_fc, batch 4 x 128),
`gpt2-medium` (355M, same LoRA and batch), `llama-cpu` (a Llama with 7B's layer
structure at CPU size: hidden 1024, MLP 2816, 8 heads, 4 layers, vocab 32000; r = 16 on
all 7 targets; batch 4 x 128).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (benchmarks/report.py)

import adaprelora_jax as apl  # noqa: E402
from adaprelora_jax.lora import LoRAConfig, apply_lora, lora_scale_of  # noqa: E402
from adaprelora_jax.models import build_model, config_by_name  # noqa: E402
from adaprelora_jax.train.config import OptimConfig  # noqa: E402
from adaprelora_jax.train.optim import make_optimizer  # noqa: E402
from adaprelora_jax.train.step import make_train_step, split_model  # noqa: E402

BASELINE = "adamw"
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One pinned model, LoRA adapter and batch."""

  name: str
  config: str
  overrides: tuple[tuple[str, object], ...]
  targets: tuple[str, ...]
  rank: int = 16
  batch: int = 4
  seq: int = 128

  def model_config(self):
    return config_by_name(self.config, **dict(self.overrides))


SETTINGS = {
    "gpt2": Setting("gpt2", "gpt2", (), GPT2_TARGETS),
    "gpt2-medium": Setting("gpt2-medium", "gpt2-medium", (), GPT2_TARGETS),
    "llama-cpu": Setting("llama-cpu", "llama-2-7b", (
        ("hidden_size", 1024), ("intermediate_size", 2816), ("num_layers", 4),
        ("num_heads", 8), ("num_kv_heads", 8)), LLAMA_TARGETS),
}
QUICK = {
    "tiny-gpt2": Setting("tiny-gpt2", "tiny-gpt2", (), GPT2_TARGETS, rank=8, batch=2, seq=32),
    "tiny-llama": Setting("tiny-llama", "tiny-llama", (), LLAMA_TARGETS, rank=8, batch=2,
                          seq=32),
}


@dataclasses.dataclass
class Run:
  """One optimizer's compiled step, its live buffers and its timings."""

  step: object
  params: object
  opt_state: object
  peak_bytes: int
  state_bytes: int
  compile_s: float
  times: list[float] = dataclasses.field(default_factory=list)


def _bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree) if getattr(x, "ndim", 0) > 0)


def _peak(compiled) -> int:
  mem = compiled.memory_analysis()
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)


def build(setting: Setting, optimizers: list[str]):
  """The model split into trainable factors and frozen rest, a batch, a step per optimizer."""
  model = build_model(setting.model_config(), rngs=nnx.Rngs(0))
  lora = LoRAConfig(rank=setting.rank, alpha=2 * setting.rank, target_modules=setting.targets)
  model = apply_lora(model, lora, rngs=nnx.Rngs(1))
  split, params = split_model(model, nnx.LoRAParam)
  scale = lora_scale_of(model)
  rng = np.random.default_rng(0)
  vocab = setting.model_config().vocab_size
  shape = (1, setting.batch, setting.seq)  # (grad_accum, micro batch, sequence)
  batch = (jnp.asarray(rng.integers(0, vocab, shape), jnp.int32),
           jnp.asarray(rng.integers(0, vocab, shape), jnp.int32), jnp.ones(shape, jnp.float32))
  runs = {}
  for name in optimizers:
    tx = make_optimizer(OptimConfig(optimizer=name, learning_rate=1e-4, schedule="constant"),
                        params, lora_scale=scale, max_steps=1000)
    p = jax.tree.map(jnp.copy, params)
    state = tx.init(p)
    step = make_train_step(split, tx)
    t0 = time.perf_counter()
    compiled = step.lower(p, state, split.frozen, *batch).compile()
    peak = _peak(compiled)
    p, state, metrics = compiled(p, state, split.frozen, *batch)  # one compilation
    jax.block_until_ready(metrics)
    runs[name] = Run(compiled, p, state, peak, _bytes(state), time.perf_counter() - t0)
    print(f"  {setting.name} {name}: compiled, peak {peak / 2**20:.0f} MiB, "
          f"{runs[name].compile_s:.0f} s", flush=True)
  n_lora = sum(x.size for x in jax.tree.leaves(params))
  return split, batch, runs, n_lora


def measure(setting: Setting, optimizers: list[str], repeats: int) -> dict:
  split, batch, runs, n_lora = build(setting, optimizers)
  for _ in range(repeats):  # Interleaved: each repeat times every optimizer once.
    for run in runs.values():
      t0 = time.perf_counter()
      run.params, run.opt_state, metrics = run.step(run.params, run.opt_state, split.frozen,
                                                    *batch)
      jax.block_until_ready(metrics)
      run.times.append(time.perf_counter() - t0)
  base = runs[BASELINE]
  rows = {}
  for name, run in runs.items():
    rows[name] = dict(
        min_s=min(run.times), median_s=statistics.median(run.times), times_s=run.times,
        min_ratio=min(run.times) / min(base.times),
        median_ratio=statistics.median(run.times) / statistics.median(base.times),
        peak_bytes=run.peak_bytes, peak_ratio=run.peak_bytes / base.peak_bytes,
        state_bytes=run.state_bytes, compile_s=run.compile_s)
  frozen = sum(x.size for x in jax.tree.leaves(split.frozen))
  return dict(setting=dataclasses.asdict(setting), lora_params=n_lora, frozen_params=frozen,
              repeats=repeats, optimizers=rows)


def table(result: dict) -> str:
  s = result["setting"]
  lines = [f"**{s['name']}** ({result['frozen_params'] / 1e6:.0f} M frozen, "
           f"{result['lora_params'] / 1e6:.2f} M LoRA parameters, r = {s['rank']} on "
           f"{', '.join(s['targets'])}; batch {s['batch']} x {s['seq']}; "
           f"{result['repeats']} interleaved repeats)", "",
           "| optimizer | min step (s) | median step (s) | time vs adamw (min / median) "
           "| peak memory (MiB) | peak vs adamw | optimizer state (MiB) |",
           "|---|---|---|---|---|---|---|"]
  for name, r in result["optimizers"].items():
    lines.append(f"| {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                 f"{r['min_ratio']:.3f} / {r['median_ratio']:.3f} | "
                 f"{r['peak_bytes'] / 2**20:.1f} | {r['peak_ratio']:.4f} | "
                 f"{r['state_bytes'] / 2**20:.1f} |")
  return "\n".join(lines)


INTRO = """\
## Whole training step

One training step of the package's train loop (`adaprelora_jax.train.make_train_step`:
forward, backward with respect to the LoRA factors only, global-norm clipping and the
optimizer update; parameters and optimizer state donated), per optimizer of the registry,
on randomly initialised models at pinned settings. Step time: min and median over
interleaved repeats (every repeat runs every optimizer once), as ratios to AdamW's.
Peak memory: `compiled.memory_analysis()` of the same compiled step, arguments +
outputs + temporaries - donated aliases (XLA CPU's buffer assignment; a GPU's differs).
Targets for AdaPreLoRA: whole-step time overhead under 3% and peak memory within 1% of
AdamW's. LoRA-Pro's full mode (`lora_pro_full`, an m x n Adam state per pair) is shown
for contrast.
"""


def verdict(results: list[dict]) -> str:
  lines = ["", "AdaPreLoRA against the targets (min-time ratio; peak-memory ratio):", ""]
  for res in results:
    r = res["optimizers"].get("adaprelora")
    if r is None:
      continue
    t_ok = "met" if r["min_ratio"] < 1.03 else "**not met**"
    m_ok = "met" if r["peak_ratio"] <= 1.01 else "**not met**"
    lines.append(f"- {res['setting']['name']}: time {r['min_ratio']:.3f} (median "
                 f"{r['median_ratio']:.3f}), target < 1.03 {t_ok}; peak memory "
                 f"{r['peak_ratio']:.4f}, target <= 1.01 {m_ok}.")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(SETTINGS),
                      help=f"comma-separated, of {', '.join(SETTINGS)}")
  parser.add_argument("--optimizers", default=",".join(apl.optimizers))
  parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
  parser.add_argument("--quick", action="store_true",
                      help="tiny models, 3 repeats, nothing written")
  parser.add_argument("--no-write", action="store_true",
                      help="print only; do not write docs/benchmarks.md")
  args = parser.parse_args(argv)
  names = args.optimizers.split(",")
  unknown = set(names) - set(apl.optimizers)
  if unknown:
    raise SystemExit(f"unknown optimizers {sorted(unknown)}; known: {sorted(apl.optimizers)}")
  if BASELINE not in names:
    names.insert(0, BASELINE)
  settings = list(QUICK.values()) if args.quick else [
      SETTINGS[m] for m in args.models.split(",")]
  results = []
  for setting in settings:
    repeats = 3 if args.quick else args.repeats
    results.append(measure(setting, names, repeats))
    print(table(results[-1]) + "\n", flush=True)
    if not (args.quick or args.no_write):  # After each model: a long run keeps what it has.
      write(results, len(settings))
  print(verdict(results))


def write(results: list[dict], planned: int) -> None:
  """The train_step section of docs/benchmarks.md with the models measured so far."""
  load = os.getloadavg()
  text = (INTRO + f"\nLoad average at the time of writing (1 / 5 / 15 min): {load[0]:.1f} / "
          f"{load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores.\n\n"
          + "\n\n".join(table(r) for r in results) + "\n" + verdict(results))
  if len(results) < planned:
    text += (f"\n\n(Partial: {len(results)} of the {planned} models of the command so far; "
             "the run writes this section again after each model.)")
  raw = report.write_section("train_step", text, results)
  print(f"wrote the train_step section of {report.PAGE} and {raw}", flush=True)


if __name__ == "__main__":
  main()
