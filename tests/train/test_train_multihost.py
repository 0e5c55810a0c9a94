"""Multi-host for real on one machine: two fresh processes with two CPU devices each,
gloo collectives over loopback, against one process with four devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import safetensors.numpy

from adaprelora_jax.train import read_metrics, train
from train_helpers import REPO, multihost_config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_of_four_devices(tmp_path):
  port = _free_port()
  out = tmp_path / "multihost"
  env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{Path(__file__).parent}")
  worker = str(Path(__file__).parent / "multihost_worker.py")
  procs = [subprocess.Popen([sys.executable, worker, str(port), str(i), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  try:
    single = train(multihost_config(), tmp_path / "single", devices=jax.devices()[:4],
                   progress=False, print_fn=lambda _: None)
    outputs = [p.communicate(timeout=480)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, output) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, output[-3000:]
    assert f"process {i} of 2: step 6" in output
  assert "4 devices, 2 process(es)" in outputs[0]
  assert sorted(int(d.name) for d in (out / "checkpoints").iterdir() if d.name.isdigit()) == [
      3, 6]
  multi_losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
  single_losses = [loss for _, loss in single.losses]
  assert len(multi_losses) == 6
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  ours = safetensors.numpy.load_file(out / "adapter" / "adapter_model.safetensors")
  ref = safetensors.numpy.load_file(tmp_path / "single" / "adapter" /
                                    "adapter_model.safetensors")
  assert sorted(ours) == sorted(ref)
  loss_diff = np.max(np.abs(np.subtract(multi_losses, single_losses)) / np.abs(single_losses))
  factor_diff = max(float(np.max(np.abs(ours[n] - ref[n])) / np.abs(ref[n]).max()) for n in ref)
  print(f"multi-host vs one process: losses {multi_losses} vs {single_losses}; max relative "
        f"loss difference {loss_diff:.2e}, max factor difference / max |factor| "
        f"{factor_diff:.2e}")
  for name in ref:
    np.testing.assert_allclose(ours[name], ref[name], rtol=1e-5,
                               atol=1e-5 * np.abs(ref[name]).max())
  assert any(np.abs(ref[n]).max() > 0 for n in ref if "lora_B" in n)
