"""Test setup: 4 fake CPU devices (set before JAX is imported) and shared fixtures."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sketch_vae" / "assets" / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO
