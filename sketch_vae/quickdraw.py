"""Quick Draw drawings (.ndjson, JSON lists) -> sketch-rnn stroke-3 arrays.

The official `sketchrnn/<class>.npz` files were made from the Quick Draw data by
RDP at epsilon 2.0 per stroke, then differencing (REFERENCE.md, Data). This
module parses drawings and applies that recipe to one drawing at a time;
`quickdraw_dataset` builds `.npz` files of that kind from whole files.

Input, detected per drawing: "simplified" strokes [[xs], [ys]] (ints on a
0..255 grid) or "raw" strokes [[xs], [ys], [ts]] (pixels of any size, t in ms).
A `.ndjson` file holds one JSON object per line (word, countrycode, recognized,
key_id, drawing); a `.json` file holds one JSON list of bare drawings (lists of
strokes, no metadata), as in some public subsets.

Bad drawings come back as `QuickDrawError` values with a `reason`, so a caller
converting 70 000 lines can skip and count them, or stop at the first. In
messages, lines count from 1 (as editors show them); list items and strokes
count from 0 (their index in the JSON).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Iterator, Sequence

import numpy as np

from sketch_vae import strokes as strokes_lib

RAW_SIZE = 255.0  # raw drawings are scaled so their larger side spans 0..255


class QuickDrawError(ValueError):
  """Bad Quick Draw input. `reason` is a short key for counting; "file" for
  problems with a whole file, which are never skipped."""

  def __init__(self, message: str, reason: str = "file"):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass
class Drawing:
  """One parsed drawing: absolute (x, y) points per stroke, t dropped."""
  lines: list[np.ndarray]  # [k, 2] float64 per stroke
  is_raw: bool
  where: str  # "cat.ndjson line 17", for messages
  key_id: str | None = None
  recognized: bool | None = None

  def content_key(self) -> bytes:
    """Digest of the coordinates, for de-duplicating drawings without a key_id."""
    h = hashlib.blake2b(digest_size=16)
    for line in self.lines:
      h.update(np.int64(len(line)).tobytes())
      h.update(np.ascontiguousarray(line, np.float64).tobytes())
    return h.digest()


# ----------------------------------------------------------------------------
# Parsing.


def _describe(value) -> str:
  text = json.dumps(value) if isinstance(value, (list, dict, str, type(None))) else repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _stroke_points(stroke, index: int, where: str) -> tuple[np.ndarray, int]:
  """[[xs], [ys](, [ts])] -> ([k, 2] points, number of lists), checked."""
  if not isinstance(stroke, list) or len(stroke) not in (2, 3):
    raise QuickDrawError(f"{where}: stroke {index} should be [[xs], [ys]] or [[xs], [ys], [ts]], "
                         f"got {_describe(stroke)}", "bad_stroke")
  arrays = []
  for name, values in zip("xyt", stroke):
    if not isinstance(values, list):
      raise QuickDrawError(f"{where}: stroke {index}: the {name} values should be a list, "
                           f"got {_describe(values)}", "bad_stroke")
    try:
      arr = np.array(values)
    except ValueError:  # ragged nested lists
      arr = np.array([None])
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
      raise QuickDrawError(f"{where}: stroke {index} has non-numeric {name} values "
                           f"{_describe(values)}", "bad_stroke")
    arrays.append(arr.astype(np.float64))
  n = [len(a) for a in arrays]
  if n[0] != n[1]:
    raise QuickDrawError(f"{where}: stroke {index} has {n[0]} x values but {n[1]} y values",
                         "bad_stroke")
  if len(n) == 3 and n[2] != n[0]:
    raise QuickDrawError(f"{where}: stroke {index} has {n[0]} x and y values but {n[2]} t values",
                         "bad_stroke")
  if n[0] == 0:
    raise QuickDrawError(f"{where}: stroke {index} is empty", "empty")
  for name, arr in zip("xyt", arrays):
    if not np.all(np.isfinite(arr)):
      j = int(np.flatnonzero(~np.isfinite(arr))[0])
      raise QuickDrawError(f"{where}: stroke {index} has a non-finite {name} value ({arr[j]}) "
                           f"at point {j}", "non_finite")
  return np.stack(arrays[:2], axis=1), len(stroke)


def parse_drawing(strokes, where: str) -> Drawing:
  """A bare drawing (a list of strokes) -> Drawing; raises QuickDrawError."""
  if not isinstance(strokes, list):
    raise QuickDrawError(f"{where}: the drawing should be a list of strokes, "
                         f"got {_describe(strokes)}", "bad_stroke")
  if not strokes:
    raise QuickDrawError(f"{where}: the drawing has no strokes", "empty")
  lines, widths = [], []
  for i, stroke in enumerate(strokes):
    points, width = _stroke_points(stroke, i, where)
    if widths and width != widths[0]:
      raise QuickDrawError(f"{where}: stroke {i} has {width} lists but stroke 0 has {widths[0]} "
                           f"(simplified and raw strokes mixed)", "bad_stroke")
    lines.append(points)
    widths.append(width)
  return Drawing(lines=lines, is_raw=widths[0] == 3, where=where)


def parse_record(record, where: str) -> Drawing:
  """One ndjson object -> Drawing with its metadata; raises QuickDrawError."""
  if not isinstance(record, dict):
    raise QuickDrawError(f"{where}: expected a JSON object, got {_describe(record)}",
                         "malformed_json")
  if "drawing" not in record:
    raise QuickDrawError(f"{where}: no 'drawing' key (keys: {', '.join(sorted(record))})",
                         "no_drawing")
  drawing = parse_drawing(record["drawing"], where)
  key_id = record.get("key_id")
  drawing.key_id = None if key_id is None else str(key_id)
  if "recognized" in record:
    drawing.recognized = bool(record["recognized"])
  return drawing


def check_file(path: str) -> str:
  """Whole-file checks; returns the extension ('.ndjson' or '.json')."""
  if not os.path.exists(path):
    raise QuickDrawError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise QuickDrawError(f"{path}: not a file")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".ndjson", ".json"):
    raise QuickDrawError(f"{path}: unsupported file type {ext or '(none)'!r}; expected .ndjson "
                         "(one drawing per line) or .json (a list of drawings)")
  return ext


def iter_drawings(path: str) -> Iterator[Drawing | QuickDrawError]:
  """Yields each drawing of a file, or the QuickDrawError that describes why
  it is bad, so the caller chooses to skip or stop. Problems with the whole
  file are raised."""
  path = os.fspath(path)
  ext = check_file(path)
  if ext == ".ndjson":
    with open(path, "rb") as f:
      for number, raw in enumerate(f, 1):
        if not raw.strip():
          continue
        where = f"{path} line {number}"
        try:
          record = json.loads(raw)
        except UnicodeDecodeError:
          yield QuickDrawError(f"{where}: not UTF-8 text", "malformed_json")
          continue
        except json.JSONDecodeError as e:
          yield QuickDrawError(f"{where}: not valid JSON ({e.msg} at column {e.colno})",
                               "malformed_json")
          continue
        try:
          yield parse_record(record, where)
        except QuickDrawError as e:
          yield e
    return
  try:
    with open(path, "rb") as f:
      items = json.load(f)
  except UnicodeDecodeError:
    raise QuickDrawError(f"{path}: not UTF-8 text") from None
  except json.JSONDecodeError as e:
    raise QuickDrawError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} "
                         f"column {e.colno})") from None
  if not isinstance(items, list):
    raise QuickDrawError(f"{path}: expected a JSON list of drawings, got a JSON "
                         f"{type(items).__name__}")
  for i, item in enumerate(items):
    try:
      # A list of drawings, or of whole Quick Draw records (the ndjson objects in an array).
      parse = parse_record if isinstance(item, dict) else parse_drawing
      yield parse(item, f"{path} item {i}")
    except QuickDrawError as e:
      yield e


# ----------------------------------------------------------------------------
# Conversion.


def resample_polyline(points_Kx2: np.ndarray, spacing: float = 1.0) -> np.ndarray:
  """Points every `spacing` along the path by linear interpolation, from the
  first point; the last point is always kept so the stroke keeps its ends."""
  points_Kx2 = np.asarray(points_Kx2, np.float64)
  if len(points_Kx2) < 2:
    return points_Kx2.copy()
  seg = np.hypot(*np.diff(points_Kx2, axis=0).T)
  points_Kx2 = points_Kx2[np.concatenate([[True], seg > 0])]  # np.interp needs rising arc
  if len(points_Kx2) < 2:
    return points_Kx2.copy()
  arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points_Kx2, axis=0).T))])
  stops = np.append(np.arange(0.0, arc[-1], spacing), arc[-1])
  return np.stack([np.interp(stops, arc, points_Kx2[:, 0]),
                   np.interp(stops, arc, points_Kx2[:, 1])], axis=1)


def normalize_raw(lines: Sequence[np.ndarray], resample: bool = True,
                  size: float | None = RAW_SIZE) -> list[np.ndarray]:
  """Steps 1-3 of the recipe by which Quick Draw made `simplified` from `raw`
  (quickdraw-dataset README): align to the top-left, scale uniformly so the
  larger side is `size` (255), resample at 1 pixel spacing. Step 4, RDP, is
  the caller's. A single-point drawing has no size and is only aligned.

  size=None keeps the raw pixels, as hardmaru's raw-ndjson-to-npz notebook
  does; epsilon is then in raw pixels. The pretrained sketch-rnn-js models'
  scale factors (61 to 94) fit pixel space better than the 0..255 grid.
  """
  out = [np.asarray(line, np.float64) for line in lines]
  if size is not None:
    low = np.min([line.min(axis=0) for line in out], axis=0)
    extent = float(np.max(np.max([line.max(axis=0) for line in out], axis=0) - low))
    scale = size / extent if extent > 0 else 1.0
    out = [(line - low) * scale for line in out]
  return [resample_polyline(line, 1.0) for line in out] if resample else out


def to_stroke3(drawing: Drawing, epsilon: float | None = 2.0, resample: bool = True,
               raw_size: float | None = RAW_SIZE, start_at_origin: bool = False) -> np.ndarray:
  """Drawing -> stroke-3 int16 (n, 3); RDP per stroke unless epsilon is None.

  Absolute points are rounded to the integer grid before differencing, so the
  int16 offsets sum back exactly to the rounded points (rounding each offset
  instead would let the error drift along the sketch). Simplified drawings are
  integers already, so for them this changes nothing.
  The first row is the first point's offset from (0, 0), as the original
  `lines_to_strokes`; `start_at_origin` zeroes it, as hardmaru's notebook does,
  so the start position does not enter the scale factor.
  """
  lines = drawing.lines
  if drawing.is_raw:
    lines = normalize_raw(lines, resample, raw_size)
  if epsilon is not None:
    lines = strokes_lib.simplify_polylines(lines, epsilon)
  out = strokes_lib.polylines_to_stroke3([np.round(line) for line in lines])
  if start_at_origin:
    out[0, 0:2] = 0.0
  if np.abs(out[:, 0:2]).max(initial=0) > np.iinfo(np.int16).max:
    raise QuickDrawError(f"{drawing.where}: an offset does not fit in int16", "out_of_range")
  return out.astype(np.int16)
