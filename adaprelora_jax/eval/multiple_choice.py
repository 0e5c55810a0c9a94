"""Multiple choice (ARC) by answer log-likelihood: the JAX scorer and the two accuracies."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adaprelora_jax.eval import _checks


def target_log_likelihoods(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Summed log-probabilities of the target tokens: `sum_t mask_t log softmax(logits_t)[y_t]`.

  `logits[..., t, :]` must be the prediction for `targets[..., t]` (shift the model's
  outputs by one first). The softmax runs in at least float32.

  Args:
    logits: `(..., T, V)`.
    targets: `(..., T)` integer token ids.
    mask: `(..., T)`, 1 on the answer tokens to score, 0 elsewhere (prompt, padding).

  Returns:
    `(...,)` summed log-likelihoods; `mask.sum(-1)` gives the token counts.

  Example:
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))
    >>> target_log_likelihoods(logits, jnp.array([[0, 1]]), jnp.array([[1, 1]]))  # log(.5 .75)
    Array([-0.98082924], dtype=float32)
  """
  if logits.shape[:-1] != targets.shape or targets.shape != mask.shape:
    raise ValueError(f"logits {logits.shape}, targets {targets.shape} and mask {mask.shape} must "
                     "agree: (..., T, V), (..., T), (..., T)")
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.sum(jnp.where(mask.astype(bool), picked, 0.0), axis=-1)


def multiple_choice_accuracy(log_likelihoods: Sequence[Sequence[float]],
                             token_counts: Sequence[Sequence[int]],
                             labels: Sequence[int]) -> dict[str, float]:
  """Accuracy of `argmax_c LL_c` and of `argmax_c LL_c / n_c` (length-normalised).

  `LL_c` is the summed log-likelihood of choice `c`'s answer tokens and `n_c` their count;
  ties go to the first choice. Questions may have different numbers of choices.

  Args:
    log_likelihoods: per question, the summed log-likelihood of each choice.
    token_counts: per question, the number of answer tokens of each choice.
    labels: the index of the correct choice of each question.

  Returns:
    dict: `{"acc": ..., "acc_norm": ...}`.

  Example:
    >>> multiple_choice_accuracy([[-2.0, -3.0]], [[1, 3]], [1])  # -2/1 < -3/3
    {'acc': 0.0, 'acc_norm': 1.0}
  """
  _checks.check_pairs(log_likelihoods, labels, "labels")
  _checks.check_pairs(log_likelihoods, token_counts, "token_counts")
  hits = hits_norm = 0
  for i, (ll, n, y) in enumerate(zip(log_likelihoods, token_counts, labels)):
    ll, n = np.asarray(ll, np.float64), np.asarray(n, np.float64)
    if ll.ndim != 1 or ll.size == 0 or ll.shape != n.shape:
      raise ValueError(f"question {i}: {ll.shape} log-likelihoods and {n.shape} token counts; "
                       "need one of each per choice")
    if np.any(n <= 0):
      raise ValueError(f"question {i}: every choice needs at least one token, got {n.tolist()}")
    if not 0 <= int(y) < ll.size:
      raise ValueError(f"question {i}: label {y} is not one of its {ll.size} choices")
    hits += int(np.argmax(ll)) == int(y)
    hits_norm += int(np.argmax(ll / n)) == int(y)
  return {"acc": hits / len(labels), "acc_norm": hits_norm / len(labels)}
