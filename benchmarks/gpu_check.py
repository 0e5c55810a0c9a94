"""The speed benchmarks on a GPU, in one go: the 7B-shaped optimizer step and the
GPT-2-medium whole training step, every optimizer of the registry against AdamW.

Meant for a short GPU loan (about 15 minutes in all, JAX with CUDA installed there):

    python benchmarks/gpu_check.py                    # writes the gpu_check section
    python benchmarks/gpu_check.py --page "$OUT/benchmarks.md"   # or a page elsewhere

It runs `optimizer_step.measure_rank` (Llama-7B-shaped factors, 2 layers stacked,
r = 16 and 64, 21 interleaved repeats, with AdaPreLoRA's per-stage timings and a copy
that measures the device's bandwidth), the `lora_pro_full` pass at r = 16, and
`train_step.measure` on GPT-2-medium shapes (r = 16 on c_attn / c_proj / c_fc, batch
4 x 128, 10 interleaved repeats), then writes the section `gpu_check` of the page (the
device and the versions in its stamp) with the raw JSON beside it. Refuses to run on a
CPU unless `--allow-cpu` (for a dry run with `--quick`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import optimizer_step  # noqa: E402
import report  # noqa: E402
import train_step  # noqa: E402

import adaprelora_jax as apl  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--page", type=Path, default=report.PAGE,
                      help="the Markdown page to write (its JSON goes to <page dir>/benchmarks/)")
  parser.add_argument("--ranks", default="16,64")
  parser.add_argument("--repeats", type=int, default=21)
  parser.add_argument("--train-repeats", type=int, default=10)
  parser.add_argument("--quick", action="store_true",
                      help="small shapes and tiny models (a dry run of the script)")
  parser.add_argument("--optimizers", default=",".join(apl.optimizers),
                      help="comma-separated registry names (adamw is always included)")
  parser.add_argument("--allow-cpu", action="store_true")
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  if backend == "cpu" and not args.allow_cpu:
    raise SystemExit("gpu_check: no GPU visible to JAX (jax.default_backend() == 'cpu'); "
                     "install jax[cuda] on the GPU machine, or pass --allow-cpu for a dry run")
  print(f"{jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}", flush=True)
  start = time.perf_counter()
  hidden, mlp, repeats = (1024, 2752, 5) if args.quick else (4096, 11008, args.repeats)
  shapes = optimizer_step.llama_shapes(hidden, mlp)
  chosen = [n for n in apl.optimizers if n in args.optimizers.split(",") or n == "adamw"]
  names = [n for n in chosen if n != optimizer_step.FULL]
  steps = []
  for rank in (int(r) for r in args.ranks.split(",")):
    steps.append(optimizer_step.measure_rank(names, shapes, rank, 2, repeats, with_stages=True))
    print(optimizer_step.rank_table(steps[-1]) + "\n\n"
          + optimizer_step.stage_table(steps[-1]) + "\n", flush=True)
  full = None
  if optimizer_step.FULL in chosen:
    full = optimizer_step.measure_full(shapes, 16, 2, 3)
    print(f"lora_pro_full: {full}", flush=True)
  setting = train_step.QUICK["tiny-gpt2"] if args.quick else train_step.SETTINGS["gpt2-medium"]
  whole = train_step.measure(setting, chosen, 3 if args.quick else
                             args.train_repeats)
  print(train_step.table(whole), flush=True)
  device = jax.devices()[0].device_kind
  text = [f"## On a GPU: {device}", "",
          "`benchmarks/gpu_check.py`: the optimizer step on Llama-7B-shaped factors and the "
          "GPT-2-medium whole training step, as in the sections above, on the GPU named in the "
          "stamp (target for AdaPreLoRA's optimizer step at r = 16 there: within 1.5x of "
          "adamw).", "", optimizer_step.verdict(steps, where=device, time_bound=1.5), ""]
  for res in steps:
    text += [optimizer_step.rank_table(res), "", optimizer_step.stage_table(res), ""]
  if full is not None:
    text += ["| optimizer | min step (ms) | time vs adamw (min / median) | state vs adamw |",
             "|---|---|---|---|"]
    for name, r in full["optimizers"].items():
      text.append(f"| {name} | {1e3 * r['min_s']:.2f} | {r['min_ratio']:.1f} / "
                  f"{r['median_ratio']:.1f} | {r['state_ratio']:.2f} |")
  text += ["", train_step.table(whole), train_step.verdict([whole])]
  raw = report.write_section("gpu_check", "\n".join(text),
                             dict(optimizer_step=steps, lora_pro_full=full, train_step=whole),
                             page=args.page, raw_dir=args.page.parent / "benchmarks")
  print(f"wrote the gpu_check section of {args.page} and {raw} "
        f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  main()
