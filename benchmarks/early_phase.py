"""AdaPreLoRA's early phase on the demo setting: what the factors and the steps do in the
first steps from `lora_b = 0`, and which settings within the SPEC change it.

The demo's data and LoRA (package base, generated data-to-text task, 16 x 256 bytes,
r = 8, alpha = 16 on c_attn/c_proj/c_fc, cosine schedule over 150 steps with 10 warmup
steps, global-norm clipping at 1). Per step and per adapted layer (trace mode):

* `|A|`, `|B|` (Frobenius; `A = lora_a^T`, `B = lora_b^T`) and the applied changes
  `|dA|`, `|dB|` (parameters after minus before the step);
* the W-step `s |B'A' - BA|` (exact: these layers are at most 256 x 64) against AdamW's;
* from a probe transform fed the same clipped gradients, `scale_by_adaprelora` without
  momentum and without clipping: the raw direction's `|dA|`, `|dB|`, its update RMS
  `rms(U)`, the clipping factor `1 / max(1, rms(U))`, and the spread of the
  preconditioner `p = sqrt(R / mean R)`, `q = sqrt(C)` (R, C its Adafactor statistics,
  which do not depend on momentum or clipping).

The hypothesis: near `B = 0` the balanced solve gives `dA ~ 1 / |B|` (`S_B ~ |B|^2`,
`g_A ~ |B|`), so `A` is thrown far while `B` is tiny. The slope of `log |dA_raw|` on
`log |B|` over the trace tests it. Variant mode reruns the first steps under settings
within the SPEC (learning rate, warmup, momentum, clipping, damping, decay rate, the
init scale of `lora_a`) and the full 150 steps for the variants given by `--full`.

    python benchmarks/early_phase.py                   # trace + variants, docs section
    python benchmarks/early_phase.py --trace-steps 20 --variant-steps 10 --full ''  # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lora_runs  # noqa: E402
import report  # noqa: E402

import adaprelora_jax as apl  # noqa: E402
from adaprelora_jax.train import data as data_lib  # noqa: E402
from adaprelora_jax.train import synthetic  # noqa: E402
from adaprelora_jax.train.step import loss_sums  # noqa: E402

DEMO = lora_runs.RunSpec(steps=150, batch_size=16, warmup_steps=10, log_every=1)
SEQ_LEN = 256

# name -> (optimizer, learning rate, RunSpec changes, optimizer options)
VARIANTS = {
    "adaprelora (demo: lr 1e-3)": ("adaprelora", 1e-3, {}, {}),
    "adamw (demo: lr 3e-2)": ("adamw", 3e-2, {}, {}),
    "lr 3e-4": ("adaprelora", 3e-4, {}, {}),
    "warmup 50": ("adaprelora", 1e-3, {"warmup_steps": 50}, {}),
    "b1 None (no momentum)": ("adaprelora", 1e-3, {}, {"b1": None}),
    "b1 0.5": ("adaprelora", 1e-3, {}, {"b1": 0.5}),
    "clipping 0.1": ("adaprelora", 1e-3, {}, {"clipping_threshold": 0.1}),
    "damping 1.0": ("adaprelora", 1e-3, {}, {"damping": 1.0}),
    "lora_a init x 0.1": ("adaprelora", 1e-3, {"a_init_scale": 0.1}, {}),
}


def demo_data():
  tok = data_lib.ByteTokenizer()
  return (synthetic.task_data(4000, 0, tok, SEQ_LEN, "generated task"),
          synthetic.task_data(128, 1, tok, SEQ_LEN, "generated eval"))


def _pair_leaves(tree, pairs):
  """`[(label, lora_a-path leaf, lora_b-path leaf)]` of `tree` for the pairs `pairs`."""
  leaves = {tuple(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  return [("/".join(str(getattr(k, "key", k)) for k in pa[:-1]),
           np.asarray(leaves[tuple(pa)], np.float64), np.asarray(leaves[tuple(pb)], np.float64))
          for pa, pb in pairs]


def _pairs(params):
  """`[(label, A (L, r, n), B (L, m, r))]` in the paper's layout, layers on axis 0."""
  out = []
  for label, a, b in _pair_leaves(params, apl.lora_pairs(params)):
    r = a.shape[-1]
    a = a.reshape(-1, a.shape[-2], r)
    b = b.reshape(a.shape[0], r, -1)
    out.append((label, np.swapaxes(a, -1, -2), np.swapaxes(b, -1, -2)))
  return out


def _fro(x):
  return np.sqrt(np.sum(x ** 2, axis=(-2, -1)))


