"""Each task's loader: its accepted field names, the pinned prompts, the bad rows it counts
and the files it refuses; E2E on ../shared/data/e2e against counts made with `csv`."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import pytest

from adaprelora_jax.data import TASKS, ChoiceExample, ClassificationExample, DataError
from adaprelora_jax.data import TextExample, load_task

# CI clones the repository next to shared/; the data is never copied into the repository.
E2E = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "e2e"


def jsonl(path: Path, rows: list[dict]) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return path


def check_counts(data, examples: int, skipped: dict[str, int]):
  assert len(data.examples) == examples and dict(data.skipped) == skipped
  assert data.rows_read == examples + sum(skipped.values())


def test_task_names():
  assert TASKS == ("e2e", "glue/mnli", "glue/sst2", "glue/cola", "glue/qnli", "glue/mrpc",
                   "arc/challenge", "arc/easy", "gsm8k")
  with pytest.raises(DataError, match="unknown task 'glue/stsb'.*glue/sst2"):
    load_task("glue/stsb", "x.jsonl")


# GLUE: the HF field names of each task, its pinned template and label names.
GLUE = {
    "glue/sst2": ({"sentence": "a gem"}, "Sentence: a gem\nLabel:", ("negative", "positive")),
    "glue/cola": ({"sentence": "Him went."}, "Sentence: Him went.\nLabel:",
                  ("unacceptable", "acceptable")),
    "glue/mrpc": ({"sentence1": "A b.", "sentence2": "B a."},
                  "Sentence 1: A b.\nSentence 2: B a.\nLabel:",
                  ("not_equivalent", "equivalent")),
    "glue/qnli": ({"question": "Who?", "sentence": "Me."},
                  "Question: Who?\nSentence: Me.\nLabel:", ("entailment", "not_entailment")),
    "glue/mnli": ({"premise": "It rains.", "hypothesis": "It is wet."},
                  "Premise: It rains.\nHypothesis: It is wet.\nLabel:",
                  ("entailment", "neutral", "contradiction")),
}


@pytest.mark.parametrize("task", list(GLUE))
def test_glue_fields_template_labels_and_bad_rows(tmp_path, task):
  fields, text, names = GLUE[task]
  last = len(names) - 1
  first_field = next(iter(fields))
  rows = [
      {**fields, "label": last, "idx": 0},
      {**fields, "label": str(last), "idx": 1},        # CSV-style integer string
      {**fields, "label": names[0], "idx": 2},         # a label name
      {**fields, "label": -1, "idx": 3},               # unlabeled test row
      {**fields, "label": "maybe", "idx": 4},
      {**fields, "label": 1.5, "idx": 5},
      {**fields, "label": len(names), "idx": 6},
      {**fields, "idx": 7},                            # no label
      {**fields, first_field: "  ", "label": 0},       # empty text
      {first_field: "x", "label": 0} if len(fields) == 2 else {"label": 0},  # no 2nd/1st field
  ]
  data = load_task(task, jsonl(tmp_path / "rows.jsonl", rows), "validation")
  assert (data.task, data.split, data.label_names) == (task, "validation", names)
  assert data.examples == (ClassificationExample(text, last), ClassificationExample(text, last),
                           ClassificationExample(text, 0))
  missing = [f for f in fields if f != first_field] if len(fields) == 2 else [first_field]
  check_counts(data, 3, {
      "unlabeled row (label -1)": 1, "non-integer label": 2,
      f"label out of range 0..{last}": 1, "missing field 'label'": 1,
      f"empty field {first_field!r}": 1, f"missing field {missing[0]!r}": 1})
  with pytest.raises(DataError, match=r"needs the fields .*'label'.*found \['text', 'label'\]"):
    load_task(task, jsonl(tmp_path / "wrong.jsonl", [{"text": "x", "label": 0}]))
  with pytest.raises(DataError, match="no usable .* 2 unlabeled row"):
    load_task(task, jsonl(tmp_path / "test.jsonl", [{**fields, "label": -1}] * 2))


def test_mnli_splits_in_a_hub_folder(tmp_path):
  row = {"premise": "p", "hypothesis": "h", "idx": 0}
  jsonl(tmp_path / "mnli" / "validation_matched.jsonl", [{**row, "label": 0}])
  jsonl(tmp_path / "mnli" / "validation_mismatched.jsonl", [{**row, "label": 2}] * 2)
  jsonl(tmp_path / "sst2" / "validation_matched.jsonl", [{"sentence": "s", "label": 1}])
  matched = load_task("glue/mnli", tmp_path, "validation_matched")
  mismatched = load_task("glue/mnli", tmp_path, "validation_mismatched")
  assert [e.label for e in matched.examples] == [0]
  assert [e.label for e in mismatched.examples] == [2, 2]


ARC_ROW = {"id": "q1", "question": "Which is a metal?",
           "choices": {"text": ["wood", "iron", "glass", "salt"],
                       "label": ["A", "B", "C", "D"]},
           "answerKey": "B"}
ARC_PROMPT = "Question: Which is a metal?\nA. wood\nB. iron\nC. glass\nD. salt\nAnswer:"


@pytest.mark.parametrize("task", ["arc/challenge", "arc/easy"])
def test_arc_fields_prompt_and_bad_rows(tmp_path, task):
  choices = ARC_ROW["choices"]
  rows = [
      ARC_ROW,
      {**ARC_ROW, "choices": {"text": choices["text"][:3], "label": ["1", "2", "3"]},
       "answerKey": "3"},                                              # numbered labels
      {**ARC_ROW, "choices": [{"text": t, "label": l}               # list of objects
                              for t, l in zip(choices["text"] + ["tin"], "ABCDE")],
       "answerKey": "E"},
      {**ARC_ROW, "answerKey": "F"},                                   # not among labels
      {**ARC_ROW, "choices": {"text": ["a", "b"], "label": ["A", "B"]}},  # two choices
      {**ARC_ROW, "choices": {"text": ["a", "", "c"], "label": ["A", "B", "C"]}},
      {**ARC_ROW, "choices": {"text": ["a", "b", "c"], "label": ["A", "B"]}},
      {**ARC_ROW, "answerKey": ""},
      {"question": "q", "answerKey": "A"},
  ]
  data = load_task(task, jsonl(tmp_path / "arc.jsonl", rows), "test")
  assert data.examples[0] == ChoiceExample(
      ARC_PROMPT, (" wood", " iron", " glass", " salt"), 1)
  assert data.examples[1].prompt == ARC_PROMPT.replace("\nD. salt", "")
  assert data.examples[1].answer == 2
  assert data.examples[2].choices[-1] == " tin" and data.examples[2].answer == 4
  assert "E. tin\nAnswer:" in data.examples[2].prompt
  check_counts(data, 3, {"answerKey not among the choice labels": 1,
                         "not 3 to 5 choices": 1, "empty choice": 1,
                         "malformed choices": 1, "empty field 'answerKey'": 1,
                         "missing field 'choices'": 1})
  with pytest.raises(DataError, match="needs the fields.*'answerKey'"):
    load_task(task, jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "A"}]))


def test_arc_configs_are_subfolders_and_parquet_structs(tmp_path):
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

  jsonl(tmp_path / "ARC-Challenge" / "test.jsonl", [ARC_ROW])
  # The hub's Parquet: `choices` a struct of two string lists.
  (tmp_path / "ARC-Easy").mkdir()
  pq.write_table(pa.Table.from_pylist([ARC_ROW] * 2),
                 tmp_path / "ARC-Easy" / "test-00000-of-00001.parquet")
  challenge = load_task("arc/challenge", tmp_path, "test")
  easy = load_task("arc/easy", tmp_path, "test")
  assert challenge.examples == easy.examples[:1] and len(easy.examples) == 2
  assert easy.examples[0] == ChoiceExample(ARC_PROMPT, (" wood", " iron", " glass", " salt"), 1)


def test_gsm8k_prompt_target_answer_and_bad_rows(tmp_path):
  answer = "She has 3 * 400 = <<3*400=1200>>1,200 eggs.\n#### 1,200"
  rows = [{"question": "How many eggs?", "answer": answer},
          {"question": "Q2", "answer": "It is 7 minus 2 = 5"},    # no ####
          {"question": "Q3", "answer": "   "},                     # empty target
          {"question": "Q4", "answer": "x\n####  "},               # nothing after ####
          {"answer": "#### 1"},
          {"question": "Q6", "answer": "#### -3.5"}]
  data = load_task("gsm8k", jsonl(tmp_path / "main" / "train.jsonl", rows).parents[1])
  assert data.examples[0] == TextExample("Question: How many eggs?\nAnswer:", " " + answer,
                                         ("1200",))
  assert data.examples[1].references == ("-3.5",)
  check_counts(data, 2, {"answer without '####'": 1, "empty target": 1,
                         "nothing after '####'": 1, "missing field 'question'": 1})
  with pytest.raises(DataError, match=r"no usable gsm8k row among 1 \(skipped: 1 answer "):
    load_task("gsm8k", jsonl(tmp_path / "none.jsonl", rows[1:2]))


def test_gsm8k_through_datasets_and_its_json_builder(tmp_path):
  file = jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "r\n#### 4"}] * 3)
  data = load_task("gsm8k", "json", "train", max_rows=2, dataset_options={
      "data_files": {"train": str(file)}, "cache_dir": str(tmp_path / "cache")})
  assert data.examples == (TextExample("Question: q\nAnswer:", " r\n#### 4", ("4",)),) * 2
  assert data.rows_read == 2 and data.source == "json (main, train)"


def test_e2e_rows_references_and_alternative_field_names(tmp_path):
  rows = [{"mr": "name[A], food[Thai]", "ref": "A serves Thai."},
          {"mr": "name[B]", "ref": "B."},
          {"mr": "name[A], food[Thai]", "ref": " A: Thai food. "},
          {"mr": "name[A], food[Thai]", "ref": ""},
          {"mr": "not an mr", "ref": "x"},
          {"mr": "", "ref": "x"}]
  file = tmp_path / "e.csv"
  with file.open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=["mr", "ref"])
    writer.writeheader()
    writer.writerows(rows)
  data = load_task("e2e", file)
  prompt = "name: A; food: Thai\n"
  assert data.examples[0] == TextExample(prompt, "A serves Thai.",
                                         ("A serves Thai.", "A: Thai food."),
                                         "name[A], food[Thai]")
  assert data.examples[1] == TextExample("name: B\n", "B.", ("B.",), "name[B]")
  assert data.examples[2].references == data.examples[0].references
  check_counts(data, 3, {"empty target": 1, "malformed mr": 1, "empty field 'mr'": 1})
  # The Hugging Face e2e_nlg export names the fields differently.
  hf = [{"meaning_representation": r["mr"], "human_reference": r["ref"]} for r in rows]
  assert load_task("e2e", jsonl(tmp_path / "hf.jsonl", hf)).examples == data.examples
  gem = [{"gem_id": str(i), "meaning_representation": r["mr"], "target": r["ref"]}
         for i, r in enumerate(rows)]
  assert load_task("e2e", jsonl(tmp_path / "gem.jsonl", gem)).examples == data.examples
  with pytest.raises(DataError, match=r"needs the fields \['mr', 'ref'\] or "
                     r"\['meaning_representation', 'human_reference'\] or "
                     r"\['meaning_representation', 'target'\]; found \['mr'\]"):
    load_task("e2e", jsonl(tmp_path / "bad.jsonl", [{"mr": "name[A]"}]))


def test_e2e_devset_counts_from_the_csv_module():
  assert E2E.is_dir(), f"E2E data not found at {E2E}"
  with (E2E / "devset.csv").open(newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  refs = collections.defaultdict(list)
  for row in rows:
    refs[row["mr"].strip()].append(row["ref"].strip())
  data = load_task("e2e", E2E, "validation")  # the folder: devset.csv is the validation split
  assert data.source == str(E2E / "devset.csv") and data.rows_read == len(rows) == 4672
  assert len(data.examples) == len(rows) and not data.skipped
  assert len({e.key for e in data.examples}) == len(refs) == 547
  for example, row in zip(data.examples, rows):
    assert example.references == tuple(refs[row["mr"].strip()])
    assert example.target == row["ref"].strip()
  test = load_task("e2e", E2E, "test", max_rows=10)
  assert test.source.endswith("testset_w_refs.csv") and test.rows_read == 10


def test_empty_and_missing_sources(tmp_path):
  with pytest.raises(DataError, match="no such file or folder"):
    load_task("gsm8k", tmp_path / "nope.jsonl")
  (tmp_path / "empty.jsonl").write_text("")
  with pytest.raises(DataError, match="empty.jsonl: no rows"):
    load_task("gsm8k", tmp_path / "empty.jsonl")
  with pytest.raises(ValueError, match="max_rows"):
    load_task("gsm8k", tmp_path / "empty.jsonl", max_rows=0)
