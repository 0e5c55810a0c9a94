"""BLEU (sacrebleu) and NIST (nltk) on corpora worked by hand."""

import math

import pytest

from adaprelora_jax import eval as ev


def test_bleu_two_segment_corpus_by_hand():
  # Segment 1: hyp "the cat sat on the mat" (6 tokens), refs of 6 tokens each.
  #   1-grams: the(x2, clipped to 1 = max count in one ref), cat, sat, on, mat -> 5 / 6
  #   2-grams: the cat (r1), cat sat, sat on, on the (r2), the mat (r2)     -> 5 / 5
  #   3-grams: 4 / 4, 4-grams: 3 / 3; closest reference length 6.
  # Segment 2: hyp "the dog ran away" (4), refs of 5 and 6 tokens: all n-grams in r1 ->
  #   4/4, 3/3, 2/2, 1/1; closest reference length 5.
  # Corpus: p = (9/10, 8/8, 6/6, 4/4), c = 10, r = 11, BP = exp(1 - 11/10).
  hyps = ["the cat sat on the mat", "the dog ran away"]
  refs = [["the cat sat on a mat", "a cat sat on the mat"],
          ["the dog ran away quickly", "the big dog ran off home"]]
  expected = math.exp(1 - 11 / 10) * (9 / 10) ** 0.25
  assert ev.bleu(hyps, refs) == pytest.approx(expected, rel=1e-12)
  # Case-insensitive, 13a tokens: capitals and a split-off final period change nothing
  # but the period adds a matched token to both sides.
  assert ev.bleu(["The Cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
  # Hypothesis 6 tokens, reference 7 ("mat ."): all precisions 1, BP = exp(1 - 7/6).
  assert ev.bleu(["the cat sat on the mat"], [["the cat sat on the mat."]]) == pytest.approx(
      math.exp(1 - 7 / 6))


def test_bleu_without_a_4gram_match_is_zero_and_references_can_vary_in_number():
  assert ev.bleu(["a b c d"], [["a b c x"]]) == 0.0  # no smoothing, as mteval
  one = ev.bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
  more = ev.bleu(["the cat sat on the mat"], [["the cat sat on a mat", "a cat sat on the mat"]])
  assert more > one  # another reference can only add matches here


def test_nist_two_segment_corpus_by_hand():
  # References (9 words): "the cat sat on the mat", "the dog ran"; counts the:3, others 1.
  # info(w) = log2(9 / count(w)): the -> log2 3, others -> log2 9 = 2 log2 3.
  # info(bigram) = log2(count(prefix) / count(bigram)): "the x" -> log2 3, others 0;
  # every 3..5-gram has a prefix seen once -> 0.
  # Order 1: seg1 hits the,the,cat,sat,on,mat = 2 log2 3 + 4 * 2 log2 3 = 10 log2 3, seg2
  #   the, dog = 3 log2 3; hypothesis unigrams 6 + 2 -> 13 log2 3 / 8.
  # Order 2: seg1 hits "the cat", "the mat" = 2 log2 3 over 5 bigrams, seg2 "the dog" =
  #   log2 3 over 1 -> 3 log2 3 / 6. Orders 3..5: 0.
  # Length: L_sys / L_ref = 8 / 9, LP = exp(beta ln^2(8/9)), beta = ln 0.5 / ln^2 1.5.
  hyps = ["the cat sat on the mat", "the dog"]
  refs = [["the cat sat on the mat"], ["the dog ran"]]
  beta = math.log(0.5) / math.log(1.5) ** 2
  expected = (13 / 8 + 3 / 6) * math.log2(3) * math.exp(beta * math.log(8 / 9) ** 2)
  assert ev.nist(hyps, refs) == pytest.approx(expected, rel=1e-12)
  assert ev.nist(["THE CAT SAT ON THE MAT", "The dog"], refs) == pytest.approx(expected)


def test_nist_is_nan_without_a_long_enough_hypothesis():
  assert math.isnan(ev.nist(["a b"], [["a b c d e"]]))


@pytest.mark.parametrize("metric", [ev.bleu, ev.nist])
@pytest.mark.parametrize("hyps,refs,match", [
    ([], [], "no predictions"),
    (["a"], [["a"], ["b"]], "1 predictions but 2"),
    (["a"], [[]], "at least one reference"),
    (["a"], ["a"], "is a string"),
    ([3], [["a"]], "not a string"),
])
def test_bad_input(metric, hyps, refs, match):
  with pytest.raises(ValueError, match=match):
    metric(hyps, refs)
