"""The documentation tooling: the API pages cover every `__all__`, the inventory check
fails on a missing name, and the README's test command is the one CI runs.

The docs build itself runs in CI before pytest (README: the test command); it is not
repeated here.
"""

import sys
import uuid
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import api_pages  # noqa: E402
import check_inventory  # noqa: E402


def _write_inventory(path: Path, names: list[str]) -> Path:
  """An `objects.inv` in Sphinx's version-2 format listing `names`, written by hand."""
  body = "".join(f"{n} py:{'function' if '.' in n else 'module'} 1 api.html#$ -\n"
                 for n in names)
  path.write_bytes(b"# Sphinx inventory version 2\n# Project: fake\n# Version: 0\n"
                   b"# The remainder of this file is compressed using zlib.\n"
                   + zlib.compress(body.encode()))
  return path


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
  """A package `name` with `__all__ = ("present", "absent")`, importable for the test."""
  name = f"docs_fake_{uuid.uuid4().hex[:8]}"
  (tmp_path / name).mkdir()
  (tmp_path / name / "__init__.py").write_text(
      'def present():\n  """Here."""\n\n\ndef absent():\n  """Not documented."""\n\n\n'
      '__all__ = ("present", "absent")\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  yield name
  sys.modules.pop(name, None)


def test_check_fails_listing_each_missing_name(fake_package, tmp_path, capsys):
  inv = _write_inventory(tmp_path / "objects.inv", [fake_package, f"{fake_package}.present"])
  assert check_inventory.main([str(inv), "--packages", fake_package]) == 1
  err = capsys.readouterr().err
  assert f"{fake_package}.absent" in err
  assert f"{fake_package}.present" not in err

  # A built folder holding a complete inventory passes; a missing package page fails.
  _write_inventory(tmp_path / "objects.inv",
                   [fake_package, f"{fake_package}.present", f"{fake_package}.absent"])
  assert check_inventory.main([str(tmp_path), "--packages", fake_package]) == 0
  _write_inventory(tmp_path / "objects.inv",
                   [f"{fake_package}.present", f"{fake_package}.absent"])
  assert check_inventory.missing_names(check_inventory.read_inventory(tmp_path),
                                       [fake_package]) == [fake_package]


def test_check_without_an_inventory_says_to_build(tmp_path, capsys):
  assert check_inventory.main([str(tmp_path)]) == 2
  assert "build the docs first" in capsys.readouterr().err


def test_package_without_all_is_an_error(tmp_path, monkeypatch):
  name = f"docs_fake_{uuid.uuid4().hex[:8]}"
  (tmp_path / f"{name}.py").write_text("x = 1\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ValueError, match="has no __all__"):
    api_pages.public_names(name)
  sys.modules.pop(name, None)


def test_api_pages_document_every_public_name(fake_package):
  page = api_pages.page(fake_package)
  assert ".. autofunction:: present" in page and ".. autofunction:: absent" in page
  for package in api_pages.PACKAGES:
    page = api_pages.page(package)
    assert f".. automodule:: {package}" in page
    directives = {line.split("::")[1].strip() for line in page.splitlines()
                  if line.startswith(".. ") and "::" in line}
    assert set(api_pages.public_names(package)) <= directives, package
  # A registry (not a class or function) gets its `#:` doc comment.
  assert "optimizers[name](learning_rate" in api_pages.page("adaprelora_jax")


def test_object_exported_twice_is_documented_once(tmp_path, monkeypatch):
  """Documented in full where it is defined; the other package's entry points there."""
  name = f"docs_fake_{uuid.uuid4().hex[:8]}"
  (tmp_path / name / "sub").mkdir(parents=True)
  (tmp_path / name / "sub" / "__init__.py").write_text(
      'def shared():\n  """Defined here."""\n\n\n__all__ = ("shared",)\n')
  (tmp_path / name / "__init__.py").write_text(
      f"from {name}.sub import shared\n\n__all__ = ('shared',)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  home = api_pages.homes([name, f"{name}.sub"])
  assert list(home.values()) == [f"{name}.sub.shared"]
  assert ".. autofunction:: shared" in api_pages.page(f"{name}.sub", home)
  alias = api_pages.page(name, home)
  assert ".. py:function:: shared" in alias and f"`{name}.sub.shared`" in alias
  assert "autofunction" not in alias
  for module in (name, f"{name}.sub"):
    sys.modules.pop(module, None)


def test_readme_and_getting_started_test_command_is_what_ci_runs():
  ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.startswith("python3 -m venv")]
  assert len(ci) == 1
  # pytest last, on both cores (pytest-xdist, one file per worker at a time).
  assert "python -m sphinx -W" in ci[0] and ci[0].endswith("python -m pytest -n 2 --dist loadfile")
  assert ci[0] in (ROOT / "README.md").read_text()
  assert ci[0] in (ROOT / "docs" / "getting_started.md").read_text()
