"""Reading rows: every file format, folders with split files, the `datasets` path (on
local files: nothing can be fetched here), and the malformed-file errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaprelora_jax.data import DataError, read_rows
from adaprelora_jax.data import files

ROWS = [{"question": "1 + 1?", "answer": "2\n#### 2"},
        {"question": "Ünïcode, \"quoted\"?", "answer": "a,b\n#### 1,000"},
        {"question": "3?", "answer": "#### 3"}]


def write(path: Path, rows: list[dict], kind: str | None = None) -> Path:
  """`rows` as the file `path`, in the format its suffix names (or `kind`)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  kind = kind or path.suffix[1:]
  if kind == "json":  # a list of objects
    path.write_text(json.dumps(rows), encoding="utf-8")
  elif kind in ("jsonl", "jsonlines"):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  elif kind == "csv":
    with path.open("w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  elif kind == "parquet":
    pq.write_table(pa.Table.from_pylist(rows), path)
  else:
    raise ValueError(kind)
  return path


@pytest.mark.parametrize("name,kind", [("a.json", "json"), ("a.json", "jsonl"),
                                       ("a.jsonl", "jsonl"), ("a.csv", "csv"),
                                       ("a.parquet", "parquet")])
def test_every_format_reads_the_same_rows(tmp_path, name, kind):
  file = write(tmp_path / name, ROWS, kind)
  got = read_rows(file)
  assert got.rows == ROWS and got.fields == ("question", "answer") and got.unreadable == 0
  assert got.source == str(file)
  assert read_rows(file, max_rows=2).rows == ROWS[:2]


def test_folders_hold_splits_shards_configs_and_aliases(tmp_path):
  write(tmp_path / "flat" / "train.jsonl", ROWS[:1])
  write(tmp_path / "flat" / "validation.csv", ROWS[1:])
  assert read_rows(tmp_path / "flat", "train").rows == ROWS[:1]
  assert read_rows(tmp_path / "flat", "validation").rows == ROWS[1:]
  # Hugging Face hub layout: <config>/<split>-<shard>.parquet, shards in name order.
  write(tmp_path / "hub" / "main" / "train-00001-of-00002.parquet", ROWS[2:])
  write(tmp_path / "hub" / "main" / "train-00000-of-00002.parquet", ROWS[:2])
  write(tmp_path / "hub" / "other" / "train-00000-of-00001.parquet", ROWS[:1])
  got = read_rows(tmp_path / "hub", "train", config="main")
  assert got.rows == ROWS and "2 files" in got.source
  assert read_rows(tmp_path / "hub", "train", config="main", max_rows=2).rows == ROWS[:2]
  # data/ subfolder; another name of the split; "validation_matched" is not "validation".
  write(tmp_path / "d" / "data" / "dev.json", ROWS[:2])
  write(tmp_path / "d" / "data" / "validation_matched.json", ROWS[2:])
  assert read_rows(tmp_path / "d", "validation").rows == ROWS[:2]
  assert read_rows(tmp_path / "d", "validation_matched").rows == ROWS[2:]
  assert read_rows(tmp_path / "d", "x", aliases=("dev",)).rows == ROWS[:2]
  with pytest.raises(DataError, match="no file for split 'test'"):
    read_rows(tmp_path / "d", "test")
  write(tmp_path / "flat" / "train.parquet", ROWS)
  with pytest.raises(DataError, match="several formats"):
    read_rows(tmp_path / "flat", "train")


def test_unparsable_json_lines_are_counted_not_fatal(tmp_path):
  file = tmp_path / "a.jsonl"
  file.write_text('{"a": 1}\n[1, 2]\n{"a": \n\n{"b": 2}\n', encoding="utf-8")
  got = read_rows(file)
  assert got.rows == [{"a": 1}, {"b": 2}] and got.unreadable == 2 and got.fields == ("a", "b")


def test_a_short_csv_row_lacks_its_missing_fields_and_a_bom_is_no_field(tmp_path):
  file = tmp_path / "a.csv"
  file.write_text("\ufeffquestion,answer\nq1,a1\nq2\n", encoding="utf-8")
  assert read_rows(file).rows == [{"question": "q1", "answer": "a1"}, {"question": "q2"}]
  file = tmp_path / "a.jsonl"
  file.write_text('\ufeff{"question": "q1"}\n', encoding="utf-8")
  assert read_rows(file).rows == [{"question": "q1"}]


@pytest.mark.parametrize("name,content,match", [
    ("empty.jsonl", "", "no rows"),
    ("empty.json", "[]", "no rows"),
    ("header.csv", "question,answer\n", "no rows"),
    ("notjson.json", "{\n  \"a\": 1\n}\n", "neither a JSON list"),
    ("truncated.json", "[{\"a\": 1}", "not a readable json"),
    ("latin1.csv", b"question\n\xe9t\xe9\n", "not a readable csv"),
    ("broken.parquet", b"PAR1 not really", "not a readable parquet"),
    ("table.tsv", "a\tb\n", "unknown file type '.tsv'"),
])
def test_malformed_files_are_data_errors_naming_the_file(tmp_path, name, content, match):
  file = tmp_path / name
  file.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(DataError, match=match) as info:
    read_rows(file)
  assert str(file) in str(info.value)


def test_missing_local_paths_are_not_dataset_names(tmp_path):
  for source in (tmp_path / "nope.jsonl", "./nope", "nope.parquet"):
    with pytest.raises(DataError, match="no such file or folder"):
      read_rows(source)
  with pytest.raises(DataError, match="no such file or folder"):
    read_rows("some/name", backend="local")
  with pytest.raises(ValueError, match="backend"):
    read_rows(tmp_path, backend="hub")


def test_the_datasets_path_on_local_files(tmp_path):
  """A name that is no local path goes to `datasets.load_dataset`: here its `json`
  builder, and a folder laid out as a hub dataset (README configs) read as one."""
  cache = {"cache_dir": str(tmp_path / "cache")}
  file = write(tmp_path / "rows.jsonl", ROWS)
  got = read_rows("json", "train", max_rows=2,
                  dataset_options={"data_files": {"train": str(file)}, **cache})
  assert got.rows == ROWS[:2] and got.fields == ("question", "answer")
  hub = tmp_path / "hub"
  write(hub / "main" / "test-00000-of-00001.parquet", ROWS)
  (hub / "README.md").write_text(
      "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: test\n"
      "    path: main/test-*\n---\n", encoding="utf-8")
  got = read_rows(hub, "test", config="main", backend="datasets", dataset_options=cache)
  assert got.rows == ROWS and got.source == f"{hub} (main, test)"
  with pytest.raises(DataError, match="could not load it"):
    read_rows(hub, "test", config="nope", backend="datasets", dataset_options=cache)


def test_read_file_is_the_e2e_reader_of_eval(tmp_path):
  """eval.read_e2e_references reads through data.files: the same rows from any format."""
  from adaprelora_jax.eval import read_e2e_references  # pylint: disable=import-outside-toplevel

  rows = [{"mr": "m1", "ref": "a "}, {"mr": "m1", "ref": "b"}, {"mr": "m2", "ref": "c"}]
  for name in ("e.csv", "e.parquet", "e.jsonl"):
    assert read_e2e_references(write(tmp_path / name, rows)) == (
        ["m1", "m2"], [["a ", "b"], ["c"]])
  assert files.read_file(write(tmp_path / "x.csv", rows)).rows == rows