class Tracer:
  """Per-step statistics of one run (the `on_step` hook of `Harness.run`)."""

  def __init__(self, harness: lora_runs.Harness, train, optimizer: str, options: dict):
    self.h, self.train, self.rows = harness, train, []
    self.scale = float(harness.lora_scale)
    self.optimizer = optimizer
    split = harness.split

    def loss_fn(params, frozen, inputs, labels, mask):
      sums = loss_sums(split.merge(params, frozen)(inputs[0]), labels[0], mask[0])
      return sums.loss / jnp.maximum(sums.tokens, 1.0)

    self.grad = jax.jit(jax.value_and_grad(loss_fn))
    probe_options = {k: v for k, v in options.items() if k in ("damping", "decay_rate")}
    self.probe = optax.chain(
        optax.clip_by_global_norm(DEMO.max_grad_norm),
        apl.scale_by_adaprelora(lora_scale=self.scale, b1=None, clipping_threshold=None,
                                **probe_options))
    self.probe_update = jax.jit(self.probe.update)
    self.probe_state = None
    self.prev = None

  def __call__(self, step, params, batch, opt_state):
    del opt_state
    if self.probe_state is None:
      self.probe_state = self.probe.init(params)
    if self.prev is not None:
      self._finish(params)
    loss, grads = self.grad(params, self.h.split.frozen, batch.inputs, batch.labels,
                            batch.loss_mask)
    raw, self.probe_state = self.probe_update(grads, self.probe_state, params)
    self.prev = (step, float(loss), jax.tree.map(np.asarray, params),
                 jax.tree.map(np.asarray, raw), jax.tree.map(np.asarray, self.probe_state[1].nu))

  def _finish(self, params):
    step, loss, before, raw, nu = self.prev
    s = self.scale
    row = {"step": step + 1, "loss": loss, "layers": []}
    pairs = apl.lora_pairs(before)
    for (label, a0, b0), (_, a1, b1), (_, ra, rb), (_, c_stat, r_stat) in zip(
        _pairs(before), _pairs(jax.tree.map(np.asarray, params)), _pairs(raw),
        _pair_leaves(nu, pairs)):
      w0 = s * b0 @ a0
      w1 = s * b1 @ a1
      u_raw = s * (b0 @ ra + rb @ a0)  # raw direction's W-step (paper layout)
      m, n = w0.shape[-2:]
      rms = _fro(u_raw) / np.sqrt(m * n)
      r_vec = np.asarray(r_stat).reshape(len(a0), -1)
      c_vec = np.asarray(c_stat).reshape(len(a0), -1)
      p = np.sqrt(r_vec / r_vec.mean(-1, keepdims=True))
      q = np.sqrt(c_vec)
      for layer in range(len(a0)):
        row["layers"].append({
            "pair": f"{label}[{layer}]",
            "A": float(_fro(a0[layer])), "B": float(_fro(b0[layer])),
            "dA": float(_fro(a1[layer] - a0[layer])), "dB": float(_fro(b1[layer] - b0[layer])),
            "W_step": float(_fro(w1[layer] - w0[layer])),
            "dA_raw": float(_fro(ra[layer])), "dB_raw": float(_fro(rb[layer])),
            "rms_U_raw": float(rms[layer]),
            "clip_factor": float(1.0 / max(1.0, rms[layer])),
            "p_max_over_min": float(p[layer].max() / max(p[layer].min(), 1e-30)),
            "q_mean": float(q[layer].mean()),
        })
    self.rows.append(row)

  def close(self, params):
    if self.prev is not None:
      self._finish(params)
      self.prev = None


def _median(row, key):
  return float(np.median([layer[key] for layer in row["layers"]]))


def trace(harness, train, optimizer, lr, steps, options=None):
  """Statistics of the first `steps` steps of `optimizer` at `lr` (seed 0)."""
  tracer = Tracer(harness, train, optimizer, options or {})
  result = harness.run(optimizer, lr, 0, train, None, on_step=tracer, stop_after=steps)
  final = harness.init_params(0) if result.params is None else result.params
  tracer.close(final)
  return tracer.rows


def slope_da_vs_b(rows, first=2):
  """Least-squares slope of log |dA_raw| on log |B| over steps >= `first`, all layers."""
  xs, ys = [], []
  for row in rows:
    if row["step"] < first:
      continue
    for layer in row["layers"]:
      if layer["B"] > 0 and layer["dA_raw"] > 0:
        xs.append(np.log(layer["B"]))
        ys.append(np.log(layer["dA_raw"]))
  if len(xs) < 3:
    return float("nan")
  return float(np.polyfit(xs, ys, 1)[0])


TRACE_STEPS_SHOWN = (1, 2, 3, 5, 10, 15, 20, 30, 50, 75, 100)


def trace_table(rows, adamw_rows) -> str:
  """Medians over the 6 adapted layers (3 modules x 2 layers) at a few steps."""
  aw = {r["step"]: r for r in adamw_rows}
  lines = ["| step | loss | \\|A\\| | \\|B\\| | \\|dA\\| | \\|dB\\| | W-step | AdamW W-step | "
           "AdamW loss | raw \\|dA\\| | raw \\|dB\\| | raw rms(U) | clip factor | p max/min |",
           "|---" * 14 + "|"]
  for row in rows:
    if row["step"] not in TRACE_STEPS_SHOWN:
      continue
    other = aw.get(row["step"])
    cells = [row["step"], f"{row['loss']:.3f}"] + [
        f"{_median(row, k):.3g}" for k in ("A", "B", "dA", "dB", "W_step")]
    cells += [f"{_median(other, 'W_step'):.3g}" if other else "", f"{other['loss']:.3f}"
              if other else ""]
    cells += [f"{_median(row, k):.3g}" for k in ("dA_raw", "dB_raw", "rms_U_raw",
                                                  "clip_factor", "p_max_over_min")]
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  return "\n".join(lines)


