"""The API reference pages, generated from each public package's `__all__`.

`write_api_pages(folder)` writes one reStructuredText page per package of `PACKAGES` into
`folder` (docs/api/, rebuilt by every docs build, not committed): the package's docstring,
then every name of its `__all__` through autodoc. A name added to an `__all__` is therefore
documented by the next build without editing any page, and `check_inventory.py` checks the
built inventory against the same `__all__` lists.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

# The public packages, in the order of the reference.
PACKAGES = (
    "adaprelora_jax",
    "adaprelora_jax.lora",
    "adaprelora_jax.models",
    "adaprelora_jax.train",
    "adaprelora_jax.eval",
    "adaprelora_jax.data",
)


def public_names(package: str) -> tuple[str, ...]:
  """The `__all__` of `package` (imported); a package without one is an error."""
  module = importlib.import_module(package)
  names = getattr(module, "__all__", None)
  if names is None:
    raise ValueError(f"{package} has no __all__: list its public names there")
  return tuple(names)


def _data_doc(package: str, name: str, obj: object) -> str:
  """Text for a public name that is neither a class nor a function (a registry, a type
  alias): its `#:` doc comment in the module that assigns it, else a description."""
  from sphinx.pycode import ModuleAnalyzer  # noqa: PLC0415

  root = package.split(".")[0]
  for mod_name, mod in sorted(sys.modules.items()):
    if not (mod_name == root or mod_name.startswith(root + ".")):
      continue
    if getattr(mod, name, None) is not obj:
      continue
    try:
      docs = ModuleAnalyzer.for_module(mod_name).find_attr_docs()
    except Exception:  # noqa: BLE001 (modules without source: try the next)
      continue
    if ("", name) in docs:
      return "\n".join(docs[("", name)]).strip()
  if isinstance(obj, types.UnionType):
    members = " | ".join(getattr(a, "__name__", repr(a)) for a in obj.__args__)
    return f"The union ``{members}``."
  if isinstance(obj, Mapping):
    keys = ", ".join(f"``{k}``" for k in obj)
    return f"A read-only mapping with the keys {keys}."
  value = repr(obj)
  if len(value) <= 400:
    return f"``{value}``"
  return f"A ``{type(obj).__name__}``."


def _kind(obj: object) -> str:
  """The Python domain's object type of a public name."""
  if inspect.isclass(obj):
    return "exception" if issubclass(obj, BaseException) else "class"
  if callable(obj) and not isinstance(obj, Mapping):
    return "function"
  return "data"


def homes(packages: Sequence[str] = PACKAGES) -> dict[int, str]:
  """`id(obj) -> "package.name"`: where an object exported by several packages is
  documented in full (the package its defining module is in, else the first exporting
  one); the others get a short entry pointing there, so no object is described twice."""
  found: dict[int, tuple[object, list[tuple[str, str]]]] = {}
  for package in packages:
    module = importlib.import_module(package)
    for name in public_names(package):
      obj = getattr(module, name)
      found.setdefault(id(obj), (obj, []))[1].append((package, name))
  result = {}
  for key, (obj, places) in found.items():
    defined_in = getattr(obj, "__module__", None) or ""
    inside = [pl for pl in places
              if defined_in == pl[0] or defined_in.startswith(pl[0] + ".")]
    package, name = max(inside, key=lambda pl: len(pl[0])) if inside else places[0]
    result[key] = f"{package}.{name}"
  return result


def _entry(package: str, name: str, obj: object, home: str | None = None) -> str:
  if home is not None and home != f"{package}.{name}":
    return (f".. py:{_kind(obj)}:: {name}\n\n"
            f"   The same object as :py:obj:`{home}` (documented there).\n")
  kind = _kind(obj)
  if kind == "class":
    return f".. autoclass:: {name}\n   :members:\n   :undoc-members:\n"
  if kind != "data":
    return f".. auto{kind}:: {name}\n"
  doc = _data_doc(package, name, obj)
  body = "".join(f"   {line}\n" if line else "\n" for line in doc.splitlines())
  return f".. py:data:: {name}\n\n{body}"


def page(package: str, home: Mapping[int, str] | None = None) -> str:
  """The reStructuredText page of `package` (`home`: see `homes`)."""
  module = importlib.import_module(package)
  home = home or {}
  title = f"``{package}``"
  lines = [
      title, "=" * len(title), "",
      f".. automodule:: {package}", "   :no-members:", "",
      f".. currentmodule:: {package}", "",
  ]
  for name in public_names(package):
    obj = getattr(module, name)
    lines.append(_entry(package, name, obj, home.get(id(obj))))
  return "\n".join(lines)


def write_api_pages(folder: Path) -> list[Path]:
  """Writes `<package>.rst` for every package (only files whose text changed) and removes
  the pages of packages no longer listed."""
  folder.mkdir(parents=True, exist_ok=True)
  for stale in set(folder.glob("*.rst")) - {folder / f"{p}.rst" for p in PACKAGES}:
    stale.unlink()
  written = []
  home = homes(PACKAGES)
  for package in PACKAGES:
    path = folder / f"{package}.rst"
    text = page(package, home)
    if not path.exists() or path.read_text() != text:
      path.write_text(text)
    written.append(path)
  return written
