"""The generated arithmetic and review tasks: deterministic, balanced, and right by an
independent reading of the generated text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from adaprelora_jax.eval import gsm8k_answer
from adaprelora_jax.train import synthetic_tasks as st
from adaprelora_jax.train.data import ByteTokenizer

_QUESTION = re.compile(r"^.+ has (\d) (\w+)\. It ([a-z ]+?) (\d)( more)?\. How many (\w+) "
                       r"(now|are left)\?\n$")


def _solve(question: str) -> int:
  """The answer read from the question's words alone."""
  match = _QUESTION.match(question)
  assert match, question
  a, item, verb, b, more, item2, _ = match.groups()
  assert item == item2
  if verb in ("buys", "bakes", "gets", "makes"):
    assert more
    return int(a) + int(b)
  assert verb in ("sells", "breaks", "gives away", "loses") and not more
  return int(a) - int(b)


def test_arithmetic_answers_follow_from_the_question():
  examples = st.arithmetic_examples(500, 0)
  ops = set()
  for question, solution in examples:
    answer = _solve(question)
    assert answer >= 0
    assert gsm8k_answer(solution) == str(answer)
    line = solution.split("\n")[0]
    lhs, rhs = line.split("=")
    a, op, b = re.match(r"(\d)([+-])(\d)$", lhs).groups()
    ops.add(op)
    assert int(rhs) == (int(a) + int(b) if op == "+" else int(a) - int(b)) == answer
  assert ops == {"+", "-"}
  assert len({q for q, _ in examples}) > 400  # varied


_POS, _NEG = set(st.POSITIVE), set(st.NEGATIVE)


def _clause_polarity(clause: str) -> int:
  words = clause.lower().rstrip(".").split()
  adjective = words[-1]
  polarity = 1 if adjective in _POS else 0
  assert adjective in _POS | _NEG, clause
  return 1 - polarity if "not" in words else polarity


def test_review_labels_follow_the_rule():
  examples = st.review_examples(1000, 0)
  labels = []
  for text, label in examples:
    if " but " in text:
      first, second = text.split(" but ")
      assert _clause_polarity(first) != _clause_polarity(second)
      expected = _clause_polarity(second)
    else:
      first, second = text.split(" and ")
      assert _clause_polarity(first) == _clause_polarity(second)
      expected = _clause_polarity(first)
    assert label == expected, text
    labels.append(label)
  assert 0.45 < np.mean(labels) < 0.55
  assert any(" not " in t for t, _ in examples) and any(" but " in t for t, _ in examples)


@pytest.mark.parametrize("make, examples", [(st.arithmetic_data, st.arithmetic_examples),
                                            (st.review_data, st.review_examples)])
def test_tokenized_rows_are_deterministic_and_mask_the_target(make, examples):
  tok = ByteTokenizer()
  a, b = make(64, 3, tok, 96), make(64, 3, tok, 96)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, make(64, 4, tok, 96).tokens)
  assert a.truncated == a.dropped == 0
  first = examples(64, 3)[0]
  if make is st.review_data:
    prompt, target = st.review_prompt(first[0]), st.LABELS[first[1]]
  else:
    prompt, target = first
  ids = tok.encode(prompt) + tok.encode(target) + [tok.eos_id]
  np.testing.assert_array_equal(a.tokens[0, :len(ids)], ids)
  # The loss is on the target bytes and the end token only.
  labels = a.tokens[0, 1:][a.loss_mask[0] > 0]
  np.testing.assert_array_equal(labels, tok.encode(target) + [tok.eos_id])
