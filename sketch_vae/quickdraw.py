"""Quick Draw drawings (.ndjson, JSON lists) -> sketch-rnn stroke-3 `.npz` files.

The official `sketchrnn/<class>.npz` files were made from the Quick Draw data by
RDP at epsilon 2.0 per stroke, then differencing (REFERENCE.md, Data). This
rebuilds files of that kind from any ndjson or JSON-list subset, and records
every step in a report so a dataset can be traced to its sources and settings.

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

SPLITS = ("train", "valid", "test")
# The official class files: 70000 / 2500 / 2500 of 75000 drawings.
DEFAULT_FRACTIONS = (70000 / 75000, 2500 / 75000, 2500 / 75000)
RAW_SIZE = 255.0  # raw drawings are scaled so their larger side spans 0..255
MAX_EXAMPLES = 5  # messages kept per drop reason in the report


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
      yield parse_drawing(item, f"{path} item {i}")
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


# ----------------------------------------------------------------------------
# Splits and the .npz file.


def split_sizes(n: int, train=None, valid=None, test=None) -> tuple[int, int, int]:
  """Sizes from counts (ints) or fractions (floats in [0, 1]) of `n`.

  Missing valid / test sizes get the official 2500 / 75000 share; a missing
  train size, or train given as a fraction when the three fractions add up to
  1, takes the rest, so rounding loses no drawing.
  """
  def count(value, name):
    is_fraction = isinstance(value, (float, np.floating))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not is_fraction:
      raise QuickDrawError(f"{name} size should be a count or a fraction, got {value!r}")
    if value < 0 or is_fraction and value > 1:
      raise QuickDrawError(f"{name} size {value} is not a count >= 0 or a fraction in [0, 1]")
    return int(round(value * n)) if is_fraction else int(value)

  valid_n = count(DEFAULT_FRACTIONS[1] if valid is None else valid, "valid")
  test_n = count(DEFAULT_FRACTIONS[2] if test is None else test, "test")
  given = [v for v in (train, valid, test) if v is not None]
  fractions = given and all(isinstance(v, (float, np.floating)) for v in given)
  if train is None or (len(given) == 3 and fractions and abs(sum(given) - 1.0) < 1e-9):
    train_n = n - valid_n - test_n
  else:
    train_n = count(train, "train")
  if train_n < 0 or train_n + valid_n + test_n > n:
    raise QuickDrawError(f"split sizes train={max(train_n, 0)} valid={valid_n} test={test_n} "
                         f"need more drawings than the {n} kept")
  return train_n, valid_n, test_n


def split_sketches(sketches: Sequence, sizes: Sequence[int], seed: int) -> dict[str, list]:
  """A seeded random permutation cut into train / valid / test, in that order."""
  order = np.random.default_rng(seed).permutation(len(sketches))
  out, start = {}, 0
  for name, size in zip(SPLITS, sizes):
    out[name] = [sketches[i] for i in order[start:start + size]]
    start += size
  return out


def write_npz(path: str, splits: dict[str, Sequence[np.ndarray]]) -> None:
  """sketch-rnn `.npz`: train / valid / test, each a 1-d object array of int16
  (n, 3) arrays, as `np.load(allow_pickle=True, encoding="latin1")` expects.

  Filled element by element because `np.array(list)` builds a 3-d array when
  all sketches have the same length. Written to a temporary name, then renamed.
  """
  arrays = {}
  for name in SPLITS:
    seq = splits.get(name, [])
    arr = np.empty(len(seq), dtype=object)
    for i, sketch in enumerate(seq):
      arr[i] = np.asarray(sketch, np.int16)
    arrays[name] = arr
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".part"
  try:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# ----------------------------------------------------------------------------
# The whole conversion, with its record.


def file_sha256(path: str) -> str:
  """Hex sha256 of a file, read in 1 MB blocks (recorded in conversion and import reports)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


