"""Text the package generates itself, so the demo runs offline: restaurant descriptions
to pre-train the package base on, and an E2E-style data-to-text task (meaning
representations and templated sentences) to adapt it to with LoRA.

Both are deterministic functions of a seed. The pre-training text and the task's
targets use different sentence templates: the base knows the words, LoRA learns the task.

>>> mr, text = task_pair(np.random.default_rng(0))
>>> mr.startswith("name[") and text.endswith(".")
True
"""

from __future__ import annotations

import numpy as np

from adaprelora_jax.train.data import ByteTokenizer, TokenizedData, render_mr, tokenize

NAMES = ("The Eagle", "The Mill", "Loch Fyne", "The Punter", "Zizzi", "Aromi", "Cotto",
         "Green Man", "The Phoenix", "Blue Spice", "The Vaults", "Alimentum", "Bibimbap House",
         "Browns Cambridge", "Clowns", "Fitzbillies", "Giraffe", "Midsummer House",
         "Strada", "Taste of Cambridge", "The Cricketers", "The Dumpling Tree",
         "The Golden Curry", "The Olive Grove", "The Plough", "The Rice Boat", "Wildwood",
         "The Wrestlers", "Travellers Rest Beefeater", "Cocum")
NEAR = ("Burger King", "Cafe Sicilia", "The Portland Arms", "All Bar One", "Raja Indian Cuisine",
        "The Bakers", "Crowne Plaza Hotel", "Express by Holiday Inn", "Rainbow Vegetarian Cafe",
        "Yippee Noodle Bar", "Ranch", "The Sorrento", "Avalon", "Clare Hall")
EAT_TYPES = ("coffee shop", "pub", "restaurant")
FOODS = ("English", "French", "Italian", "Indian", "Chinese", "Japanese", "Fast food")
PRICES = ("cheap", "moderate", "high", "less than £20", "£20-25", "more than £30")
RATINGS = ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5")
AREAS = ("city centre", "riverside")
FAMILY = ("yes", "no")
# E2E's attribute order.
KEYS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly",
        "near")
_POOLS = {"eatType": EAT_TYPES, "food": FOODS, "priceRange": PRICES,
          "customer rating": RATINGS, "area": AREAS, "familyFriendly": FAMILY, "near": NEAR}


def _attributes(rng: np.random.Generator) -> dict[str, str]:
  """A restaurant: a name and 1 to 4 other attributes."""
  optional = list(_POOLS)
  chosen = rng.choice(len(optional), size=int(rng.integers(1, 5)), replace=False)
  attrs = {"name": NAMES[rng.integers(len(NAMES))]}
  for i in sorted(chosen):
    key = optional[i]
    attrs[key] = _POOLS[key][rng.integers(len(_POOLS[key]))]
  return attrs


def _food(value: str) -> str:
  return "fast food" if value == "Fast food" else f"{value} food"


def _price(value: str) -> str:
  return f"{value} prices" if value in ("cheap", "moderate", "high") else f"prices {value}"


def _rating(value: str) -> str:
  return f"a {value} customer rating" if "out of" not in value else f"a rating of {value}"


# The task's targets: one clause per attribute, in E2E order.
def describe(attrs: dict[str, str]) -> str:
  """The task's target sentence for `attrs` (deterministic)."""
  kind = attrs.get("eatType", "place")
  text = f"{attrs['name']} is a {kind}"
  if "food" in attrs:
    text += f" serving {_food(attrs['food'])}"
  if "area" in attrs:
    text += f" in the {attrs['area']}"
  if "near" in attrs:
    text += f" near {attrs['near']}"
  extras = []
  if "priceRange" in attrs:
    extras.append(_price(attrs["priceRange"]))
  if "customer rating" in attrs:
    extras.append(_rating(attrs["customer rating"]))
  text += "."
  if extras:
    text += " It has " + " and ".join(extras) + "."
  if "familyFriendly" in attrs:
    text += (" It is family friendly." if attrs["familyFriendly"] == "yes"
             else " It is not family friendly.")
  return text


def task_pair(rng: np.random.Generator) -> tuple[str, str]:
  """An E2E-format meaning representation and its target text."""
  attrs = _attributes(rng)
  mr = ", ".join(f"{k}[{attrs[k]}]" for k in KEYS if k in attrs)
  return mr, describe(attrs)


# The pre-training text: free-form sentences in other templates.
_SENTENCES = (
    lambda a, r: f"If you like {_food(a['food'])}, try {a['name']}.",
    lambda a, r: f"{a['name']} can be found in the {a['area']}.",
    lambda a, r: f"Near {a['near']} there is a {a['eatType']} called {a['name']}.",
    lambda a, r: f"Customers give {a['name']} {_rating(a['customer rating'])}.",
    lambda a, r: f"At {a['name']} you pay {a['priceRange']}.",
    lambda a, r: (f"{a['name']} welcomes children." if a["familyFriendly"] == "yes"
                  else f"{a['name']} is for adults only."),
    lambda a, r: f"We ate {_food(a['food'])} at {a['name']} by the {a['area']}.",
    lambda a, r: f"The {a['eatType']} {a['name']} is close to {a['near']}.",
)


def text_document(rng: np.random.Generator) -> str:
  """A short paragraph about one restaurant."""
  attrs = {"name": NAMES[rng.integers(len(NAMES))]}
  for key, pool in _POOLS.items():
    attrs[key] = pool[rng.integers(len(pool))]
  picks = rng.choice(len(_SENTENCES), size=int(rng.integers(1, 4)), replace=False)
  return " ".join(_SENTENCES[i](attrs, rng) for i in picks) + "\n"


def task_data(num_examples: int, seed: int, tokenizer: ByteTokenizer, seq_len: int,
              name: str = "generated task") -> TokenizedData:
  """`num_examples` task pairs as tokens (loss on the target)."""
  rng = np.random.default_rng([seed, 1])
  examples = []
  for _ in range(num_examples):
    mr, text = task_pair(rng)
    examples.append(tokenizer.example(render_mr(mr), text))
  return tokenize(examples, seq_len, pad_id=tokenizer.eos_id, source=name)


def text_data(num_rows: int, seed: int, tokenizer: ByteTokenizer, seq_len: int) -> TokenizedData:
  """`num_rows` consecutive windows of generated text (loss on every token)."""
  rng = np.random.default_rng([seed, 2])
  need = num_rows * (seq_len + 1)
  chunks, size = [], 0
  while size < need:
    doc = tokenizer.encode(text_document(rng))
    chunks.append(doc)
    size += len(doc)
  stream = np.concatenate([np.asarray(c, np.int32) for c in chunks])[:need]
  tokens = stream.reshape(num_rows, seq_len + 1)
  mask = np.ones((num_rows, seq_len), np.float32)
  return TokenizedData(tokens, mask, num_rows, 0, 0, 0)
