"""Test configuration: an 8-device CPU platform for the sharding tests, set before JAX starts."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Run the test body with 64-bit floats enabled."""
  with jax.enable_x64(True):
    yield
