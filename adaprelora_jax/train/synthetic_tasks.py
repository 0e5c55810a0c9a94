"""Two more generated tasks in the package's restaurant world, small enough for the
package base to learn with LoRA in a few hundred steps (the quality benchmarks use them):

* arithmetic word problems in GSM8K's format (a worked line, then `#### answer`), one
  addition or subtraction of numbers from 1 to 9 (`arithmetic_problem`);
* review sentiment in the GLUE/SST-2 style (`review_example`): two clauses about
  aspects of a restaurant, each with a positive or negative adjective, optionally
  negated ("was not tasty"), joined by "and" (same polarity) or "but" (the second
  clause decides). The label word is `positive` or `negative`.
  The names are not used here: the review is one sentence, `The food was not tasty but
  the wine was superb.`

Both are deterministic functions of a NumPy generator; the `*_data` functions make
tokenized rows from a seed (loss on the target only, as for the E2E task).

>>> q, a = arithmetic_problem(np.random.default_rng(0))
>>> q.endswith("?\\n"), "####" in a
(True, True)
>>> text, label = review_example(np.random.default_rng(0))
>>> label in (0, 1) and text.endswith(".")
True
"""

from __future__ import annotations

import numpy as np

from adaprelora_jax.train.data import ByteTokenizer, TokenizedData, tokenize
from adaprelora_jax.train.synthetic import NAMES

ITEMS = ("cakes", "pies", "tables", "chairs", "cups", "plates", "pizzas", "bowls")
# (verb phrase, sign): what happened to the restaurant's items.
ADD_VERBS = ("buys", "bakes", "gets", "makes")
SUB_VERBS = ("sells", "breaks", "gives away", "loses")


def arithmetic_problem(rng: np.random.Generator) -> tuple[str, str]:
  """`(question, solution)`: `"Zizzi has 7 cakes. It sells 5. How many cakes are
  left?\\n"`, `"7-5=2\\n#### 2"`. Numbers from 1 to 9; a subtraction never goes below 0."""
  name = NAMES[rng.integers(len(NAMES))]
  item = ITEMS[rng.integers(len(ITEMS))]
  a, b = (int(x) for x in rng.integers(1, 10, size=2))
  if rng.integers(2):
    verb = ADD_VERBS[rng.integers(len(ADD_VERBS))]
    question = f"{name} has {a} {item}. It {verb} {b} more. How many {item} now?\n"
    return question, f"{a}+{b}={a + b}\n#### {a + b}"
  a, b = max(a, b), min(a, b)
  verb = SUB_VERBS[rng.integers(len(SUB_VERBS))]
  question = f"{name} has {a} {item}. It {verb} {b}. How many {item} are left?\n"
  return question, f"{a}-{b}={a - b}\n#### {a - b}"


ASPECTS = ("food", "service", "staff", "coffee", "view", "music", "wine", "soup")
POSITIVE = ("great", "tasty", "lovely", "superb", "friendly", "fresh", "charming", "perfect")
NEGATIVE = ("awful", "bland", "rude", "cold", "dirty", "slow", "stale", "noisy")
LABELS = ("negative", "positive")


def _clause(rng: np.random.Generator, polarity: int) -> str:
  """A clause of polarity `polarity` (1 positive): a word of that polarity, or a negated
  word of the other."""
  aspect = ASPECTS[rng.integers(len(ASPECTS))]
  negate = bool(rng.random() < 0.25)
  words = POSITIVE if polarity != negate else NEGATIVE
  word = words[rng.integers(len(words))]
  return f"the {aspect} was {'not ' if negate else ''}{word}"


def review_example(rng: np.random.Generator) -> tuple[str, int]:
  """`(review, label)`, label 1 positive, 0 negative (balanced)."""
  label = int(rng.integers(2))
  if rng.random() < 0.5:  # "and": both clauses agree
    text = f"{_clause(rng, label)} and {_clause(rng, label)}."
  else:  # "but": the second clause decides
    text = f"{_clause(rng, 1 - label)} but {_clause(rng, label)}."
  return text[0].upper() + text[1:], label


def review_prompt(text: str) -> str:
  """The prompt the label word follows."""
  return f"{text}\nSentiment: "


def arithmetic_data(num_examples: int, seed: int, tokenizer: ByteTokenizer, seq_len: int,
                    name: str = "arithmetic") -> TokenizedData:
  """`num_examples` word problems as tokens (loss on the solution)."""
  rng = np.random.default_rng([seed, 3])
  examples = [tokenizer.example(*arithmetic_problem(rng)) for _ in range(num_examples)]
  return tokenize(examples, seq_len, pad_id=tokenizer.eos_id, source=name)


def review_data(num_examples: int, seed: int, tokenizer: ByteTokenizer, seq_len: int,
                name: str = "reviews") -> TokenizedData:
  """`num_examples` reviews as tokens (loss on the label word)."""
  rng = np.random.default_rng([seed, 4])
  examples = []
  for _ in range(num_examples):
    text, label = review_example(rng)
    examples.append(tokenizer.example(review_prompt(text), LABELS[label]))
  return tokenize(examples, seq_len, pad_id=tokenizer.eos_id, source=name)


def arithmetic_examples(num_examples: int, seed: int) -> list[tuple[str, str]]:
  """The `(question, solution)` pairs `arithmetic_data(num_examples, seed, ...)` holds."""
  rng = np.random.default_rng([seed, 3])
  return [arithmetic_problem(rng) for _ in range(num_examples)]


def review_examples(num_examples: int, seed: int) -> list[tuple[str, int]]:
  """The `(review, label)` pairs `review_data(num_examples, seed, ...)` holds."""
  rng = np.random.default_rng([seed, 4])
  return [review_example(rng) for _ in range(num_examples)]
