"""`LoRAConfig`: which linear layers get an adapter, its rank and its scale (PEFT's
`LoraConfig` fields, with the same meaning).

>>> config = LoRAConfig(rank=8, alpha=16, target_modules=["q_proj", "v_proj"])
>>> config.scale
2.0
>>> LoRAConfig(rank=16, alpha=16, target_modules="all-linear", use_rslora=True).scale
4.0
>>> config.matches("model.layers.0.self_attn.q_proj"), config.matches("model.layers.0.mlp.up_proj")
(True, False)
>>> LoRAConfig(8, 8, r"model\\.layers\\.\\d+\\.mlp\\..*").matches("model.layers.3.mlp.up_proj")
True
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

# PEFT's shorthand for every linear layer except the output head.
ALL_LINEAR = "all-linear"


def _as_targets(value, field: str) -> str | tuple[str, ...] | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Sequence | set | frozenset):
    names = tuple(sorted(value)) if isinstance(value, set | frozenset) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
      raise ValueError(f"{field} must be a regex or a non-empty list of module names, "
                       f"got {value!r}")
    return names
  raise TypeError(f"{field} must be a regex string or a list of module names, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """A LoRA adapter for the linear layers named by `target_modules`.

  The adapted layer computes `y = x @ (W0 + s * lora_a @ lora_b) (+ bias)`, with
  `s = alpha / rank`, or `alpha / sqrt(rank)` with rsLoRA (Kalajdzievski, 2023).

  Target matching follows PEFT, on the Hugging Face module name (`module_name`): a list
  selects the modules whose name equals an entry or ends with `"." + entry` (`"q_proj"`,
  `"attn.c_proj"`); a single string is a regex that must match the whole name
  (`re.fullmatch`); `"all-linear"` selects every linear layer except the output head.
  """

  # Rank r of the factors lora_a (in, r) and lora_b (r, out).
  rank: int
  # The scale numerator: s = alpha / rank (alpha / sqrt(rank) with use_rslora).
  alpha: float
  # Module names (a list, matched as name suffixes) or one regex (full match).
  target_modules: str | tuple[str, ...]
  # Dropout rate on the adapter's input (PEFT's lora_dropout); 0 disables it.
  dropout: float = 0.0
  # Rank-stabilised scale alpha / sqrt(rank).
  use_rslora: bool = False
  # Modules never adapted, matched like target_modules (PEFT's exclude_modules).
  exclude_modules: str | tuple[str, ...] | None = None

  def __post_init__(self):
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
      raise ValueError(f"rank must be a positive int, got {self.rank!r}")
    if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)
            and self.alpha > 0):
      raise ValueError(f"alpha must be a finite positive number, got {self.alpha!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
    object.__setattr__(self, "target_modules",
                       _as_targets(self.target_modules, "target_modules"))
    if self.target_modules is None:
      raise ValueError("target_modules is required (module names or a regex)")
    object.__setattr__(self, "exclude_modules",
                       _as_targets(self.exclude_modules, "exclude_modules"))
    for field in ("target_modules", "exclude_modules"):
      pattern = getattr(self, field)
      if isinstance(pattern, str) and pattern != ALL_LINEAR:
        try:
          re.compile(pattern)
        except re.error as e:
          raise ValueError(f"{field} {pattern!r} is not a valid regex: {e}") from e

  @property
  def scale(self) -> float:
    """The LoRA scale s: `alpha / rank`, or `alpha / sqrt(rank)` with rsLoRA."""
    return float(self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank))

  def matches(self, name: str, *, is_output_head: bool = False) -> bool:
    """Whether the module called `name` (dotted, e.g. `model.layers.0.self_attn.q_proj`)
    is a target; `is_output_head` excludes it from `"all-linear"`."""
    if self.exclude_modules is not None and _match(self.exclude_modules, name):
      return False
    if self.target_modules == ALL_LINEAR:
      return not is_output_head
    return _match(self.target_modules, name)


def _match(pattern: str | tuple[str, ...], name: str) -> bool:
  if isinstance(pattern, str):
    return re.fullmatch(pattern, name) is not None
  return any(name == t or name.endswith("." + t) for t in pattern)
