"""Finding the `lora_a` / `lora_b` pairs of a parameter tree.

Two sibling leaves (same parent key path) named `lora_a` and `lora_b` form a pair, and
so do siblings `<name>_lora_a` / `<name>_lora_b` (the Qwix naming). A trailing `.value`
of an NNX Variable is dropped from key paths, so `nnx.State` trees pair like plain dicts.

Layout (Flax, as `flax.nnx.LoRA`): `lora_a` has shape `batch + in + (r,)`, `lora_b` has
shape `batch + (r,) + out`; `batch` are independent pairs (stacked layers, experts),
`in` and `out` may each span several axes and are flattened for the math.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

KeyPath = tuple[Any, ...]

_SUFFIX_A = "lora_a"
_SUFFIX_B = "lora_b"


@dataclasses.dataclass(frozen=True)
class LoRADimensionNumbers:
  """How the axes of a LoRA pair are laid out.

  `lora_a` has shape `batch + in + (r,)` and `lora_b` has shape `batch + (r,) + out`.

  Attributes:
    batch_axes: the number of leading batch axes (stacked layers, experts); each index
      is an independent pair. The remaining axes of `lora_a` before the rank are input
      axes and the axes of `lora_b` after the rank are output axes; several of either are
      flattened into one for the math.

  Example:
    >>> import adaprelora_jax as apl
    >>> apl.LoRADimensionNumbers(batch_axes=1)
    LoRADimensionNumbers(batch_axes=1)
  """

  batch_axes: int = 0

  def __post_init__(self):
    if isinstance(self.batch_axes, bool) or not isinstance(self.batch_axes, int):
      raise TypeError(
          f"LoRADimensionNumbers.batch_axes must be an int, got {self.batch_axes!r}.")
    if self.batch_axes < 0:
      raise ValueError(
          f"LoRADimensionNumbers.batch_axes must be >= 0, got {self.batch_axes}.")


DimensionNumbersOrFn = Union[
    None, LoRADimensionNumbers, Any, Callable[[Any], Any]]
LoRAScaleOrFn = Union[float, jax.Array, Callable[[KeyPath], float]]


def is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def unwrap(tree: Any) -> Any:
  """The tree with every NNX Variable replaced by its plain value (metadata dropped)."""
  return jax.tree.map(
      lambda x: x.get_value() if is_variable(x) else x, tree, is_leaf=is_variable)


def declared_specs(tree: Any) -> list[tuple | None]:
  """Per leaf of `unwrap(tree)`: the partition spec its NNX Variable declares, or None.

  `nnx.Optimizer` hands `init` Variables whose `out_sharding` metadata is the only
  sharding information a tracer on Auto mesh axes carries (e.g. under a jitted init).
  """
  leaves = jax.tree.leaves(tree, is_leaf=is_variable)
  if not any(is_variable(v) for v in leaves):
    return [None] * len(leaves)
  specs = jax.tree.leaves(nnx.get_partition_spec(tree), is_leaf=is_variable)
  return [tuple(spec.get_value()) if is_variable(v) and v.get_metadata().get("out_sharding")
          is not None else None for v, spec in zip(leaves, specs)]


def _strip_value(path: KeyPath) -> KeyPath:
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    return path[:-1]
  return path


def _key_name(key: Any) -> str | None:
  if isinstance(key, jax.tree_util.DictKey):
    return key.key if isinstance(key.key, str) else None
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  return None


def _factor_role(path: KeyPath) -> tuple[str, str] | None:
  """('a' or 'b', prefix) if the leaf is named like a LoRA factor, else None."""
  name = _key_name(path[-1]) if path else None
  if name is None:
    return None
  for role, suffix in (("a", _SUFFIX_A), ("b", _SUFFIX_B)):
    if name == suffix:
      return role, ""
    if name.endswith("_" + suffix):
      return role, name[: -len(suffix) - 1]
  return None


def path_str(path: KeyPath) -> str:
  return jax.tree_util.keystr(tuple(path)) or "<root>"


_HOW_TO_FIX = (
    "AdaPreLoRA and the LoRA optimizers of this package update only `lora_a`/`lora_b` "
    "pairs (or Qwix-style `<name>_lora_a`/`<name>_lora_b` siblings). Give the optimizer "
    "only the LoRA factors (e.g. `nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`), or route "
    "other trainable leaves to another optimizer with `optax.partition` (or hide them with "
    "`optax.masked`).")


def _find_pairs(paths: Sequence[KeyPath]) -> tuple[list[tuple[int, int]], list[int]]:
  """Indices (a, b) of the pairs, in tree order, and the indices of unpaired leaves."""
  groups: dict[tuple[KeyPath, str], dict[str, int]] = {}
  unpaired = []
  for i, path in enumerate(paths):
    role = _factor_role(path)
    if role is None:
      unpaired.append(i)
      continue
    group = groups.setdefault((tuple(path[:-1]), role[1]), {})
    if role[0] in group:  # e.g. `lora_a` and `['lora_a']` under one parent.
      unpaired.append(i)
    else:
      group[role[0]] = i
  pairs = []
  for group in groups.values():
    if "a" in group and "b" in group:
      pairs.append((group["a"], group["b"]))
    else:
      unpaired.extend(group.values())
  pairs.sort(key=lambda ab: min(ab))
  return pairs, sorted(unpaired)


def _flatten(tree: Any) -> tuple[list[KeyPath], list[Any], Any]:
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [_strip_value(tuple(p)) for p, _ in leaves_with_path]
  return paths, [leaf for _, leaf in leaves_with_path], treedef


def lora_pairs(tree: Any) -> list[tuple[KeyPath, KeyPath]]:
  """The `(lora_a path, lora_b path)` of every LoRA pair of `tree`, in tree order.

  Paths are `jax.tree_util` key paths with the trailing `.value` of NNX Variables
  dropped. Leaves that are not part of a pair are ignored here (the optimizers reject
  them at `init`).

  Args:
    tree: any pytree: a dict, an `nnx.State`, Linen params, a registered pytree.

  Returns:
    A list of `(lora_a key path, lora_b key path)` tuples.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import adaprelora_jax as apl
    >>> params = {'q': {'lora_a': jnp.zeros((8, 2)), 'lora_b': jnp.zeros((2, 4))},
    ...           'up_lora_a': jnp.zeros((8, 2)), 'up_lora_b': jnp.zeros((2, 6))}
    >>> [(jax.tree_util.keystr(a), jax.tree_util.keystr(b))
    ...  for a, b in apl.lora_pairs(params)]
    [("['q']['lora_a']", "['q']['lora_b']"), ("['up_lora_a']", "['up_lora_b']")]
  """
  paths, _, _ = _flatten(tree)
  pairs, _ = _find_pairs(paths)
  return [(paths[a], paths[b]) for a, b in pairs]


@dataclasses.dataclass(frozen=True)
class PairLayout:
  """Static description of one LoRA pair: where it is and how its axes are laid out.

  The einsum subscripts name batch axes `A..H`, input axes `n, p, q, ...`, output axes
  `m, u, v, ...`; `k`, `l`, `j` are reserved for the rank (and the 2r stacked rank).
  """

  a_index: int  # Position of `lora_a` among the flattened leaves.
  b_index: int  # Position of `lora_b` among the flattened leaves.
  a_path: KeyPath
  b_path: KeyPath
  batch_shape: tuple[int, ...]
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  rank: int

  @property
  def parent(self) -> KeyPath:
    return self.a_path[:-1]

  @property
  def n(self) -> int:
    return math.prod(self.in_shape)

  @property
  def m(self) -> int:
    return math.prod(self.out_shape)

  @property
  def batch_size(self) -> int:
    return math.prod(self.batch_shape)

  @property
  def nb(self) -> int:
    return len(self.batch_shape)

  @property
  def batch(self) -> str:
    return "ABCDEFGH"[: self.nb]

  @property
  def inp(self) -> str:
    return "npqstwxy"[: len(self.in_shape)]

  @property
  def out(self) -> str:
    return "muvzbcde"[: len(self.out_shape)]

  @property
  def in_axes(self) -> tuple[int, ...]:
    """Axes of `lora_a` (and of the column statistics) that are input axes."""
    return tuple(range(self.nb, self.nb + len(self.in_shape)))

  @property
  def out_axes(self) -> tuple[int, ...]:
    """Axes of the row statistics (`lora_b` without its rank axis) that are output axes."""
    return tuple(range(self.nb, self.nb + len(self.out_shape)))


def _shape_dtype(leaf: Any, path: KeyPath) -> tuple[tuple[int, ...], Any]:
  shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
  if shape is None or dtype is None or isinstance(leaf, (str, bytes)):
    raise ValueError(
        f"Leaf {path_str(path)} is {type(leaf).__name__}, not an array: LoRA factors "
        "must be arrays, jax.ShapeDtypeStruct or NNX Variables holding arrays.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"LoRA factor {path_str(path)} has dtype {np.dtype(dtype).name}; factors must "
        "be floating point (float32, bfloat16, float16 or float64).")
  return tuple(shape), dtype


def _resolve_dimension_numbers(dimension_numbers, tree, num_leaves):
  """One `LoRADimensionNumbers` or None per flattened leaf."""
  if callable(dimension_numbers) and not isinstance(dimension_numbers, LoRADimensionNumbers):
    dimension_numbers = dimension_numbers(tree)
  if dimension_numbers is None or isinstance(dimension_numbers, LoRADimensionNumbers):
    return [dimension_numbers] * num_leaves
  is_dn = lambda x: x is None or isinstance(x, LoRADimensionNumbers)
  try:
    full = jax.tree.map(
        lambda dn, sub: jax.tree.map(lambda _: dn, sub), dimension_numbers, tree,
        is_leaf=is_dn)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "dimension_numbers must be None, a LoRADimensionNumbers, a pytree prefix of the "
        f"parameters with LoRADimensionNumbers (or None) leaves, or a callable of the "
        f"parameters returning one of those; matching it to the parameters failed: {e}"
    ) from e
  leaves = jax.tree.leaves(full, is_leaf=is_dn)
  if len(leaves) != num_leaves:
    raise ValueError("dimension_numbers does not match the structure of the parameters.")
  return leaves


def pair_layouts(
    tree: Any,
    dimension_numbers: DimensionNumbersOrFn = None,
    *,
    who: str = "adaprelora",
) -> tuple[list[PairLayout], Any]:
  """Validates `tree` and describes each of its LoRA pairs.

  Args:
    tree: the parameters (arrays, ShapeDtypeStructs or NNX Variables); masked holes
      (`optax.MaskedNode`, None) are empty subtrees and pass through.
    dimension_numbers: see `LoRADimensionNumbers`; None infers one input axis.
    who: the optimizer's name, for error messages.

  Returns:
    The layouts, and the treedef of the flattened (Variable-unwrapped) tree.

  Raises:
    ValueError: a leaf that is not in a pair, a pair with inconsistent shapes, a
      non-array or integer leaf, or a tree without any pair.
  """
  tree = unwrap(tree)
  paths, leaves, treedef = _flatten(tree)
  if not leaves:
    raise ValueError(f"{who}: the parameter tree has no leaves, hence no LoRA pair. "
                     + _HOW_TO_FIX)
  pairs, unpaired = _find_pairs(paths)
  if unpaired:
    names = ", ".join(path_str(paths[i]) for i in unpaired[:8])
    more = f" (and {len(unpaired) - 8} more)" if len(unpaired) > 8 else ""
    raise ValueError(f"{who}: these leaves are not part of a lora_a/lora_b pair: "
                     f"{names}{more}. " + _HOW_TO_FIX)
  dims = _resolve_dimension_numbers(dimension_numbers, tree, len(leaves))
  layouts = []
  for ia, ib in pairs:
    pa, pb = paths[ia], paths[ib]
    (sa, _), (sb, _) = _shape_dtype(leaves[ia], pa), _shape_dtype(leaves[ib], pb)
    dn_a, dn_b = dims[ia], dims[ib]
    if dn_a != dn_b:
      raise ValueError(f"{who}: {path_str(pa)} and {path_str(pb)} got different "
                       f"dimension_numbers ({dn_a} vs {dn_b}).")
    nb = len(sa) - 2 if dn_a is None else dn_a.batch_axes
    where = f"{who}: LoRA pair {path_str(pa)} {sa} / {path_str(pb)} {sb}"
    if nb < 0 or len(sa) < nb + 2 or len(sb) < nb + 2:
      raise ValueError(
          f"{where}: with {max(nb, 0)} batch axes lora_a needs shape batch + in + (r,) "
          "and lora_b batch + (r,) + out, each with at least one in/out axis. "
          "Pass dimension_numbers=LoRADimensionNumbers(batch_axes=...) if the layout "
          "differs.")
    if sa[:nb] != sb[:nb]:
      raise ValueError(f"{where}: the batch axes disagree ({sa[:nb]} vs {sb[:nb]}).")
    if sa[-1] != sb[nb]:
      raise ValueError(
          f"{where}: the ranks disagree (lora_a's last axis is {sa[-1]}, lora_b's axis "
          f"{nb} is {sb[nb]}). Expected lora_a (..., in, r) and lora_b (..., r, out).")
    if sa[-1] == 0 or 0 in sa or 0 in sb:
      raise ValueError(f"{where}: empty factors are not supported.")
    layouts.append(PairLayout(
        a_index=ia, b_index=ib, a_path=pa, b_path=pb, batch_shape=sa[:nb],
        in_shape=sa[nb:-1], out_shape=sb[nb + 1:], rank=sa[-1]))
  return layouts, treedef


def resolve_lora_scales(lora_scale: LoRAScaleOrFn, layouts: Sequence[PairLayout]) -> list[Any]:
  """The LoRA scale `s` of each pair (a number, or a traced scalar under inject_hyperparams)."""
  scales = []
  for layout in layouts:
    s = lora_scale(layout.parent) if callable(lora_scale) else lora_scale
    if isinstance(s, (int, float, np.number)) and not (math.isfinite(s) and s > 0):
      raise ValueError(
          f"lora_scale for {path_str(layout.parent)} is {s!r}; it must be a finite "
          "positive number (alpha / r for the usual LoRA parameterization).")
    scales.append(s)
  return scales
