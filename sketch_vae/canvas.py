"""The page's canvas and the model: units, conversions, and checks of what a request holds.

Used by serving.py (the service behind experiments/serve.py); NumPy only, so the
conversions are tested against strokes.py and quickdraw.py directly.

Units, and why:
  canvas px    the page's drawing area is a fixed logical square of CANVAS_SIZE
               units whatever its size on screen, so a drawing that fills the
               box means the same to the model on a phone and on a monitor.
  data px      the pixel space of the model's training data. Quick Draw was drawn
               in browsers too, but on screens of every size, and datasets differ:
               the bundled models were trained on raw screen pixels (scale
               factors 82.2 cat, 70.1 pig), 0..255-grid data gives ~20. No fixed
               ratio fits every model, so `scale` (data px per canvas px) is the
               page's to choose. Its default, `default_scale`, makes the model's
               typical drawing fill FILL of the canvas; the page's "drawing scale"
               control multiplies it.
  model units  data px / facts.scale_factor, as data.load normalises.

Drawing -> model, quickdraw.to_stroke3's recipe on the drawn points: canvas px *
scale; RDP with epsilon 2 data px per stroke; points rounded to whole data px;
differences, p = 1 on each stroke's last point; the first row is (0, 0), the
drawing starting at its first point (the raw-pixel data behind the browser
models zeroes it too: to_stroke3(start_at_origin)); / scale_factor. Departure:
offsets are not clamped to +-1000 data px as training data were, so the model
reads exactly what was drawn and the endings continue from exactly those points.
Model -> page: rows * scale_factor / scale, summed from the first drawn point.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from sketch_vae import strokes as strokes_lib

CANVAS_SIZE = 480  # canvas px per side of the page's drawing area
FILL = 0.6  # share of the canvas side a typical drawing spans at the default scale
# A drawing's larger side is about 11 scale factors: measured 2026-11-25 as the median
# extent / scale factor of prior samples at tau 0.5 (cat 9.7, pig 12.8), of the bundled
# raw Quick Draw pigs after RDP 2 (11.7) and of aaron_sheep's training set (12.9).
TYPICAL_EXTENT = 11.0
RDP_EPSILON = 2.0  # data px, as the Quick Draw files were made


class RequestError(ValueError):
  """A request refused for what it asks; the message is shown to the person as is."""


@dataclasses.dataclass(frozen=True)
class Limits:
  max_body_bytes: int = 256 * 1024
  max_raw_points: int = 10_000  # over all strokes, before simplification
  max_strokes: int = 1_000
  coord_limit: float = 10_000.0  # |x|, |y| in canvas px
  max_count: int = 10  # endings / samples / interpolation steps: the compiled batch size
  temperature: tuple[float, float] = (0.01, 2.0)
  # Drawing scale as a multiple of the model's default (default_scale): a fixed range
  # would refuse the default itself for models with small or large scale factors.
  scale_multiple: tuple[float, float] = (1 / 16, 16.0)


def default_scale(scale_factor: float) -> float:
  """Data px per canvas px at which a typical drawing spans FILL of the canvas."""
  return TYPICAL_EXTENT * scale_factor / (FILL * CANVAS_SIZE)


# ----------------------------------------------------------------------------
# Conversions (pure NumPy).


def drawing_to_model(lines_px, scale: float, scale_factor: float,
                     epsilon: float = RDP_EPSILON) -> tuple[np.ndarray, list[np.ndarray]]:
  """Canvas polylines -> (stroke-3 in model units, the simplified drawing in canvas px)."""
  data = [np.asarray(line, np.float64).reshape(-1, 2) * scale for line in lines_px]
  simple = [np.round(line) for line in strokes_lib.simplify_polylines(data, epsilon)]
  strokes_Nx3 = strokes_lib.polylines_to_stroke3(simple)
  strokes_Nx3[0, 0:2] = 0.0
  strokes_Nx3[:, 0:2] /= scale_factor
  return strokes_Nx3, [line / scale for line in simple]


def model_to_canvas(strokes_Nx3, scale: float, scale_factor: float, anchor) -> list[np.ndarray]:
  """Stroke-3 in model units -> canvas polylines, the first point moved by `anchor`."""
  out = np.array(strokes_Nx3, np.float64).reshape(-1, 3)
  out[:, 0:2] *= scale_factor / scale
  if len(out):
    out[0, 0:2] += anchor
  return strokes_lib.stroke3_to_polylines(out)


def rounded(lines) -> list:
  return [np.round(line, 3).tolist() for line in lines]


# ----------------------------------------------------------------------------
# Checking request values.


def show(value) -> str:
  plain = isinstance(value, (list, dict, str, bool, type(None)))
  text = json.dumps(value) if plain else repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value) -> bool:
  """A finite JSON number. JSON integers may have any number of digits: a float
  conversion that overflows is not finite either."""
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    return False
  try:
    return math.isfinite(value)
  except OverflowError:
    return False


def _reject_constant(name):
  raise RequestError(f"the body is not valid JSON: {name} is not a JSON number")


def parse_body(raw: bytes) -> dict:
  """Request bytes -> a JSON object, or a RequestError saying what is wrong."""
  try:
    body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
  except RequestError:  # NaN or Infinity
    raise
  except UnicodeDecodeError:
    raise RequestError("the body is not UTF-8 text") from None
  except json.JSONDecodeError as e:
    raise RequestError(f"the body is not valid JSON ({e.msg} at line {e.lineno} "
                       f"column {e.colno})") from None
  except RecursionError:
    raise RequestError("the body is not valid JSON: nested too deeply") from None
  except ValueError as e:  # e.g. an integer of more digits than Python converts
    raise RequestError(f"the body is not valid JSON ({e})") from None
  if not isinstance(body, dict):
    raise RequestError(f"the body must be a JSON object, got {show(body)}")
  return body


def number(body: dict, name: str, default, low: float, high: float) -> float:
  value = body.get(name, default)
  if not _is_number(value) or not low <= value <= high:
    raise RequestError(f"'{name}' must be a number from {low:g} to {high:g}, got {show(value)}")
  return float(value)


def integer(body: dict, name: str, default, low: int, high: int) -> int:
  value = body.get(name, default)
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
    raise RequestError(f"'{name}' must be a whole number from {low} to {high}, got {show(value)}")
  return value


def parse_drawing(value, name: str, limits: Limits) -> list[np.ndarray]:
  """[[[x, y], ...], ...] canvas px -> float64 [k, 2] polylines, every value checked."""
  shape = f"'{name}' must be a list of strokes, each a list of [x, y] points"
  if not isinstance(value, list):
    raise RequestError(f"{shape}, got {show(value)}")
  if not value:
    raise RequestError(f"'{name}' has no strokes: draw something first")
  if len(value) > limits.max_strokes:
    raise RequestError(f"'{name}' has {len(value)} strokes, more than {limits.max_strokes}")
  lines, total = [], 0
  for i, stroke in enumerate(value):
    if not isinstance(stroke, list) or not stroke:
      raise RequestError(f"{shape}; stroke {i} is {show(stroke)}")
    total += len(stroke)
    if total > limits.max_raw_points:
      raise RequestError(f"'{name}' has more than {limits.max_raw_points} points")
    for j, point in enumerate(stroke):
      if not (isinstance(point, list) and len(point) == 2 and all(map(_is_number, point))):
        raise RequestError(f"'{name}' stroke {i} point {j} must be [x, y], two finite numbers, "
                           f"got {show(point)}")
    line = np.array(stroke, np.float64)
    if np.abs(line).max() > limits.coord_limit:
      raise RequestError(f"'{name}' stroke {i} has a coordinate outside +-{limits.coord_limit:g}")
    lines.append(line)
  return lines
