"""ARC-style multiple choice: accuracies by hand, log-likelihoods against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaprelora_jax import eval as ev


def test_multiple_choice_accuracy_by_hand():
  ll = [[-4.0, -6.0, -9.0],           # sum: 0; per token: -4/2, -6/6 = -1, -9/3 -> 1
        [-1.0, -5.0, -2.0, -8.0],     # sum: 0; per token -1/1 = -5/5, tie -> 0
        [-7.0, -3.0],                 # sum: 1; per token -7/7 = -1 vs -3/1 -> 0
        [-2.0, -2.0, -9.0]]           # tie: first -> 0, per token -2/2 = -1 vs -2/1 -> 0
  counts = [[2, 6, 3], [1, 5, 1, 4], [7, 1], [2, 1, 3]]
  labels = [1, 0, 0, 1]
  # summed: predictions 0, 0, 1, 0 vs labels 1, 0, 0, 1 -> 1/4
  # normalised: predictions 1, 0, 0, 0 -> 3/4
  assert ev.multiple_choice_accuracy(ll, counts, labels) == {"acc": 0.25, "acc_norm": 0.75}


def test_multiple_choice_bad_input():
  with pytest.raises(ValueError, match="2 predictions but 1 labels"):
    ev.multiple_choice_accuracy([[0.0], [0.0]], [[1], [1]], [0])
  with pytest.raises(ValueError, match="one of each per choice"):
    ev.multiple_choice_accuracy([[0.0, 1.0]], [[1]], [0])
  with pytest.raises(ValueError, match="not one of its 2 choices"):
    ev.multiple_choice_accuracy([[0.0, 1.0]], [[1, 1]], [2])
  with pytest.raises(ValueError, match="at least one token"):
    ev.multiple_choice_accuracy([[0.0, 1.0]], [[1, 0]], [0])
  with pytest.raises(ValueError, match="no predictions"):
    ev.multiple_choice_accuracy([], [], [])


def log_likelihoods_f64(logits, targets, mask):
  x = np.asarray(logits, np.float64)
  shifted = x - x.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  picked = np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  return (picked * np.asarray(mask, np.float64)).sum(-1)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-5)])
def test_target_log_likelihoods_matches_float64(dtype, rtol):
  batch, choices, length, vocab = 2, 4, 7, 50
  rng = np.random.default_rng(0)
  logits = jnp.asarray(4 * rng.standard_normal((batch, choices, length, vocab)), dtype)
  targets = jnp.asarray(rng.integers(0, vocab, (batch, choices, length)))
  mask = rng.random((batch, choices, length)) < 0.6
  mask[..., 0] = True
  mask = jnp.asarray(mask, jnp.int32)
  got = jax.jit(ev.target_log_likelihoods)(logits, targets, mask)
  assert got.shape == (batch, choices) and got.dtype == jnp.float32
  # The reference reads the same (rounded) logits, so bf16 inputs still agree at f32 accuracy.
  want = log_likelihoods_f64(np.asarray(logits.astype(jnp.float32)), targets, mask)
  np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=1e-5)
  # Masked-out tokens do not count: an all-zero mask gives 0.
  assert np.all(np.asarray(ev.target_log_likelihoods(logits, targets, 0 * mask)) == 0.0)


def test_target_log_likelihoods_feeds_the_accuracy():
  # Two choices of one question; choice 1 puts probability 0.9 on its single token.
  logits = jnp.log(jnp.array([[[0.5, 0.5], [0.5, 0.5]], [[0.1, 0.9], [1.0, 1.0]]]))
  targets = jnp.array([[0, 1], [1, 0]])
  mask = jnp.array([[1, 1], [1, 0]])
  ll = ev.target_log_likelihoods(logits, targets, mask)
  np.testing.assert_allclose(ll, [2 * np.log(0.5), np.log(0.9)], rtol=1e-6)
  acc = ev.multiple_choice_accuracy([ll.tolist()], [mask.sum(-1).tolist()], [1])
  assert acc == {"acc": 1.0, "acc_norm": 1.0}


def test_target_log_likelihoods_shape_mismatch():
  with pytest.raises(ValueError, match="must agree"):
    ev.target_log_likelihoods(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32),
                              jnp.ones((2, 4)))
