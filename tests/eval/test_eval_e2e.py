"""E2E: grouping references by MR, and the five metrics on a pinned slice of the test set."""

import csv

import pytest

from adaprelora_jax import eval as ev

NAMES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def test_group_e2e_references_keeps_file_order():
  rows = [("m1", "a"), ("m1", "b"), ("m2", "c"), ("m3", "d"), ("m3", "e"), ("m3", "f")]
  mrs, refs = ev.group_e2e_references(rows)
  assert mrs == ["m1", "m2", "m3"]
  assert refs == [["a", "b"], ["c"], ["d", "e", "f"]]


def test_group_e2e_references_bad_input():
  with pytest.raises(ValueError, match="appears again"):
    ev.group_e2e_references([("m1", "a"), ("m2", "b"), ("m1", "c")])
  with pytest.raises(ValueError, match="no"):
    ev.group_e2e_references([])


def test_read_e2e_references_on_the_test_set(e2e_test_csv):
  mrs, refs = ev.read_e2e_references(e2e_test_csv)
  with open(e2e_test_csv, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(mrs) == 630 == len({r["mr"] for r in rows})  # the README's counts
  assert sum(map(len, refs)) == len(rows) == 4693
  assert [r for group in refs for r in group] == [r["ref"] for r in rows]  # file order
  assert mrs[0] == "name[Blue Spice], eatType[coffee shop], area[city centre]"
  assert refs[0] == ["A coffee shop in the city centre area called Blue Spice.",
                     "Blue Spice is a coffee shop in city centre."]


def test_read_e2e_references_wrong_columns(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("meaning,text\nm,a\n")
  with pytest.raises(ValueError, match="'mr' and 'ref'"):
    ev.read_e2e_references(path)


def test_e2e_metrics_on_the_first_20_mrs(e2e_test_csv):
  mrs, refs = ev.read_e2e_references(e2e_test_csv)
  refs = refs[:20]
  hyps = [r[0] for r in refs]
  multi = [i for i, r in enumerate(refs) if len(r) >= 2]
  assert len(multi) == 18  # MRs 4 and 9 of the slice have a single reference

  # A human reference against the other references of its MR: good, not perfect.
  held_out = ev.e2e_metrics([hyps[i] for i in multi], [refs[i][1:] for i in multi])
  assert set(held_out) == set(NAMES)
  for name in NAMES:
    assert isinstance(held_out[name]["score"], float)
    assert held_out[name]["implementation"]
  assert "sacrebleu" in held_out["BLEU"]["implementation"]
  assert "nltk" in held_out["NIST"]["implementation"]
  for name in ("METEOR", "ROUGE_L", "CIDEr"):
    assert "pycocoevalcap" in held_out[name]["implementation"]
  for name in ("BLEU", "METEOR", "ROUGE_L"):
    assert 0.1 < held_out[name]["score"] < 1.0, name
  assert 1.0 < held_out["NIST"]["score"] < 15.0
  assert 0.1 < held_out["CIDEr"]["score"] < 10.0

  # With the hypothesis among the references (all 20 MRs) BLEU, METEOR and ROUGE-L are
  # exactly perfect: every n-gram is matched with a same-length reference; METEOR aligns
  # each example exactly; ROUGE-L's P and R reach 1 on that reference.
  included = ev.e2e_metrics(hyps, refs)
  for name in ("BLEU", "METEOR", "ROUGE_L"):
    assert included[name]["score"] == pytest.approx(1.0, abs=1e-12), name
  assert included["NIST"]["score"] > held_out["NIST"]["score"]


def test_e2e_metrics_bad_input():
  with pytest.raises(ValueError, match="1 predictions but 2"):
    ev.e2e_metrics(["a"], [["a"], ["b"]])
  with pytest.raises(ValueError, match="no predictions"):
    ev.e2e_metrics([], [])


def test_e2e_metrics_equal_the_single_metrics():
  hyps = ["The Eagle is a cheap coffee shop.", "Near the river: Zizzi, a pub."]
  refs = [["The Eagle is a low-priced coffee shop.", "Eagle: cheap coffee."],
          ["Zizzi is a pub near the riverside.", "There is a pub called Zizzi by the river."]]
  got = ev.e2e_metrics(hyps, refs)
  for name, fn in [("BLEU", ev.bleu), ("NIST", ev.nist), ("METEOR", ev.meteor),
                   ("ROUGE_L", ev.rouge_l), ("CIDEr", ev.cider)]:
    assert got[name]["score"] == fn(hyps, refs), name
