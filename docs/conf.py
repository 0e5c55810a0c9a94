"""Sphinx configuration of the adaprelora-jax documentation.

Build (warnings are errors, as in CI):
  python -m sphinx -W --keep-going -b html docs docs/_build/html
  python docs/check_inventory.py docs/_build/html
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the checkout's package, not an installed copy
sys.path.insert(0, str(DOCS))

import api_pages  # noqa: E402

project = "adaprelora-jax"
author = "adaprelora-jax authors"
copyright = "2026, adaprelora-jax authors"  # noqa: A001
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# Not pages: the build output, the benchmarks' raw JSON and plots (docs/benchmarks/).
exclude_patterns = ["_build", "benchmarks", "**.json", "README.md"]

# Markdown pages: $...$ / $$...$$ math, anchors for ## and ### headings (page.md#anchor).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# The docstrings are Google style ("Args:", "Returns:") with `code` in single backticks.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are documented once
napoleon_attr_annotations = False  # their types are in the signature
default_role = "code"
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
add_module_names = False

# No network at build time: no intersphinx; MathJax is only referenced by the HTML.
html_theme = "alabaster"
html_title = "adaprelora-jax"
html_theme_options = {"description": "AdaPreLoRA and the LoRA optimizer family in JAX"}

api_pages.write_api_pages(DOCS / "api")

UNLISTED = "<!-- unlisted pages -->"


def unlisted_pages(index_text: str) -> list[str]:
  """The top-level pages (docs/*.md) that no toctree line of index.md names, sorted."""
  listed = set(re.findall(r"^([\w/-]+)\s*$", index_text, re.M))
  return sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in listed | {"index"})


def _fill_unlisted(app, docname, source):
  """Fills index.md's "More pages" toctree with the pages no other toctree names, so a new
  docs/*.md page (benchmark scripts and other work add them) is in the site, in no toctree
  twice, without editing index.md; when there are none the toctree stays empty."""
  if docname == "index":
    source[0] = source[0].replace(UNLISTED, "\n".join(unlisted_pages(source[0])))


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """NamedTuple fields ("Alias for field number k"): their docstring's Attributes say more."""
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return None


def _init_signature(app, what, name, obj, options, signature, return_annotation):
  """Flax NNX modules: the constructor's signature, not the metaclass's `(*args, **kwargs)`."""
  if what == "class" and signature == "(*args: Any, **kwargs: Any)":
    import inspect  # noqa: PLC0415

    from sphinx.ext.autodoc.preserve_defaults import update_defvalue  # noqa: PLC0415
    from sphinx.util.inspect import stringify_signature  # noqa: PLC0415

    update_defvalue(app, obj.__init__, False)  # defaults as written (`jnp.float32`)
    init = inspect.signature(obj.__init__)
    params = list(init.parameters.values())[1:]  # drop self
    return stringify_signature(init.replace(parameters=params),
                               show_return_annotation=False), return_annotation
  return None


def setup(app):
  app.connect("autodoc-process-signature", _init_signature)
  app.connect("source-read", _fill_unlisted)
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
  # Re-read index.md on every build: its page list depends on the other files.
  app.connect("env-get-outdated", lambda app, env, added, changed, removed: ["index"])
