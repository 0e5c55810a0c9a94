"""Fails unless every name of each public package's `__all__` is in the built docs.

Reads the `objects.inv` a Sphinx build wrote (the inventory other projects' intersphinx
would load) and lists every `<package>.<name>` of each package's `__all__`, and every
package itself, that it lacks. Run after the build, as CI does:

  python -m sphinx -W -q -b html docs docs/_build/html
  python docs/check_inventory.py docs/_build/html

Exit status 0 when nothing is missing, 1 (with the missing names) otherwise, 2 when the
inventory cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package

import api_pages  # noqa: E402


def read_inventory(path: Path) -> set[str]:
  """The Python object names (`py:*` entries) of an `objects.inv`, or of the one in the
  folder `path` (a built HTML folder)."""
  from sphinx.util.inventory import InventoryFile  # noqa: PLC0415

  path = Path(path)
  if path.is_dir():
    path = path / "objects.inv"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no objects.inv; build the docs first "
                            "(python -m sphinx -b html docs docs/_build/html)")
  with path.open("rb") as stream:
    inventory = InventoryFile.load(stream, "", lambda *parts: "/".join(parts))
  return {name for kind, entries in inventory.items() if kind.startswith("py:")
          for name in entries}


def missing_names(documented: set[str], packages: Iterable[str]) -> list[str]:
  """Each package and each `<package>.<name>` of its `__all__` not in `documented`."""
  missing = []
  for package in packages:
    for name in (package, *(f"{package}.{n}" for n in api_pages.public_names(package))):
      if name not in documented:
        missing.append(name)
  return missing


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("inventory", type=Path,
                      help="the built HTML folder (docs/_build/html) or its objects.inv")
  parser.add_argument("--packages", default=",".join(api_pages.PACKAGES),
                      help="comma-separated packages to check (default: %(default)s)")
  args = parser.parse_args(argv)
  packages = [p for p in args.packages.split(",") if p]
  try:
    documented = read_inventory(args.inventory)
  except (OSError, ValueError) as e:
    print(f"check_inventory: cannot read the inventory: {e}", file=sys.stderr)
    return 2
  missing = missing_names(documented, packages)
  if missing:
    print(f"check_inventory: {len(missing)} public names missing from {args.inventory} "
          "(add them to the API pages, docs/api_pages.py):", file=sys.stderr)
    for name in missing:
      print(f"  {name}", file=sys.stderr)
    return 1
  count = sum(len(api_pages.public_names(p)) for p in packages)
  print(f"check_inventory: all {count} public names of {len(packages)} packages documented")
  return 0


if __name__ == "__main__":
  sys.exit(main())
