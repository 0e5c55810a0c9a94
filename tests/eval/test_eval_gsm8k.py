"""GSM8K final-number extraction and exact match on worked cases."""

import pytest

from adaprelora_jax import eval as ev


@pytest.mark.parametrize("text,expected", [
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("The total is $1,234,567.", "1234567"),
    ("1,2345", "2345"),                             # not a thousands group: two numbers
    ("He lost 5 dollars, so the change is -5", "-5"),
    ("#### -3.50", "-3.5"),
    ("7 apples #### 12 and then 99", "12"),        # the first number after ####
    ("#### 5 #### 8", "8"),                         # after the last ####
    ("20 - 8 = 12", "12"),                          # "- 8" after a space is -8, but last wins
    ("5-3=2 so 5-3", "3"),                          # a dash after a digit is not a sign
    ("It costs .5 dollars", "0.5"),
    ("The answer is 10.", "10"),                    # sentence period is not a decimal point
    ("2.0 hours", "2"),
    ("100", "100"),
    ("-0", "0"),
    ("no number here", None),
    ("#### no number after the marker", None),
    ("", None),
])
def test_gsm8k_answer(text, expected):
  assert ev.gsm8k_answer(text) == expected


def test_gsm8k_exact_match():
  preds = [
      "48 + 24 = 72. The answer is 72.",   # right
      "She has 1,000 left. #### 1000",     # right: commas removed on both sides
      "I think it is 6",                   # wrong
      "I don't know",                      # wrong: no number
      "So -2.50 dollars",                  # right: -2.5 == -2.50
  ]
  answers = ["#### 72", "blah #### 1,000", "#### 5", "#### 3", "#### -2.5"]
  assert ev.gsm8k_exact_match(preds, answers) == pytest.approx(3 / 5)


def test_gsm8k_bad_input():
  with pytest.raises(ValueError, match="2 predictions but 1 answers"):
    ev.gsm8k_exact_match(["1", "2"], ["#### 1"])
  with pytest.raises(ValueError, match="no predictions"):
    ev.gsm8k_exact_match([], [])
  with pytest.raises(ValueError, match="has no number"):
    ev.gsm8k_exact_match(["1"], ["none"])
  with pytest.raises(ValueError, match="expected a string"):
    ev.gsm8k_answer(3)
