"""Where metrics go: `metrics.jsonl` (one JSON object per logged step), TensorBoard
event files through tensorboardX (`OUTPUT_DIR/tensorboard/`), and a tqdm progress bar.
Only process 0 writes; the others get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
  """Appends records to `metrics.jsonl` and TensorBoard, and drives the progress bar."""

  def __init__(self, output_dir: str | Path, *, total_steps: int, initial_step: int,
               enabled: bool = True, progress: bool = True, description: str = "train"):
    self.enabled = enabled
    self._bar = None
    self._writer = None
    self._file = None
    if not enabled:
      return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    self._file = (output_dir / METRICS_FILE).open("a", encoding="utf-8")
    from tensorboardX import SummaryWriter  # noqa: PLC0415 (optional-weight import)

    self._writer = SummaryWriter(str(output_dir / TENSORBOARD_DIR))
    if progress:
      from tqdm.auto import tqdm  # noqa: PLC0415

      self._bar = tqdm(total=total_steps, initial=initial_step, desc=description,
                       dynamic_ncols=True, leave=True, disable=None)

  def log(self, record: dict[str, Any]) -> None:
    """Write one record (must have `step`); numbers become TensorBoard scalars."""
    if not self.enabled:
      return
    clean = {k: (float(v) if not isinstance(v, int | str | bool) else v)
             for k, v in record.items()}
    self._file.write(json.dumps(clean) + "\n")
    self._file.flush()
    step = int(clean["step"])
    for key, value in clean.items():
      if key != "step" and isinstance(value, int | float) and math.isfinite(value):
        self._writer.add_scalar(key, value, step)

  def progress(self, step: int, loss: float, tokens_per_s: float) -> None:
    """Advance the bar to `step`, showing the loss and the throughput."""
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
      self._bar.update(step - self._bar.n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()
    if self._file is not None:
      self._file.close()


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
  """The records of `OUTPUT_DIR/metrics.jsonl`."""
  file = Path(output_dir) / METRICS_FILE
  return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
