"""Rows (dicts) from local files, a folder holding a split, or a Hugging Face dataset.

A source is read by `read_rows(source, split)`:

- a file: `.json` (a list of objects, or JSON lines as `datasets`' `to_json` writes them),
  `.jsonl`, `.parquet` (pyarrow), `.csv`;
- a folder: the file(s) of `split` in it, in `<config>/`, `data/` or the folder itself:
  `train.jsonl`, `validation.parquet`, shards such as `train-00000-of-00002.parquet`
  (read in name order), or one of the split's other names (`dev.csv`, ...);
- anything else: a Hugging Face dataset name, read with
  `datasets.load_dataset(name, config, split=split)` (online, or from the local cache).

A line of a JSON-lines file that is not a JSON object is a bad row (counted, in
`Rows.unreadable`); a missing or unreadable file, or one without a row, is a DataError.

>>> import json, pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "train.jsonl").write_text('{"a": 1}\\nnot json\\n{"a": 2}\\n')
>>> rows = read_rows(folder, "train")
>>> rows.rows, rows.fields, rows.unreadable
([{'a': 1}, {'a': 2}], ('a',), 1)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adaprelora_jax.data.records import DataError

SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")

# Other names of a split in file names (E2E's `devset.csv`, GLUE's `dev.tsv` exports, ...).
SPLIT_ALIASES: Mapping[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


@dataclasses.dataclass(frozen=True)
class Rows:
  """The rows read from a source and where they came from."""

  source: str                      # the file(s), folder or dataset read
  rows: list[dict[str, Any]]
  fields: tuple[str, ...]          # every field name seen, in first-seen order
  unreadable: int = 0              # JSON lines that were not a JSON object


def _fields(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = ()) -> tuple[str, ...]:
  seen = dict.fromkeys(columns)
  for row in rows:
    seen.update(dict.fromkeys(row))
  return tuple(seen)


def _read_json(file: Path, max_rows: int | None) -> tuple[list[dict[str, Any]], int]:
  """A JSON list of objects, or JSON lines; returns the rows and the unreadable lines."""
  with file.open(encoding="utf-8-sig") as f:
    head = f.read(4096).lstrip()
    f.seek(0)
    if head.startswith("["):
      data = json.load(f)
      if not isinstance(data, list):
        raise DataError(f"{file}: expected a JSON list of objects")
      rows = [r for r in data[:max_rows] if isinstance(r, dict)]
      return rows, len(data[:max_rows]) - len(rows)
    rows, bad = [], 0
    for line in f:
      if not line.strip():
        continue
      if max_rows is not None and len(rows) + bad >= max_rows:
        break
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        row = None
      if isinstance(row, dict):
        rows.append(row)
      else:
        bad += 1
    if bad and not rows:
      raise DataError(f"{file}: neither a JSON list of objects nor JSON lines (one object "
                      "per line)")
    return rows, bad


def _read_csv(file: Path, max_rows: int | None) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
  with file.open(newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    rows = []
    for row in reader:
      if max_rows is not None and len(rows) >= max_rows:
        break
      # A short row leaves None for the missing columns: drop them (missing fields).
      rows.append({k: v for k, v in row.items() if k is not None and v is not None})
    return rows, tuple(reader.fieldnames or ())


def _read_parquet(file: Path, max_rows: int | None) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"{file}: reading Parquet needs the `pyarrow` package "
                    "(pip install 'adaprelora-jax[data]')") from e

  table = pq.read_table(file)
  if max_rows is not None:
    table = table.slice(0, max_rows)
  return table.to_pylist(), tuple(table.column_names)


def read_file(path: str | os.PathLike, max_rows: int | None = None) -> Rows:
  """The rows of one `.json`, `.jsonl`, `.parquet` or `.csv` file (at most `max_rows`)."""
  return read_files([Path(path)], max_rows)


def read_files(files: Sequence[Path], max_rows: int | None = None) -> Rows:
  """The rows of several files of one split (shards), in the order given."""
  rows: list[dict[str, Any]] = []
  columns: list[str] = []
  bad = 0
  for file in files:
    left = None if max_rows is None else max_rows - len(rows) - bad
    if left is not None and left <= 0:
      break
    if not file.is_file():
      raise DataError(f"{file}: no such file")
    suffix = file.suffix.lower()
    try:
      if suffix in (".json", ".jsonl"):
        got, unreadable = _read_json(file, left)
        bad += unreadable
      elif suffix == ".csv":
        got, names = _read_csv(file, left)
        columns += names
      elif suffix == ".parquet":
        got, names = _read_parquet(file, left)
        columns += names
      else:
        raise DataError(f"{file}: unknown file type {suffix!r}; use one of {SUFFIXES}")
    except DataError:
      raise
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
      raise DataError(f"{file}: not a readable {suffix[1:]} file ({e})") from e
    except Exception as e:  # pyarrow's errors: ArrowInvalid, OSError, ...
      if suffix != ".parquet":
        raise
      raise DataError(f"{file}: not a readable parquet file ({e})") from e
    rows += got
  source = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
  if not rows and not bad:
    raise DataError(f"{source}: no rows")
  return Rows(source, rows, _fields(rows, columns), bad)


def _split_files(folder: Path, names: Sequence[str]) -> list[Path]:
  """The files of a folder named `<name>.<suffix>` or `<name>-<shard>.<suffix>`."""
  pattern = re.compile(
      rf"({'|'.join(map(re.escape, names))})(-[^.]*)?({'|'.join(map(re.escape, SUFFIXES))})",
      re.IGNORECASE)
  return sorted(p for p in folder.iterdir() if p.is_file() and pattern.fullmatch(p.name))


def find_split(folder: Path, split: str, *, config: str | None = None,
               aliases: Sequence[str] = ()) -> list[Path]:
  """The file(s) of `split` in `folder/<config>`, `folder/data` or `folder`; the first
  name that matches among `split`, `aliases` and `SPLIT_ALIASES[split]` wins."""
  names = list(dict.fromkeys([split, *aliases, *SPLIT_ALIASES.get(split, ())]))
  places = [folder / config] if config else []
  places += [folder / "data", folder]
  for place in places:
    if not place.is_dir():
      continue
    for name in names:
      files = _split_files(place, [name])
      if len({f.suffix.lower() for f in files}) > 1:
        raise DataError(f"{place}: split {split!r} is in several formats "
                        f"({', '.join(f.name for f in files)}); keep one")
      if files:
        return files
  raise DataError(
      f"{folder}: no file for split {split!r} (looked for {', '.join(names)} with a suffix "
      f"in {SUFFIXES}, optionally sharded as <name>-00000-of-00001, in "
      f"{', '.join(str(p) for p in places)})")


def looks_local(source: str) -> bool:
  """Whether a source that does not exist names a local path (so it is not a dataset)."""
  return (source.startswith(("/", "./", "../", "~", ".\\")) or
          Path(source).suffix.lower() in SUFFIXES)


def read_dataset(name: str, config: str | None, split: str, max_rows: int | None = None,
                 **kwargs: Any) -> Rows:
  """Rows of `datasets.load_dataset(name, config, split=split, **kwargs)`."""
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"{name!r} is not a local file or folder, and reading a Hugging Face "
                    "dataset needs the `datasets` package") from e
  try:
    dataset = datasets.load_dataset(name, config, split=split, **kwargs)
  except Exception as e:  # offline, unknown name, unknown config or split, ...
    raise DataError(
        f"{name!r} (config {config!r}, split {split!r}): not a local file or folder, and "
        f"`datasets.load_dataset` could not load it ({type(e).__name__}: {e}). Offline, pass "
        "a local file or folder") from e
  if max_rows is not None:
    dataset = dataset.select(range(min(max_rows, len(dataset))))
  rows = dataset.to_list()
  if not rows:
    raise DataError(f"{name!r} (config {config!r}, split {split!r}): no rows")
  return Rows(f"{name} ({config}, {split})" if config else f"{name} ({split})", rows,
              _fields(rows, dataset.column_names))


def read_rows(source: str | os.PathLike, split: str = "train", *, config: str | None = None,
              aliases: Sequence[str] = (), max_rows: int | None = None,
              backend: str = "auto", dataset_options: Mapping[str, Any] | None = None) -> Rows:
  """The rows of `split` from a file, a folder or a dataset name (see the module doc).

  `backend="auto"` reads an existing path itself and sends other names to `datasets`;
  `"datasets"` sends every source to `datasets.load_dataset` (a hub snapshot folder with
  its README's configs); `"local"` never uses `datasets`. `dataset_options` go to
  `datasets.load_dataset` (`cache_dir`, `revision`, `data_files`, ...).
  """
  if backend not in ("auto", "local", "datasets"):
    raise ValueError(f"backend must be 'auto', 'local' or 'datasets', not {backend!r}")
  text = os.fspath(source)
  path = Path(text).expanduser()
  options = dict(dataset_options or {})
  if backend == "datasets":
    return read_dataset(text, config, split, max_rows, **options)
  if path.is_file():
    return read_file(path, max_rows)
  if path.is_dir():
    return read_files(find_split(path, split, config=config, aliases=aliases), max_rows)
  if backend == "local" or looks_local(text):
    raise DataError(f"{text}: no such file or folder")
  return read_dataset(text, config, split, max_rows, **options)
