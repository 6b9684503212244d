"""Stroke-format conversions, on hand-made and real sketches."""
import warnings

import numpy as np
import pytest
import rdp as rdp_package

from sketch_vae import strokes
from conftest import BUNDLED


@pytest.fixture(scope="module")
def sheep():
  npz = np.load(BUNDLED / "aaron_sheep.npz", allow_pickle=True, encoding="latin1")
  return [np.asarray(s) for s in npz["test"][:60]]


def test_stroke5_layout_row_by_row():
  s3 = np.array([[5, 1, 0], [2, -3, 1], [-4, 4, 0], [1, 1, 1]], np.int16)
  s5 = strokes.to_stroke5(s3, max_len=6)
  expected = np.array([
      [0, 0, 1, 0, 0],  # S0
      [5, 1, 1, 0, 0],
      [2, -3, 0, 1, 0],
      [-4, 4, 1, 0, 0],
      [1, 1, 0, 1, 0],
      [0, 0, 0, 0, 1],  # padding rows after n
      [0, 0, 0, 0, 1],
  ], np.float32)
  np.testing.assert_array_equal(s5, expected)


def test_pad_batch_lengths_and_rows(sheep):
  batch, lengths = strokes.pad_batch(sheep[:5], max_len=250)
  assert batch.shape == (5, 251, 5)
  np.testing.assert_array_equal(lengths, [len(s) for s in sheep[:5]])
  for b, s in zip(batch, sheep[:5]):
    n = len(s)
    np.testing.assert_array_equal(b[0], strokes.START_TOKEN)
    np.testing.assert_array_equal(b[1:n + 1, :2], s[:, :2])
    np.testing.assert_array_equal(b[1:n + 1, 3], s[:, 2])
    assert np.all(b[n + 1:] == strokes.END_ROW)


def test_too_long_is_an_error():
  with pytest.raises(ValueError, match="more than max_len"):
    strokes.to_stroke5(np.zeros((4, 3)), max_len=3)


def test_stroke5_round_trip_real(sheep):
  for s in sheep:
    s5 = strokes.to_stroke5(s, 250)
    back = strokes.stroke5_to_stroke3(s5[1:])
    np.testing.assert_array_equal(back, s.astype(np.float32))


def test_polyline_round_trip_real(sheep):
  for s in sheep:
    lines = strokes.stroke3_to_polylines(s)
    assert len(lines) == int(np.sum(s[:, 2] == 1)) + (0 if s[-1, 2] == 1 else 1)
    # Absolute points are the running sum of the offsets.
    np.testing.assert_allclose(np.concatenate(lines), np.cumsum(s[:, :2], axis=0))
    back = strokes.polylines_to_stroke3(lines)
    np.testing.assert_allclose(back, s)


def test_bounds_against_cumsum(sheep):
  for s in sheep[:10]:
    xy = np.vstack([[0, 0], np.cumsum(s[:, :2], axis=0)])
    assert strokes.bounds(s) == (xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max())


def _reference_rdp(points, eps):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # np.cross on 2-d vectors
    return rdp_package.rdp(points, epsilon=eps)


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 5.0])
def test_rdp_matches_reference_package_on_real_strokes(sheep, eps):
  checked = 0
  for s in sheep[:40]:
    for line in strokes.stroke3_to_polylines(s):
      np.testing.assert_array_equal(strokes.rdp(line, eps), _reference_rdp(line, eps))
      checked += 1
  assert checked > 100


def test_rdp_on_random_walks_and_degenerate_spans():
  rng = np.random.default_rng(0)
  for _ in range(50):
    pts = np.cumsum(rng.normal(size=(rng.integers(2, 80), 2)), axis=0).round()
    np.testing.assert_array_equal(strokes.rdp(pts, 1.5), _reference_rdp(pts, 1.5))
  # A closed loop (start == end) uses distance to the start point, as `rdp`.
  loop = np.array([[0, 0], [3, 0], [3, 3], [0, 3], [0, 0]], float)
  np.testing.assert_array_equal(strokes.rdp(loop, 1.0), _reference_rdp(loop, 1.0))
  assert len(strokes.rdp(np.array([[1.0, 2.0]]), 1.0)) == 1
