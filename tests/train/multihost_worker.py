"""One of two local processes of the multi-host test (started as a subprocess):

    python multihost_worker.py PORT PROCESS_ID OUTPUT_DIR

Two CPU devices per process, gloo collectives over 127.0.0.1, `jax.distributed` with a
timeout; trains the tiny test config on the 4 global devices.
"""

import os
import sys


def main():
  port, process_id, output_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  # Before JAX starts its backend (this module is also imported by pytest's doctest
  # collection, which must not see these).
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # noqa: PLC0415

  from train_helpers import multihost_config  # noqa: PLC0415

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id, initialization_timeout=120)
  assert jax.process_count() == 2, jax.process_count()
  assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
  from adaprelora_jax.train import train  # noqa: PLC0415

  result = train(multihost_config(), output_dir, progress=False, print_fn=print)
  print(f"process {jax.process_index()} of {jax.process_count()}: step {result.step}")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
