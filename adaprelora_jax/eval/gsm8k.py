"""GSM8K: the final number of a solution, and exact match on it."""

from collections.abc import Sequence
import decimal
import re

from adaprelora_jax.eval import _checks

# A number: optional sign (not after a word character, so "5-3" gives 3), digits with
# optional thousands commas, optional decimals; or a bare decimal such as ".5".
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)")


def gsm8k_answer(text: str) -> str | None:
  """The final number of a GSM8K solution, normalised; None if there is none.

  The first number after the last `####` if the text has one, else the last number in the
  text. Commas are removed and the value is written without trailing zeros or exponent
  (`"1,234.50"` -> `"1234.5"`, `"-3"` stays `"-3"`).

  Args:
    text: a reference solution or a generated one.

  Returns:
    The number as a string, or None.

  Example:
    >>> gsm8k_answer("She pays 3 * $1,200 = $3,600.\\n#### 3,600")
    '3600'
    >>> gsm8k_answer("so the answer is -2.50 dollars.")
    '-2.5'
    >>> gsm8k_answer("no number here") is None
    True
  """
  if not isinstance(text, str):
    raise ValueError(f"expected a string, got {type(text).__name__}")
  head, sep, tail = text.rpartition("####")
  if sep:
    found = _NUMBER.findall(tail)
    number = found[0] if found else None
  else:
    found = _NUMBER.findall(head + tail)
    number = found[-1] if found else None
  if number is None:
    return None
  value = decimal.Decimal(number.replace(",", ""))
  out = format(value.normalize(), "f")
  return "0" if out in ("-0", "0") else out


def gsm8k_exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
  """Fraction of predictions whose final number equals the answer's final number.

  `EM = 1/N sum_i [a(pred_i) == a(ans_i) != None]`, `a = gsm8k_answer` (a prediction
  without a number is wrong).

  Args:
    predictions: generated solutions.
    answers: reference solutions (`... #### 72`) or bare answers (`"72"`).

  Returns:
    Exact match in [0, 1].

  Example:
    >>> gsm8k_exact_match(["... so 72 clips", "It is 5"], ["#### 72", "#### 6"])
    0.5
  """
  _checks.check_pairs(predictions, answers, "answers")
  hits = 0
  for i, (pred, ans) in enumerate(zip(predictions, answers)):
    gold = gsm8k_answer(ans)
    if gold is None:
      raise ValueError(f"answers[{i}] has no number: {ans!r}")
    hits += gsm8k_answer(pred) == gold
  return hits / len(predictions)
