"""The five E2E NLG metrics against all references of each MR, with their implementations."""

from collections.abc import Sequence

from adaprelora_jax.eval import _checks
from adaprelora_jax.eval import coco_metrics
from adaprelora_jax.eval import ngram_metrics


def e2e_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
  """BLEU, NIST, METEOR, ROUGE-L and CIDEr as the official E2E script reports them.

  BLEU and NIST: lowercased mteval-13a tokens (sacrebleu; nltk's NIST). METEOR, ROUGE-L and
  CIDEr: pycocoevalcap on PTB tokens (one tokenizer run for all three). Scales as the E2E
  script prints them: BLEU, METEOR, ROUGE-L in [0, 1] (papers print 100x), NIST and CIDEr
  as is.

  Args:
    predictions: one generated text per MR.
    references: all references of each MR (e.g. from `read_e2e_references`).

  Returns:
    dict: `{name: {"score": float, "implementation": str}}` for `BLEU`, `NIST`, `METEOR`,
    `ROUGE_L`, `CIDEr`.
  """
  _checks.check_pairs(predictions, references)
  predictions = _checks.check_strings(predictions)
  references = _checks.check_references(references)
  preds, refs = coco_metrics.ptb_tokenize_corpus(predictions, references)
  return {
      "BLEU": {"score": ngram_metrics.bleu(predictions, references),
               "implementation": ngram_metrics.bleu_implementation()},
      "NIST": {"score": ngram_metrics.nist(predictions, references),
               "implementation": ngram_metrics.nist_implementation()},
      "METEOR": {"score": coco_metrics.meteor(preds, refs, tokenize=False),
                 "implementation": coco_metrics.meteor_implementation()},
      "ROUGE_L": {"score": coco_metrics.rouge_l(preds, refs, tokenize=False),
                  "implementation": coco_metrics.rouge_l_implementation()},
      "CIDEr": {"score": coco_metrics.cider(preds, refs, tokenize=False),
                "implementation": coco_metrics.cider_implementation()},
  }
