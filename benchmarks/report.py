"""Writing benchmark results into docs/benchmarks.md: each script owns named sections.

A section is the text between `<!-- BEGIN name -->` and `<!-- END name -->` in
docs/benchmarks.md; `write_section` replaces it (or appends it at the end), stamps it with
the machine, the versions and the command that made it, and writes the raw results as
`docs/benchmarks/<name>.json` beside the page. No table on that page is edited by hand.

>>> text = replace_section("intro\\n", "speed", "| a |\\n")
>>> replace_section(text, "speed", "| b |\\n").count("BEGIN speed")
1
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
RAW = ROOT / "docs" / "benchmarks"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


def machine() -> dict[str, Any]:
  """Where the numbers were measured: processor, cores, devices, package versions."""
  import jax  # noqa: PLC0415 (a doctest of this module should not start JAX)

  versions = {}
  for name in _PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  device = jax.devices()[0]
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "device_count": jax.device_count(),
      "python": platform.python_version(),
      "versions": versions,
      # Other work on the machine inflates times: the 1-minute load average when written.
      "load_average": round(os.getloadavg()[0], 2),
  }


def command() -> str:
  """The command line that is running, as a user would type it from the repository root."""
  script = Path(sys.argv[0])
  try:
    script = script.resolve().relative_to(ROOT)
  except ValueError:
    pass
  return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def stamp(info: dict[str, Any], cmd: str) -> str:
  """The line under a table: command, machine, versions."""
  versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
  load = (f", load average {info['load_average']:g} when written"
          if info.get("load_average") is not None else "")
  return (f"*Made by `{cmd}` on {info['device_count']} x {info['device']} "
          f"({info['backend']}, {info['cpu_count']} CPU cores, {info['processor']}{load}); "
          f"{versions}.*\n")


def replace_section(page: str, name: str, body: str) -> str:
  """`page` with section `name` set to `body` (appended when it is not there yet)."""
  begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
  block = f"{begin}\n{body.rstrip()}\n{end}"
  pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
  if pattern.search(page):
    return pattern.sub(lambda _: block, page)
  return page.rstrip("\n") + ("\n\n" if page.strip() else "") + block + "\n"


def write_section(name: str, markdown: str, results: Any, *, page: Path = PAGE,
                  raw_dir: Path = RAW) -> Path:
  """Writes section `name` of the page (the markdown, then the stamp) and its JSON.

  Args:
    name: the section's name, also the JSON file's stem (`[a-z0-9_]+`).
    markdown: the section's tables, prose and image links.
    results: anything `json.dumps` takes: the raw numbers behind the tables.
    page: the Markdown page (docs/benchmarks.md).
    raw_dir: the folder of the JSON files (docs/benchmarks/).

  Returns:
    The JSON file written.
  """
  if not re.fullmatch(r"[a-z0-9_]+", name):
    raise ValueError(f"section name {name!r}: use [a-z0-9_]+")
  info, cmd = machine(), command()
  raw_dir.mkdir(parents=True, exist_ok=True)
  raw = raw_dir / f"{name}.json"
  raw.write_text(json.dumps({"command": cmd, "machine": info, "results": results},
                            indent=1, default=float) + "\n")
  body = (f"{markdown.rstrip()}\n\n{stamp(info, cmd)}"
          f"Raw results: [`{raw.relative_to(page.parent).as_posix()}`]"
          f"({raw.relative_to(page.parent).as_posix()}).\n")
  text = page.read_text() if page.exists() else "# Benchmarks\n"
  page.write_text(replace_section(text, name, body))
  return raw
