"""Sphinx configuration of the adaprelora-jax documentation.

Build (warnings are errors, as in CI):
  python -m sphinx -W --keep-going -b html docs docs/_build/html
  python docs/check_inventory.py docs/_build/html
"""

from __future__ import annotations

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
# Not pages: build output, the benchmarks' raw JSON, the generator and checker scripts.
exclude_patterns = ["_build", "benchmarks", "**.json", "README.md"]

# Markdown pages: $...$ / $$...$$ math, anchors for ## and ### headings (page.md#anchor).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# The docstrings are Google style ("Args:", "Returns:") with `code` in single backticks.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are documented once
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
