"""Memory-mapped access to the tensors of a safetensors checkpoint folder.

The safetensors format is an 8-byte little-endian header length, a JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}}`) and the raw data. Every
header is checked against its file's size when the folder is opened, so a truncated
file fails before anything is loaded. `read` maps one tensor at a time; the mapping
is released when the returned array is dropped, so the pages of the file never stay
resident.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


def read_json(file: Path, missing: str):
  """The JSON content of `file`; errors name the file (`missing` says what was expected)."""
  if not file.is_file():
    raise FileNotFoundError(f"{file}: {missing}")
  try:
    return json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from e


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lies."""

  # The safetensors file.
  file: Path
  # The tensor's name in the checkpoint.
  name: str
  # Stored dtype.
  dtype: np.dtype
  # Stored shape (Hugging Face layout).
  shape: tuple[int, ...]
  # Byte offset of the data in the file.
  offset: int


def _read_header(file: Path) -> dict[str, TensorInfo]:
  size = file.stat().st_size
  if size < 8:
    raise ValueError(f"{file}: truncated safetensors file ({size} bytes, no header)")
  with open(file, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    if 8 + header_len > size:
      raise ValueError(f"{file}: truncated safetensors file (header of {header_len} bytes, "
                       f"file of {size})")
    try:
      header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{file}: corrupt safetensors header ({e})") from e
  start = 8 + header_len
  tensors = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry.get("dtype") not in DTYPES:
      raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
    dtype = DTYPES[entry["dtype"]]
    shape = tuple(int(d) for d in entry["shape"])
    begin, end = entry["data_offsets"]
    if end - begin != math.prod(shape) * dtype.itemsize:
      raise ValueError(f"{file}: tensor {name!r} has {end - begin} bytes for shape {shape} "
                       f"{entry['dtype']}")
    if start + end > size:
      raise ValueError(f"{file}: truncated safetensors file: tensor {name!r} needs bytes up to "
                       f"{start + end}, the file has {size}")
    tensors[name] = TensorInfo(file=file, name=name, dtype=dtype, shape=shape,
                               offset=start + begin)
  return tensors


class Checkpoint:
  """The tensors of a folder: `model.safetensors`, or shards listed by
  `model.safetensors.index.json`, or every `*.safetensors` file."""

  def __init__(self, folder: str | Path):
    self.folder = Path(folder)
    index = self.folder / INDEX_FILE
    self.tensors: dict[str, TensorInfo] = {}
    if index.is_file():
      self.source = index
      try:
        weight_map = read_json(index, "no safetensors index")["weight_map"]
      except KeyError as e:
        raise ValueError(f"{index}: not a safetensors index (no {e})") from e
      for file_name in sorted(set(weight_map.values())):
        file = self.folder / file_name
        if not file.is_file():
          names = sorted(k for k, v in weight_map.items() if v == file_name)
          raise FileNotFoundError(f"{file}: listed by {index} (for tensor {names[0]!r} and "
                                  f"{len(names) - 1} more) but missing")
        self.tensors.update(_read_header(file))
      for name, file_name in weight_map.items():
        if name not in self.tensors:
          raise ValueError(f"{self.folder / file_name}: tensor {name!r} listed by {index} "
                           "is not in the file")
    else:
      files = sorted(self.folder.glob("*.safetensors"))
      if not files:
        raise FileNotFoundError(f"{self.folder}: no *.safetensors files (and no {INDEX_FILE})")
      self.source = files[0] if len(files) == 1 else self.folder
      for file in files:
        self.tensors.update(_read_header(file))

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def info(self, name: str) -> TensorInfo:
    if name not in self.tensors:
      raise ValueError(f"{self.source}: tensor {name!r} is missing from the checkpoint")
    return self.tensors[name]

  def read(self, name: str) -> np.ndarray:
    """The tensor as a read-only memory-mapped array (stored dtype and layout)."""
    info = self.info(name)
    return np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.offset,
                     shape=info.shape)
