"""Devices, meshes and hosts: the `--mesh` flag, multi-host start-up, each host's share
of a global batch, and gathering results back to the host.

>>> parse_mesh("fsdp=2,tensor=4")
{'fsdp': 2, 'tensor': 4}
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from adaprelora_jax.models.sharding import DATA, FSDP, MESH_AXES, TENSOR, make_mesh
from adaprelora_jax.train.config import ConfigError

# A batch `(grad_accum, batch, seq)` is split over the data-parallel axes.
BATCH_SPEC = P(None, (DATA, FSDP), None)


def parse_mesh(text: str | None) -> dict[str, int]:
  """`"fsdp=2,tensor=4"` as axis sizes; ConfigError for unknown axes or bad sizes."""
  if not text:
    return {}
  sizes = {}
  for part in text.split(","):
    name, _, value = part.partition("=")
    name = name.strip()
    if name not in MESH_AXES or not value.strip().isdigit() or int(value) <= 0:
      raise ConfigError(f"--mesh {text!r}: expected comma-separated AXIS=SIZE with AXIS in "
                        f"{', '.join(MESH_AXES)} and SIZE a positive integer")
    sizes[name] = int(value)
  return sizes


def build_mesh(text: str | None, devices=None) -> jax.sharding.Mesh:
  """The `(data, fsdp, tensor)` mesh of `--mesh` over `devices` (default: all devices of
  all hosts), Explicit axes; every device not placed by the flag goes to `fsdp`."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse_mesh(text)
  total = int(np.prod(list(sizes.values()))) if sizes else 1
  complete = len(sizes) == 3 or (FSDP in sizes and DATA in sizes)
  if (complete and total != len(devices)) or len(devices) % total:
    raise ConfigError(f"--mesh {text!r} needs {total} devices (or a multiple, with an axis "
                      f"left out), but this run has {len(devices)} "
                      f"({devices[0].platform}, {jax.process_count()} process(es))")
  try:
    return make_mesh(len(devices), fsdp=sizes.get(FSDP), tensor=sizes.get(TENSOR, 1),
                     data=sizes.get(DATA), axis_types=AxisType.Explicit, devices=devices)
  except ValueError as e:
    raise ConfigError(f"--mesh {text!r}: {e}") from e


def batch_sharding(mesh, ndim: int = 3) -> NamedSharding:
  """Batch arrays `(grad_accum, batch, ...)` of rank `ndim`, split over the batch axis."""
  return NamedSharding(mesh, P(*BATCH_SPEC[:2], *(None,) * (ndim - 2)))


def check_batch(mesh, batch_size: int) -> None:
  parallel = mesh.shape[DATA] * mesh.shape[FSDP]
  if batch_size % parallel:
    raise ConfigError(f"batch size {batch_size} is not a multiple of the data-parallel mesh "
                      f"size data x fsdp = {parallel}")


def host_rows(mesh, batch_size: int) -> slice:
  """The rows of a global micro-batch that this host's devices hold (contiguous)."""
  shape = (1, batch_size, 1)
  index_map = batch_sharding(mesh).addressable_devices_indices_map(shape)
  starts = [idx[1].start or 0 for idx in index_map.values()]
  stops = [batch_size if idx[1].stop is None else idx[1].stop for idx in index_map.values()]
  rows = slice(min(starts), max(stops))
  if sum(s1 - s0 for s0, s1 in {(a, b) for a, b in zip(starts, stops)}) != rows.stop - rows.start:
    raise ValueError("this host's batch rows are not contiguous")
  return rows


def put_batch(mesh, local: np.ndarray, batch_size: int) -> jax.Array:
  """A global `(grad_accum, batch_size, ...)` array from this host's rows."""
  shape = (local.shape[0], batch_size) + local.shape[2:]
  return jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim), local, shape)


def to_host(tree: Any) -> Any:
  """NumPy copies of the arrays of `tree`, gathered from every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """`jax.distributed.initialize` when launched as several processes: with a coordinator
  given here or in `JAX_COORDINATOR_ADDRESS`. Returns whether it initialised."""
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator is None:
    return False
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  return True


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective: every process calls it)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # noqa: PLC0415

  flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
  return bool(np.asarray(flags).any())
