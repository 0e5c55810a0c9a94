"""BLEU (sacrebleu) and NIST (nltk) over multi-reference corpora, case-insensitive.

The official E2E script scores BLEU and NIST with mteval-v13a (or its Python port),
case-insensitively, after mteval's tokenization; sacrebleu's `13a` tokenizer is that
tokenization. Both functions here lowercase and apply it.
"""

from collections.abc import Sequence

from adaprelora_jax.eval import _checks


def _tokenize_13a(text: str) -> list[str]:
  from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # pylint: disable=g-import-not-at-top

  return Tokenizer13a()(text.lower()).split()


def bleu_implementation() -> str:
  """The name and settings of the BLEU implementation, for results files."""
  import sacrebleu  # pylint: disable=g-import-not-at-top

  return (f"sacrebleu {sacrebleu.__version__} corpus BLEU-4 (tokenize='13a', lowercase=True, "
          "smooth_method='none'), in [0, 1]")


def nist_implementation() -> str:
  """The name and settings of the NIST implementation, for results files."""
  import nltk  # pylint: disable=g-import-not-at-top

  return (f"nltk {nltk.__version__} nltk.translate.nist_score.corpus_nist(n=5) on lowercased "
          "13a tokens (nltk's NIST, not mteval's)")


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Corpus BLEU-4 against all references of each example, in [0, 1].

  `BLEU = BP * exp(1/4 sum_{n=1..4} log p_n)`, `p_n = sum_i sum_g min(c_i(g), max_r c_ir(g)) /
  sum_i sum_g c_i(g)` over the n-grams `g` of hypothesis `i` (counts clipped by the largest
  count in any one reference), `BP = min(1, exp(1 - r / c))` with `c` the hypothesis length
  and `r` the sum of the reference lengths closest to each hypothesis (the shorter on ties).
  No smoothing: a corpus without a matching n-gram of some order scores 0.

  Args:
    predictions: one hypothesis per example.
    references: the references of each example (any number, at least one).

  Returns:
    BLEU in [0, 1] (sacrebleu reports 100 times this).

  Example:
    >>> # 6 hypothesis tokens, 7 reference tokens ("mat ."): BP = e^(1 - 7/6)
    >>> round(bleu(["the cat sat on the mat"], [["The cat sat on the mat."]]), 4)
    0.8465
  """
  _checks.check_pairs(predictions, references)
  predictions = _checks.check_strings(predictions)
  references = _checks.check_references(references)
  from sacrebleu.metrics import BLEU  # pylint: disable=g-import-not-at-top

  width = max(len(refs) for refs in references)
  streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
  metric = BLEU(tokenize="13a", lowercase=True, smooth_method="none")
  return metric.corpus_score(predictions, streams).score / 100.0


def nist(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 5) -> float:
  """Corpus NIST (nltk's `corpus_nist`) against all references of each example.

  `info(w_1..w_k) = log2(count(w_1..w_{k-1}) / count(w_1..w_k))` over the reference corpus
  (the numerator is the number of reference words for unigrams);
  `NIST = sum_{k=1..n} [sum_i overlap-info_ik / sum_i |k-grams of hyp i|] * LP`, where each
  hypothesis is matched, order by order, with the reference giving the highest information
  precision; `LP = exp(beta log^2 min(1, L_sys / L_ref))`, `beta = ln 0.5 / ln^2 1.5`, with
  `L_ref` the summed length of those chosen references. nltk differs from mteval, which clips
  against the merged references and uses the average reference length.

  Args:
    predictions: one hypothesis per example.
    references: the references of each example.
    n: the highest n-gram order (5 as in mteval).

  Returns:
    NIST (unbounded above, 0 without overlap); NaN if no hypothesis has `n` tokens, where
    nltk's formula divides by zero.
  """
  _checks.check_pairs(predictions, references)
  predictions = _checks.check_strings(predictions)
  references = _checks.check_references(references)
  from nltk.translate.nist_score import corpus_nist  # pylint: disable=g-import-not-at-top

  hyps = [_tokenize_13a(p) for p in predictions]
  refs = [[_tokenize_13a(r) for r in rs] for rs in references]
  if max(len(h) for h in hyps) < n:
    return float("nan")
  return float(corpus_nist(refs, hyps, n=n))
