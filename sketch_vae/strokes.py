"""Stroke formats: stroke-3, stroke-5, absolute polylines, bounds, RDP (NumPy only).

Formats (Ha & Eck 2018, section 3.1):
  stroke-3   rows (dx, dy, p): p = 1 when the pen lifts after this point.
  stroke-5   rows (dx, dy, p1, p2, p3): pen down / pen up after this point /
             sketch has ended. A padded sequence is [N_max + 1, 5]: row 0 is the
             start token S0 = (0, 0, 1, 0, 0), rows 1..n hold the sketch, rows
             after n are (0, 0, 0, 0, 1).
  polylines  a list of [k, 2] arrays of absolute (x, y) points, one per stroke.

Shape letters: N = points in one sketch, T = N_max + 1 padded rows, B = batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

START_TOKEN = np.array([0.0, 0.0, 1.0, 0.0, 0.0], np.float32)
END_ROW = np.array([0.0, 0.0, 0.0, 0.0, 1.0], np.float32)


def to_stroke5(strokes_Nx3: np.ndarray, max_len: int) -> np.ndarray:
  """One stroke-3 sketch -> padded stroke-5 [max_len + 1, 5] with start token."""
  n = len(strokes_Nx3)
  if n > max_len:
    raise ValueError(f"sketch has {n} points, more than max_len={max_len}")
  out = np.zeros((max_len + 1, 5), np.float32)
  out[0] = START_TOKEN
  out[1:n + 1, 0:2] = strokes_Nx3[:, 0:2]
  out[1:n + 1, 3] = strokes_Nx3[:, 2]
  out[1:n + 1, 2] = 1.0 - out[1:n + 1, 3]
  out[n + 1:, 4] = 1.0
  return out


def pad_batch(sketches: Sequence[np.ndarray], max_len: int):
  """A list of stroke-3 sketches -> (stroke-5 [B, max_len + 1, 5], lengths [B])."""
  batch_BxTx5 = np.zeros((len(sketches), max_len + 1, 5), np.float32)
  lengths_B = np.zeros((len(sketches),), np.int32)
  for i, s in enumerate(sketches):
    batch_BxTx5[i] = to_stroke5(s, max_len)
    lengths_B[i] = len(s)
  return batch_BxTx5, lengths_B


def stroke5_to_stroke3(strokes_Nx5: np.ndarray) -> np.ndarray:
  """Stroke-5 rows (no start token) -> stroke-3, cut before the first p3 = 1 row.

  Rows are read as one-hot by argmax, so sampled or soft pen states work too.
  """
  strokes_Nx5 = np.asarray(strokes_Nx5, np.float32)
  if len(strokes_Nx5) == 0:
    return np.zeros((0, 3), np.float32)
  pen = np.argmax(strokes_Nx5[:, 2:5], axis=-1)
  ends = np.flatnonzero(pen == 2)
  n = int(ends[0]) if len(ends) else len(strokes_Nx5)
  out = np.zeros((n, 3), np.float32)
  out[:, 0:2] = strokes_Nx5[:n, 0:2]
  out[:, 2] = (pen[:n] == 1).astype(np.float32)
  return out


def stroke3_to_polylines(strokes_Nx3: np.ndarray) -> list[np.ndarray]:
  """Stroke-3 -> list of absolute [k, 2] polylines (the origin is (0, 0)).

  A trailing stroke without a pen lift is kept, so nothing is lost.
  """
  strokes_Nx3 = np.asarray(strokes_Nx3, np.float64)
  if len(strokes_Nx3) == 0:
    return []
  xy_Nx2 = np.cumsum(strokes_Nx3[:, 0:2], axis=0)
  lifts = np.flatnonzero(strokes_Nx3[:, 2] > 0.5)
  starts = np.concatenate([[0], lifts + 1])
  stops = np.concatenate([lifts + 1, [len(strokes_Nx3)]])
  return [xy_Nx2[a:b] for a, b in zip(starts, stops) if b > a]


def polylines_to_stroke3(lines: Sequence[np.ndarray]) -> np.ndarray:
  """Absolute polylines -> stroke-3 offsets, starting from the origin (0, 0).

  The first row is the offset of the first point from the origin, as in the
  original `lines_to_strokes`; the last point of each line gets p = 1.
  """
  rows = []
  for line in lines:
    line = np.asarray(line, np.float64).reshape(-1, 2)
    if len(line) == 0:
      continue
    pen = np.zeros((len(line), 1))
    pen[-1] = 1.0
    rows.append(np.concatenate([line, pen], axis=1))
  if not rows:
    return np.zeros((0, 3), np.float64)
  absolute = np.concatenate(rows, axis=0)
  out = absolute.copy()
  out[1:, 0:2] -= absolute[:-1, 0:2]
  return out


def bounds(strokes_Nx3: np.ndarray) -> tuple[float, float, float, float]:
  """(min_x, max_x, min_y, max_y) of the pen path, origin included (as the original)."""
  strokes_Nx3 = np.asarray(strokes_Nx3, np.float64)
  if len(strokes_Nx3) == 0:
    return (0.0, 0.0, 0.0, 0.0)
  xy = np.cumsum(strokes_Nx3[:, 0:2], axis=0)
  xs = np.concatenate([[0.0], xy[:, 0]])
  ys = np.concatenate([[0.0], xy[:, 1]])
  return (float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max()))


def _line_distances(points_Kx2: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
  """Distance of each point to the infinite line through start and end.

  Same definition as `rdp.pldist`: Euclidean distance to `start` when the two
  ends coincide.
  """
  d = end - start
  norm = np.hypot(d[0], d[1])
  rel = points_Kx2 - start
  if norm == 0.0:
    return np.hypot(rel[:, 0], rel[:, 1])
  return np.abs(d[0] * rel[:, 1] - d[1] * rel[:, 0]) / norm


def rdp_mask(points_Kx2: np.ndarray, epsilon: float) -> np.ndarray:
  """Ramer-Douglas-Peucker: boolean mask of the points to keep.

  Iterative, with the distance to all points of a span computed in one NumPy
  call. It keeps exactly the points the `rdp` package keeps (same distance,
  same strict `> epsilon`, same first-maximum tie break); tests check this.
  """
  points_Kx2 = np.asarray(points_Kx2, np.float64)
  k = len(points_Kx2)
  keep = np.zeros(k, bool)
  if k == 0:
    return keep
  keep[0] = keep[-1] = True
  stack = [(0, k - 1)]
  while stack:
    first, last = stack.pop()
    if last - first < 2:
      continue
    dist = _line_distances(points_Kx2[first + 1:last], points_Kx2[first], points_Kx2[last])
    i = int(np.argmax(dist))
    if dist[i] > epsilon:
      split = first + 1 + i
      keep[split] = True
      stack.append((first, split))
      stack.append((split, last))
  return keep


def rdp(points_Kx2: np.ndarray, epsilon: float) -> np.ndarray:
  """The kept points of one polyline (see `rdp_mask`)."""
  points_Kx2 = np.asarray(points_Kx2)
  return points_Kx2[rdp_mask(points_Kx2, epsilon)]


def simplify_polylines(lines: Sequence[np.ndarray], epsilon: float) -> list[np.ndarray]:
  """RDP applied to each stroke separately (how the Quick Draw files were made)."""
  return [rdp(np.asarray(line, np.float64), epsilon) for line in lines]
