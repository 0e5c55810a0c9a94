"""Evaluation for the paper's tasks: metrics and scoring functions (no training).

E2E NLG (`e2e_metrics`: BLEU, NIST, METEOR, ROUGE-L, CIDEr against all references of an
MR, each with the name of its implementation), GSM8K exact match, GLUE accuracy / Matthews
correlation / F1, ARC multiple-choice accuracy by summed and length-normalised answer
log-likelihood (with `target_log_likelihoods` for model logits), and results files that
keep the predictions beside the metrics. The metric packages (sacrebleu, nltk,
pycocoevalcap) are imported when a metric runs. See docs/evaluation.md.
"""

from adaprelora_jax.eval.coco_metrics import cider
from adaprelora_jax.eval.coco_metrics import meteor
from adaprelora_jax.eval.coco_metrics import ptb_tokenize
from adaprelora_jax.eval.coco_metrics import rouge_l
from adaprelora_jax.eval.e2e import e2e_metrics
from adaprelora_jax.eval.e2e_data import group_e2e_references
from adaprelora_jax.eval.e2e_data import read_e2e_references
from adaprelora_jax.eval.glue import accuracy
from adaprelora_jax.eval.glue import f1_score
from adaprelora_jax.eval.glue import glue_metric
from adaprelora_jax.eval.glue import matthews_corrcoef
from adaprelora_jax.eval.gsm8k import gsm8k_answer
from adaprelora_jax.eval.gsm8k import gsm8k_exact_match
from adaprelora_jax.eval.multiple_choice import multiple_choice_accuracy
from adaprelora_jax.eval.multiple_choice import target_log_likelihoods
from adaprelora_jax.eval.ngram_metrics import bleu
from adaprelora_jax.eval.ngram_metrics import nist
from adaprelora_jax.eval.results import read_results
from adaprelora_jax.eval.results import write_results

__all__ = (
    "accuracy",
    "bleu",
    "cider",
    "e2e_metrics",
    "f1_score",
    "glue_metric",
    "group_e2e_references",
    "gsm8k_answer",
    "gsm8k_exact_match",
    "matthews_corrcoef",
    "meteor",
    "multiple_choice_accuracy",
    "nist",
    "ptb_tokenize",
    "read_e2e_references",
    "read_results",
    "rouge_l",
    "target_log_likelihoods",
    "write_results",
)
