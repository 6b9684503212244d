"""Test setup: 4 fake CPU devices (set before JAX is imported) and shared fixtures."""
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLED = REPO / "sketch_vae" / "assets" / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


def run_python(code: str, timeout: int = 120) -> str:
  """Runs a Python snippet in a fresh process in the repo (a launcher's absl flags, or a
  library function patched before it runs); asserts it succeeded and returns its stdout."""
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


# float64 NumPy restatements shared by the cell tests (rnn.py of the original).
def sig(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_ln(x, gain, shift, eps=1e-3):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * gain + shift


def write_lines(path, lines):
  """Writes text lines (a tiny .ndjson) and returns the path as a string."""
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def absolute_strokes(s3):
  """Independent of the library: cumulative sums of stroke-3 offsets, cut after each pen lift."""
  xy = np.cumsum(np.asarray(s3, np.int64)[:, :2], axis=0)
  cuts = np.flatnonzero(np.asarray(s3)[:, 2] == 1) + 1
  return [part for part in np.split(xy, cuts) if len(part)]


def assert_same_outputs_and_grads(loss, params, cell_a, cell_b, *, out_tol, grad_tol):
  """loss(params, cell) -> (value, outputs): both cells give the same outputs and the same
  gradients to the parameters; tolerances are (rtol, atol)."""
  import jax  # late: the fake-device flags above must be set before JAX loads

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, out_a), grads_a = grad(params, cell_a)
  (_, out_b), grads_b = grad(params, cell_b)
  np.testing.assert_allclose(out_a, out_b, rtol=out_tol[0], atol=out_tol[1])
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(a, b, rtol=grad_tol[0], atol=grad_tol[1])
