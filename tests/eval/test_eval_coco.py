"""METEOR, ROUGE-L and CIDEr (pycocoevalcap) and the PTB tokenizer on cases worked by hand.

METEOR's English parameters, as meteor-1.5.jar's default task ("rank", `-l en`) sets them:
alpha = 0.85, beta = 0.2, gamma = 0.6, delta = 0.75 (read from the jar's
`edu.cmu.meteor.util.Constants.PARAM_RANK`). The hand cases use made-up tokens ("qz", ...)
that no stemmer, synonym or paraphrase table matches and that are not English function
words, so only exact matches occur and every word is a content word.
"""

import math

import pytest

from adaprelora_jax import eval as ev

ALPHA, BETA, GAMMA, DELTA = 0.85, 0.2, 0.6, 0.75


@pytest.fixture(scope="module", autouse=True)
def meteor_jar():
  """Start the METEOR jar once for the module (~15 s); later calls reuse its process."""
  assert ev.meteor(["qz"], [["qz"]]) == pytest.approx(1.0)


def meteor_by_hand(p, r, frag):
  fmean = p * r / (ALPHA * p + (1 - ALPHA) * r)
  return fmean * (1 - GAMMA * frag ** BETA)


def test_ptb_tokenize_lowercases_drops_punctuation_and_keeps_lines():
  out = ev.ptb_tokenize(['Hello, World! It is the "Eagle".', "", "Near Cafe Rouge; 20-25."])
  assert out == ["hello world it is the eagle", "", "near cafe rouge 20-25"]
  assert ev.ptb_tokenize(["a\nb", "", ""]) == ["a b", "", ""]  # one line per text


def test_meteor_exact_matches_by_hand():
  # ref "qz qx qv qw qk qj" (6), hyp "qz qx qw qk" (4): m = 4 matches in 2 chunks
  # ("qz qx", "qw qk"); P = 4/4, R = 4/6, frag = 2/4.
  s = ev.meteor(["qz qx qw qk"], [["qz qx qv qw qk qj"]])
  assert s == pytest.approx(meteor_by_hand(1.0, 4 / 6, 2 / 4), abs=1e-9)
  assert s == pytest.approx(0.3352068, abs=1e-6)


def test_meteor_function_word_weight_by_hand():
  # "the" is an English function word (weight 1 - delta in the lengths): ref "qz the qx",
  # hyp "qz qx": P = 1, R = 2 delta / (2 delta + (1 - delta)), two chunks over 2 matches.
  s = ev.meteor(["qz qx"], [["qz the qx"]])
  assert s == pytest.approx(meteor_by_hand(1.0, 2 * DELTA / (2 * DELTA + 1 - DELTA), 1.0), abs=1e-9)


def test_meteor_corpus_sums_statistics():
  # The corpus score sums the statistics; the chunks of an exactly matched example are
  # not added (MeteorStats.addStats): m = 4 + 3, |h| = 4 + 3, |r| = 6 + 3, chunks = 2.
  s = ev.meteor(["qz qx qw qk", "qa qb qc"], [["qz qx qv qw qk qj"], ["qa qb qc"]])
  assert s == pytest.approx(meteor_by_hand(1.0, 7 / 9, 2 / 7), abs=1e-9)


def test_meteor_properties():
  ref = "qz qx qv qw qk qj"
  # Identical hypothesis and reference: frag = 0, score 1.
  assert ev.meteor([ref], [[ref]]) == pytest.approx(1.0)
  assert ev.meteor(["The cat sat on the mat."], [["the cat sat on the mat"]]) == pytest.approx(1.0)
  # Growing prefixes of the reference: R = k / 6, frag = 1 / k, strictly increasing.
  words = ref.split()
  scores = [ev.meteor([" ".join(words[:k])], [[ref]]) for k in range(1, 7)]
  for k, s in enumerate(scores[:-1], start=1):
    assert s == pytest.approx(meteor_by_hand(1.0, k / 6, 1 / k), abs=1e-9)
  assert all(a < b for a, b in zip(scores, scores[1:]))
  # The best reference counts: adding the exact one gives 1.
  assert ev.meteor(["qz qx qw qk"], [[ref, "qz qx qw qk"]]) == pytest.approx(1.0)
  assert ev.meteor(["qa qb"], [[ref]]) == 0.0


def test_java_missing_is_an_error(monkeypatch):
  monkeypatch.setenv("PATH", "")
  # Even with the jar already running (the module fixture started it), as METEOR itself:
  with pytest.raises(RuntimeError, match="no `java`"):
    ev.meteor(["a"], [["a"]], tokenize=False)
  with pytest.raises(RuntimeError, match="no `java`"):
    ev.meteor(["a"], [["a"]])
  with pytest.raises(RuntimeError, match="no `java`"):
    ev.e2e_metrics(["a"], [["a"]])
  with pytest.raises(RuntimeError, match="no `java`"):
    ev.ptb_tokenize(["a"])


def test_rouge_l_by_hand():
  # Example 1: hyp "the cat sat on the mat" (6). LCS with "the cat is on the mat" = 5
  # (P 5/6, R 5/6), with "cat sat" = 2 (P 2/6, R 2/2). pycocoevalcap takes P = max P = 5/6
  # and R = max R = 1 from different references: F = (1 + 1.44) P R / (R + 1.44 P).
  # Example 2: hyp "a b c d", ref "d c b a": LCS 1, P = R = 1/4, F = 1/4. Mean of the two.
  hyps = ["the cat sat on the mat", "a b c d"]
  refs = [["the cat is on the mat", "cat sat"], ["d c b a"]]
  f1 = 2.44 * (5 / 6) * 1.0 / (1.0 + 1.44 * 5 / 6)
  assert ev.rouge_l(hyps, refs) == pytest.approx((f1 + 0.25) / 2, abs=1e-12)
  assert ev.rouge_l(["The Cat, sat."], [["the cat sat"]]) == pytest.approx(1.0)


def test_cider_by_hand():
  # N = 2 examples; every reference n-gram occurs in one example's references (df = 1) and
  # hypothesis-only n-grams have df = 0 -> max(1, df) = 1: every weight is ln 2 - ln 1.
  # Example 1: "The cat." -> "the cat" = its reference: unigram and bigram cosines 1, no 3/4-
  #   grams (cosine 0), equal lengths -> 10 * (1 + 1 + 0 + 0) / 4 = 5.
  # Example 2: hyp "c e f", ref "c e": unigram cosine 2 / (sqrt 3 sqrt 2), bigram 1 / sqrt 2,
  #   trigram 0; lengths in bigrams 2 vs 1 -> penalty exp(-1 / (2 * 6^2)).
  s = ev.cider(["The cat.", "c e f"], [["the cat"], ["c e"]])
  ex2 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
  assert s == pytest.approx((5 + ex2) / 2, abs=1e-12)
  # One example: log N = 0, every weight 0.
  assert ev.cider(["the cat"], [["the cat"]]) == 0.0


@pytest.mark.parametrize("metric", [ev.meteor, ev.rouge_l, ev.cider])
def test_bad_input(metric):
  with pytest.raises(ValueError, match="no predictions"):
    metric([], [])
  with pytest.raises(ValueError, match="2 predictions but 1"):
    metric(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="at least one reference"):
    metric(["a"], [[]])


def test_meteor_text_cannot_break_the_jar_protocol():
  # Newlines and the jar's "|||" separator inside a text become spaces.
  assert ev.meteor(["qz\nqx"], [["qz ||| qx"]], tokenize=False) == pytest.approx(1.0)
