"""Fixtures for the evaluation tests: the shared E2E data beside the repository."""

from pathlib import Path

import pytest

# The repository root is two levels up; shared/ lies beside the repository (CI clones it so).
E2E_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "e2e"


@pytest.fixture(scope="session")
def e2e_test_csv() -> Path:
  path = E2E_DIR / "testset_w_refs.csv"
  assert path.is_file(), f"E2E test set not found at {path}"
  return path
