"""The embedded demo (`adaprelora-finetune` with no arguments): LoRA on the package base
for the generated data-to-text task, with several optimizers side by side from the same
base, each at the learning rate of the sweep in docs/training.md; a table and a
loss-curve PNG at the end.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from adaprelora_jax.train.base_model import ensure_package_base
from adaprelora_jax.train.config import DEFAULT_B1, PACKAGE_BASE, ConfigError, TrainConfig
from adaprelora_jax.train.loop import TrainResult, train

# The best final evaluation loss of the sweep in docs/training.md (150 steps, the demo's
# config): AdaPreLoRA over {1e-4, 3e-4, 1e-3, 3e-3}, AdamW over {1e-3, 3e-3, 1e-2, 3e-2,
# 1e-1}. Other optimizers run at the config's learning rate unless --learning-rate is given.
SWEPT_LEARNING_RATES = {"adaprelora": 1e-3, "adamw": 3e-2}
DEMO_OPTIMIZERS = ("adaprelora", "adamw")
PLOT_FILE = "loss_curves.png"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class DemoRow:
  """One optimizer's run in the demo's table."""

  optimizer: str
  learning_rate: float
  first_loss: float
  # Mean training loss over the last 10 logged steps.
  final_loss: float
  eval_loss: float
  seconds: float


def _row(name: str, lr: float, result: TrainResult) -> DemoRow:
  losses = [loss for _, loss in result.losses]
  return DemoRow(name, lr, losses[0] if losses else float("nan"),
                 float(np.mean(losses[-10:])) if losses else float("nan"),
                 result.eval_losses[-1][1] if result.eval_losses else float("nan"),
                 result.seconds)


def format_table(rows: Sequence[DemoRow]) -> str:
  """A Markdown table of the runs."""
  lines = ["| optimizer | learning rate | first loss | final train loss (last 10) | "
           "eval loss | seconds |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r.optimizer} | {r.learning_rate:g} | {r.first_loss:.4f} | "
                 f"{r.final_loss:.4f} | {r.eval_loss:.4f} | {r.seconds:.0f} |")
  return "\n".join(lines)


def plot(results: dict[str, TrainResult], file: Path) -> None:
  """Training losses (10-step moving average) and evaluation losses of each run."""
  import matplotlib  # noqa: PLC0415 (heavy; only the demo draws)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, result in results.items():
    steps = np.array([s for s, _ in result.losses])
    losses = np.array([v for _, v in result.losses])
    window = min(10, len(losses))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    line, = ax.plot(steps[window - 1:], smooth, label=f"{name} train (10-step mean)")
    ax.plot(steps, losses, color=line.get_color(), alpha=0.2)
    if result.eval_losses:
      es, ev = zip(*result.eval_losses)
      ax.plot(es, ev, "o--", color=line.get_color(), label=f"{name} eval")
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy per target byte (nats)")
  ax.set_title("LoRA on the package base: generated data-to-text task")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(file, dpi=110)
  plt.close(fig)


def run_demo(config: TrainConfig, output_dir: str | Path, *,
             optimizers: Sequence[str] = DEMO_OPTIMIZERS, learning_rate: float | None = None,
             resume: bool = True, progress: bool = True,
             print_fn: Callable[[str], None] = print) -> list[DemoRow]:
  """Train `config` once per optimizer into `output_dir/<optimizer>/`, print the table,
  draw `output_dir/loss_curves.png`, write `output_dir/summary.json`."""
  import adaprelora_jax as apl  # noqa: PLC0415

  unknown = [o for o in optimizers if o not in apl.optimizers]
  if unknown:
    raise ConfigError(f"unknown optimizer {unknown[0]!r}; known: {', '.join(sorted(apl.optimizers))}")
  output_dir = Path(output_dir)
  if config.model.path is None and config.model.name == PACKAGE_BASE:
    # Built (or found) first, so that the runs' times exclude it.
    ensure_package_base(config.model.base_steps, print_fn=print_fn, progress=progress)
  results, rows = {}, []
  for name in optimizers:
    lr = learning_rate or SWEPT_LEARNING_RATES.get(name, config.optim.learning_rate)
    # `--b1` is AdaPreLoRA's; the baselines keep their own momentum.
    b1 = config.optim.b1 if name == "adaprelora" else DEFAULT_B1
    run = config.replace(optimizer=name, learning_rate=lr, b1=b1)
    print_fn(f"== {name} (learning rate {lr:g}) ==")
    results[name] = train(run, output_dir / name, resume=resume, progress=progress,
                          print_fn=print_fn)
    rows.append(_row(name, lr, results[name]))
  table = format_table(rows)
  print_fn(table)
  import jax  # noqa: PLC0415

  if jax.process_index() != 0:
    return rows
  plot(results, output_dir / PLOT_FILE)
  (output_dir / SUMMARY_FILE).write_text(json.dumps(
      [dataclasses.asdict(r) for r in rows], indent=2) + "\n")
  print_fn(f"loss curves: {output_dir / PLOT_FILE}")
  return rows
