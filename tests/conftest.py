"""Test setup: 4 fake CPU devices (set before JAX is imported) and shared fixtures."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sketch_vae" / "assets" / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


def write_lines(path, lines):
  """Writes text lines (a tiny .ndjson) and returns the path as a string."""
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def absolute_strokes(s3):
  """Independent of the library: cumulative sums of stroke-3 offsets, cut after each pen lift."""
  xy = np.cumsum(np.asarray(s3, np.int64)[:, :2], axis=0)
  cuts = np.flatnonzero(np.asarray(s3)[:, 2] == 1) + 1
  return [part for part in np.split(xy, cuts) if len(part)]