@dataclasses.dataclass
class ConversionReport:
  """Every step of one conversion; written as JSON beside the `.npz`."""
  settings: dict
  steps: list[str]
  sources: list[dict] = dataclasses.field(default_factory=list)
  read: int = 0
  kept: int = 0
  formats: dict = dataclasses.field(default_factory=lambda: {"simplified": 0, "raw": 0})
  dropped: dict = dataclasses.field(default_factory=dict)
  examples: dict = dataclasses.field(default_factory=dict)
  split: dict = dataclasses.field(default_factory=dict)
  unused: int = 0
  lengths: dict = dataclasses.field(default_factory=dict)
  output: str | None = None

  def drop(self, reason: str, message: str) -> None:
    self.dropped[reason] = self.dropped.get(reason, 0) + 1
    shown = self.examples.setdefault(reason, [])
    if len(shown) < MAX_EXAMPLES:
      shown.append(message)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def convert(paths: Sequence[str] | str, *, epsilon: float | None = 2.0, resample: bool = True,
            raw_size: float | None = RAW_SIZE, start_at_origin: bool = False,
            recognized_only: bool = False, deduplicate: bool = True, strict: bool = False,
            max_drawings: int | None = None, train=None, valid=None, test=None,
            seed: int = 0) -> tuple[dict[str, list[np.ndarray]], ConversionReport]:
  """Reads Quick Draw files and returns (stroke-3 int16 splits, report).

  Bad drawings are dropped and counted by reason, or, with `strict`, the first
  one is raised. Filters, in order: `recognized_only` drops drawings whose
  `recognized` field is false (drawings without the field stay); a drawing is
  a duplicate when a kept one has its key_id, or, if it has none, its strokes.
  `max_drawings` keeps the first N drawings of each file; to draw a random
  subset like the official 75000, give split counts and leave the rest unused.
  """
  if isinstance(paths, str):
    paths = [p for p in paths.split(",") if p]
  if not paths:
    raise QuickDrawError("no input files given")
  if max_drawings is not None and max_drawings < 1:
    raise QuickDrawError(f"max_drawings should be at least 1, got {max_drawings}")
  settings = dict(epsilon=epsilon, resample=resample, raw_size=raw_size,
                  start_at_origin=start_at_origin, recognized_only=recognized_only,
                  deduplicate=deduplicate, strict=strict, max_drawings=max_drawings, seed=seed,
                  train=train, valid=valid, test=test)
  scaling = (f"align top-left, scale larger side to {raw_size:g}" if raw_size is not None
             else "keep raw pixels")
  steps = [f"raw only: {scaling}" + (", resample at 1 pixel" if resample else ""),
           f"RDP per stroke, epsilon {epsilon}" if epsilon is not None else "no RDP",
           "round points, difference to int16 stroke-3"
           + (", first offset set to (0, 0)" if start_at_origin else ""),
           f"seeded permutation (seed {seed}) cut into train / valid / test"]
  report = ConversionReport(settings=settings, steps=steps)
  sketches, seen_keys, seen_content = [], set(), set()
  for path in paths:
    check_file(path)
    source = dict(path=path, sha256=file_sha256(path), bytes=os.path.getsize(path), read=0, kept=0)
    report.sources.append(source)
    for item in iter_drawings(path):
      report.read += 1
      source["read"] += 1
      try:
        if isinstance(item, QuickDrawError):
          raise item
        if recognized_only and item.recognized is False:
          report.drop("not_recognized", f"{item.where}: recognized is false")
          continue
        content = item.content_key() if deduplicate else None
        if deduplicate and (item.key_id in seen_keys if item.key_id is not None
                            else content in seen_content):
          what = f"key_id {item.key_id}" if item.key_id is not None else "content"
          report.drop("duplicate", f"{item.where}: same {what} as an earlier drawing")
          continue
        sketches.append(to_stroke3(item, epsilon, resample, raw_size, start_at_origin))
      except QuickDrawError as e:
        if strict:
          raise
        report.drop(e.reason, str(e))
        continue
      seen_keys.add(item.key_id)
      seen_content.add(content)
      report.formats["raw" if item.is_raw else "simplified"] += 1
      source["kept"] += 1
      if max_drawings is not None and source["kept"] >= max_drawings:
        break
  report.kept = len(sketches)
  if not sketches:
    first = next(iter(report.examples.values()), ["the files hold no drawings"])[0]
    raise QuickDrawError(f"no drawing kept from {', '.join(paths)} (read {report.read}, "
                         f"dropped {report.dropped}); first problem: {first}")
  sizes = split_sizes(len(sketches), train, valid, test)
  splits = split_sketches(sketches, sizes, seed)
  report.split = {name: len(splits[name]) for name in SPLITS}
  report.unused = len(sketches) - sum(sizes)
  for name in SPLITS:
    lengths = [len(s) for s in splits[name]]
    report.lengths[name] = dict(longest=max(lengths, default=0),
                                mean=float(np.mean(lengths)) if lengths else 0.0)
  return splits, report


def prepare(paths: Sequence[str] | str, output: str, **options) -> ConversionReport:
  """`convert`, then write OUTPUT.npz and the report as OUTPUT.json beside it."""
  if not str(output).endswith(".npz"):
    raise QuickDrawError(f"{output}: the output name should end in .npz")
  splits, report = convert(paths, **options)
  write_npz(output, splits)
  report.output = str(output)
  with open(str(output)[:-len(".npz")] + ".json", "w") as f:
    json.dump(report.as_dict(), f, indent=1)
    f.write("\n")
  return report

