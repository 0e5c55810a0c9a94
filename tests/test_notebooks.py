"""The notebooks: stored without outputs, their generated cells in agreement with
pyproject.toml, and executed top to bottom (nbclient, this interpreter's ipykernel, working
directory notebooks/) without a cell error."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def _build():
  spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


build = _build()


def _cells(name: str) -> list[dict]:
  return json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
  return "".join(cell["source"])


@pytest.mark.parametrize("name", build.NOTEBOOKS)
def test_stored_without_outputs(name):
  for cell in _cells(name):
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [], f"{name}: cell {cell['id']} has outputs"
      assert cell["execution_count"] is None, f"{name}: cell {cell['id']} was executed"


def test_generated_cells_and_readme_agree_with_pyproject():
  assert build.stale_files() == [], "run: python notebooks/build.py"
  with (REPO / "pyproject.toml").open("rb") as f:
    url = tomllib.load(f)["project"]["urls"]["Repository"]
  owner_name = url.removeprefix("https://github.com/")
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  for name in build.NOTEBOOKS:
    colab = f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/{name}"
    cells = {c["id"]: _source(c) for c in _cells(name)}
    assert colab in cells["colab-badge"] and colab in readme
    assert f'REPOSITORY = "{url}"' in cells["install"]
    assert 'if "google.colab" in sys.modules:' in cells["install"]


def test_build_rewrites_a_drifted_address(tmp_path):
  """The check fails when pyproject's address changes, and the rewrite follows it."""
  (tmp_path / "notebooks").mkdir()
  for name in build.NOTEBOOKS:
    (tmp_path / "notebooks" / name).write_text((NOTEBOOKS / name).read_text())
  (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
  (tmp_path / "pyproject.toml").write_text(
      '[project]\nname = "x"\n[project.urls]\n'
      'Repository = "https://github.com/someone/fork.git"\n')
  assert len(build.stale_files(tmp_path)) == 3
  for file, text in build.expected_files(tmp_path).items():
    file.write_text(text)
  assert build.stale_files(tmp_path) == []
  install = {c["id"]: _source(c) for c in json.loads(
      (tmp_path / "notebooks" / "gpt2_e2e.ipynb").read_text())["cells"]}["install"]
  assert 'REPOSITORY = "https://github.com/someone/fork"' in install
  assert "github/someone/fork/blob/main/notebooks/quickstart.ipynb" in (
      tmp_path / "README.md").read_text()


@pytest.mark.parametrize(("runtime", "jax_build"),
                         [("cpu", []), ("gpu", ["jax[cuda12]"]), ("tpu", ["jax[tpu]"])])
def test_install_cell_installs_on_colab_only(monkeypatch, runtime, jax_build):
  """Outside Colab the cell runs nothing; on Colab it pip installs the package from the
  repository of pyproject.toml, with the JAX build of the runtime's accelerator."""
  import os  # noqa: PLC0415
  import shutil  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import types  # noqa: PLC0415

  calls = []
  monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append((argv, kw)))
  monkeypatch.setattr(shutil, "which",
                      lambda name: "/usr/bin/nvidia-smi" if runtime == "gpu" else None)
  exists = os.path.exists
  monkeypatch.setattr(os.path, "exists", lambda p: False if str(p).startswith("/dev/") else
                      exists(p))
  monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
  if runtime == "tpu":
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-1")
  else:
    monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
  source = {c["id"]: _source(c) for c in _cells("quickstart.ipynb")}["install"]
  exec(source, {})  # noqa: S102
  assert calls == []
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  exec(source, {})  # noqa: S102
  (argv, kwargs), = calls
  assert argv == [sys.executable, "-m", "pip", "install", "-q",
                  f"adaprelora-jax[eval] @ git+{build.repository_url()}", *jax_build]
  assert kwargs == {"check": True}


@pytest.fixture
def kernel_of_this_interpreter(tmp_path, monkeypatch):
  """A kernelspec that starts this interpreter's ipykernel (not whatever `python3` a
  Jupyter installation elsewhere names), and the environment a user has: one CPU device,
  no accelerator."""
  kernels = tmp_path / "jupyter" / "kernels" / "this-python"
  kernels.mkdir(parents=True)
  (kernels / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "this interpreter", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # the tests' 8 fake devices
  monkeypatch.setenv("PYTHONPATH", str(REPO))  # this checkout's package
  monkeypatch.setenv("NOTEBOOK_OUTPUT_DIR", str(tmp_path / "runs"))
  return "this-python"


@pytest.mark.parametrize("name", build.NOTEBOOKS)
def test_notebook_runs(name, kernel_of_this_interpreter, tmp_path):
  import nbclient  # noqa: PLC0415
  import nbformat  # noqa: PLC0415

  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name=kernel_of_this_interpreter, timeout=600,
                                   resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError, naming the cell, on any error
  text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs)
  if name == "gpt2_e2e.ipynb":
    run = next((tmp_path / "runs").glob("gpt2_e2e-*"))
    assert (run / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "pretrain" / "base" / "model.safetensors").is_file()
    results = json.loads((run / "e2e_results.json").read_text())
    assert set(results["metrics"]) == {"BLEU", "NIST"}
    assert len(results["predictions"]) == 8
    assert "adapter_config.json" in text
  else:
    assert "adaprelora: final loss" in text and "adamw: final loss" in text
