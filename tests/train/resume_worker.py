"""A run that interrupts itself, for the resume tests (started as a subprocess).

    python resume_worker.py OUTPUT_DIR {kill,term} STEP

`kill`: SIGKILL at the end of STEP (loses the steps since the last checkpoint);
`term`: SIGTERM at the end of STEP (the loop saves STEP and stops; exit status 143).
"""

import os
import signal
import sys


def main():
  import jax  # noqa: PLC0415

  from adaprelora_jax.train import Preempted, train  # noqa: PLC0415
  from adaprelora_jax.train.loop import PREEMPTED_EXIT  # noqa: PLC0415
  from train_helpers import tiny_config  # noqa: PLC0415

  output_dir, how, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
  sig = signal.SIGKILL if how == "kill" else signal.SIGTERM

  def on_step(step):
    if step == at:
      os.kill(os.getpid(), sig)

  try:
    train(tiny_config(), output_dir, devices=jax.devices()[:1], progress=False,
          print_fn=lambda _: None, on_step=on_step)
  except Preempted:
    sys.exit(PREEMPTED_EXIT)


if __name__ == "__main__":
  main()