def run_variants(train, val, steps, full, print_fn=print):
  """Each variant's first `steps` steps (and the full run for those in `full`)."""
  out = {}
  harnesses = {}
  for name, (optimizer, lr, changes, options) in VARIANTS.items():
    spec = dataclasses.replace(DEMO, log_every=1,
                               options=tuple(sorted(options.items())), **changes)
    key = (spec, optimizer)
    if key not in harnesses:
      harnesses[key] = lora_runs.Harness(spec)
    h = harnesses[key]
    t0 = time.perf_counter()
    short = h.run(optimizer, lr, 0, train, None, stop_after=steps)
    losses = [v for _, v in short.losses]
    entry = {"optimizer": optimizer, "learning_rate": lr, "changes": changes,
             "options": {k: v for k, v in options.items()},
             "first5": float(np.mean(losses[:5])),
             "max_10_30": float(np.max(losses[9:30])) if len(losses) > 9 else float("nan"),
             "last5": float(np.mean(losses[-5:])), "steps": len(losses),
             "seconds_short": time.perf_counter() - t0}
    if name in full:
      t0 = time.perf_counter()
      long = h.run(optimizer, lr, 0, train, val)
      entry["eval_loss_150"] = long.val_loss
      entry["train_last10_150"] = float(np.mean([v for _, v in long.losses[-10:]]))
      entry["seconds_full"] = time.perf_counter() - t0
    out[name] = entry
    print_fn(f"{name}: {entry}")
  return out


def variants_table(variants, steps) -> str:
  lines = [f"| setting | loss steps 1-5 | max loss steps 10-30 | loss steps {steps - 4}-{steps} | "
           "eval loss after 150 steps | train loss, last 10 of 150 |", "|---|---|---|---|---|---|"]
  for name, e in variants.items():
    full = (f"{e['eval_loss_150']:.3f}" if "eval_loss_150" in e else "")
    tl = (f"{e['train_last10_150']:.3f}" if "train_last10_150" in e else "")
    lines.append(f"| {name} | {e['first5']:.3f} | {e['max_10_30']:.3f} | {e['last5']:.3f} | "
                 f"{full} | {tl} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trace-steps", type=int, default=100)
  parser.add_argument("--variant-steps", type=int, default=40)
  parser.add_argument("--full", default="adaprelora (demo: lr 1e-3)",
                      help="';'-separated variant names also run for all 150 steps")
  parser.add_argument("--no-write", action="store_true", help="print, do not write docs")
  args = parser.parse_args(argv)
  jax.config.update("jax_compilation_cache_dir", "/tmp/adaprelora-jax-bench-cache")
  train, val = demo_data()
  t0 = time.perf_counter()
  harness = lora_runs.Harness(DEMO)
  rows = trace(harness, train, "adaprelora", 1e-3, args.trace_steps)
  adamw_rows = trace(harness, train, "adamw", 3e-2, args.trace_steps)
  trace_seconds = time.perf_counter() - t0
  slope = slope_da_vs_b(rows)
  table = trace_table(rows, adamw_rows)
  print(table)
  print(f"slope of log|dA_raw| on log|B|: {slope:.3f}")
  full = [f for f in args.full.split(";") if f]
  variants = run_variants(train, val, args.variant_steps, full)
  vtable = variants_table(variants, args.variant_steps)
  print(vtable)
  results = {"trace": rows, "adamw_trace": adamw_rows, "slope_log_dA_raw_on_log_B": slope,
             "variants": variants, "trace_seconds": trace_seconds}
  if args.no_write:
    return results
  markdown = EARLY_PHASE_TEXT.format(table=table, slope=slope, vtable=vtable,
                                     steps=args.trace_steps, vsteps=args.variant_steps)
  report.write_section("early_phase", markdown, results)
  return results


EARLY_PHASE_TEXT = """## AdaPreLoRA's early phase (demo setting)

The demo's setting (package base, generated data-to-text task, 16 x 256 bytes, LoRA r = 8,
alpha = 16 on c_attn/c_proj/c_fc, cosine over 150 steps with 10 warmup steps, global-norm
clipping 1), seed 0. Medians over the 6 adapted layers; `A = lora_a^T`, `B = lora_b^T`;
`|dA|`, `|dB|` are the applied changes of a step, the W-step is `s |B'A' - BA|_F`; "raw"
is `scale_by_adaprelora` without momentum or clipping on the same clipped gradients
(its rms(U) decides the clipping factor `1 / max(1, rms(U))`); `p = sqrt(R / mean R)`.
First {steps} steps:

{table}

Slope of `log |dA_raw|` on `log |B|` over all layers and steps 2 to {steps}: **{slope:.2f}**
(the hypothesis `dA ~ 1 / |B|` predicts -1).

Settings within the SPEC (first {vsteps} steps of the 150-step schedule; training loss
means; the full run only where listed):

{vtable}
"""


if __name__ == "__main__":
  main()
