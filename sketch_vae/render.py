"""One sketch as an SVG document or a PNG image, without a browser (NumPy + Pillow only).

Launchers write samples, sweeps and interpolations on headless machines, so
rendering needs nothing beyond NumPy and Pillow. SVG and PNG share one layout
(`Transform`), so a point lands at the same place in both. Grids of sketches
(`render_grid`) are built from the pieces here: `Style`, `colored_lines`,
`svg_group`, `draw_lines`, `raster`.

Conventions:
  * Input is stroke-3 (see `strokes`): rows (dx, dy, p), p = 1 lifts the pen
    after the point. A last stroke without a pen lift is still drawn.
  * y grows downward in sketch-rnn data as in SVG and images, so (x, y) is drawn
    as is; the original `draw_strokes` does not flip either.
  * A drawing is fitted with one uniform scale and an offset, from
    `strokes.bounds`, which includes the origin like the original `get_bounds`.
  * Each pen-down stroke is one SVG <path> "M x y L x y ...". A one-point stroke
    is a zero-length path, which round line caps show as a dot.
  * Sketch groups carry class="sketch" (empty ones "sketch empty").

Shape letters: N = points in one sketch, K = points in one stroke.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional, Sequence, Union
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image, ImageDraw

from sketch_vae import strokes as strokes_lib

# Distinct hues that read on white; `color_by_stroke` cycles through them, so
# colours are distinct for the first len(PALETTE) strokes of a sketch.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#000080", "#808000")
# PNGs are drawn this many times larger and downsampled with LANCZOS, which is
# the cheapest antialiasing ImageDraw allows (it has no antialiased lines).
SUPERSAMPLE = 2

Size = Union[None, int, Sequence[int]]


class Transform(NamedTuple):
  """Canvas point = scale * absolute sketch point + (offset_x, offset_y)."""
  scale: float
  offset_x: float
  offset_y: float

  def apply(self, xy_Kx2: np.ndarray) -> np.ndarray:
    return np.asarray(xy_Kx2, np.float64) * self.scale + (self.offset_x, self.offset_y)

  def invert(self, uv_Kx2: np.ndarray) -> np.ndarray:
    return (np.asarray(uv_Kx2, np.float64) - (self.offset_x, self.offset_y)) / self.scale


class Style(NamedTuple):
  """How lines are drawn: width in canvas px, one colour or the palette per stroke."""
  stroke_width: float
  color: str
  color_by_stroke: bool


def check_strokes(strokes_Nx3, where: str = "sketch") -> np.ndarray:
  """A float64 [N, 3] copy of a stroke-3 sketch, or a ValueError saying what is wrong.

  Non-finite offsets are refused: Pillow and browsers silently drop NaN
  coordinates, which would turn a diverged sample into a plausible-looking
  picture instead of an error.
  """
  arr = np.asarray(strokes_Nx3)
  if arr.size == 0:
    return np.zeros((0, 3), np.float64)
  arr = arr.astype(np.float64)
  if arr.ndim != 2 or arr.shape[1] != 3:
    raise ValueError(f"{where}: expected stroke-3 rows of shape [N, 3], got {arr.shape}")
  bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
  if len(bad_rows):
    raise ValueError(f"{where}: non-finite values (NaN or inf) in {len(bad_rows)} row(s), "
                     f"first rows {bad_rows[:5].tolist()}")
  return arr


def resolve_margin(margin: Optional[float], side: float, stroke_width: float) -> float:
  """The margin in px; the default keeps half a line plus 5% of the side clear of the border."""
  if margin is None:
    return stroke_width / 2 + 0.05 * side
  if margin < 0:
    raise ValueError(f"margin must be >= 0, got {margin}")
  return float(margin)


def fit_transform(strokes_Nx3, width: float, height: float, margin: float) -> Transform:
  """Largest uniform scale fitting the bounds inside the margin, centred.

  Uniform, so aspect ratio is kept. An axis with zero extent (a straight
  horizontal line, a single dot) does not constrain the scale.
  """
  min_x, max_x, min_y, max_y = strokes_lib.bounds(check_strokes(strokes_Nx3))
  if not all(math.isfinite(v) for v in (min_x, max_x, min_y, max_y)):
    raise ValueError("sketch: absolute coordinates overflow to inf")
  room_x, room_y = width - 2 * margin, height - 2 * margin
  if room_x <= 0 or room_y <= 0:
    raise ValueError(f"margin {margin} leaves no room in a {width}x{height} canvas")
  scales = [room / extent for room, extent in ((room_x, max_x - min_x), (room_y, max_y - min_y))
            if extent > 0]
  scale = min(scales) if scales else 1.0
  return Transform(scale, width / 2 - scale * (min_x + max_x) / 2,
                   height / 2 - scale * (min_y + max_y) / 2)


def layout(strokes_Nx3, size: Size, margin: Optional[float] = None,
           stroke_width: float = 2.0) -> tuple[int, int, Transform]:
  """(width, height, transform) for one sketch; the SVG and PNG both use it.

  size=None keeps the data's own units (1 unit = 1 px, as the original
  `draw_strokes`), for raw Quick Draw offsets; pass a size for normalised ones.
  """
  arr = check_strokes(strokes_Nx3)
  if size is None:
    min_x, max_x, min_y, max_y = strokes_lib.bounds(arr)
    m = resolve_margin(margin, max(max_x - min_x, max_y - min_y), stroke_width)
    width = max(1, math.ceil(max_x - min_x + 2 * m))
    height = max(1, math.ceil(max_y - min_y + 2 * m))
    return width, height, Transform(1.0, (width - min_x - max_x) / 2, (height - min_y - max_y) / 2)
  width, height = (int(size),) * 2 if np.ndim(size) == 0 else (int(v) for v in size)
  if width <= 0 or height <= 0:
    raise ValueError(f"size must be positive, got {size!r}")
  m = resolve_margin(margin, min(width, height), stroke_width)
  return width, height, fit_transform(arr, width, height, m)


def _stroke_colors(n_strokes: int, style: Style) -> list[str]:
  return [PALETTE[i % len(PALETTE)] if style.color_by_stroke else style.color
          for i in range(n_strokes)]


def colored_lines(arr_Nx3: np.ndarray, style: Style, start: Optional[int] = None,
                  tail_color: Optional[str] = None) -> list[tuple[np.ndarray, str]]:
  """(absolute polyline, colour) pairs of a checked sketch; rows from `start` on
  (none by default) are drawn in `tail_color`, as a grid's `Highlight` asks."""
  start = len(arr_Nx3) if start is None else start
  head = strokes_lib.stroke3_to_polylines(arr_Nx3[:start])
  out = list(zip(head, _stroke_colors(len(head), style)))
  if start >= len(arr_Nx3):
    return out
  tail = arr_Nx3[start:].copy()
  end_xy = arr_Nx3[:start, 0:2].sum(axis=0)
  tail[0, 0:2] += end_xy  # the tail's offsets continue from where the head stopped
  lines = strokes_lib.stroke3_to_polylines(tail)
  if start > 0 and arr_Nx3[start - 1, 2] < 0.5:  # cut mid-stroke: join the head's last point
    lines[0] = np.concatenate([end_xy[None], lines[0]])
  return out + [(line, tail_color) for line in lines]


def svg_number(v: float) -> str:
  """A number for SVG text. 4 decimals: sub-1e-4 px error, short text; '-0' is written as '0'."""
  text = f"{v:.4f}".rstrip("0").rstrip(".")
  return "0" if text in ("-0", "") else text


def _path_data(points_Kx2: np.ndarray) -> str:
  if len(points_Kx2) == 1:  # zero-length segment: a dot under round caps.
    points_Kx2 = np.repeat(points_Kx2, 2, axis=0)
  return "M " + " L ".join(f"{svg_number(x)} {svg_number(y)}" for x, y in points_Kx2)


def svg_group(lines: list[tuple[np.ndarray, str]], transform: Optional[Transform], style: Style,
              corner: tuple[float, float] = (0.0, 0.0)) -> list[str]:
  """One <g class="sketch"> with a <path> per (polyline, colour), translated to `corner`.

  No lines (an empty sketch or grid cell) give an empty "sketch empty" group;
  `transform` may then be None.
  """
  x, y = (svg_number(v) for v in corner)
  move = f' transform="translate({x} {y})"' if any(corner) else ""
  kind = "sketch" if lines else "sketch empty"
  common = "" if style.color_by_stroke else f" stroke={quoteattr(style.color)}"
  out = [f'<g class="{kind}"{move} fill="none" stroke-width="{svg_number(style.stroke_width)}" '
         f'stroke-linecap="round" stroke-linejoin="round"{common}>']
  for line, color in lines:
    own = f" stroke={quoteattr(color)}" if style.color_by_stroke or color != style.color else ""
    out.append(f'<path d="{_path_data(transform.apply(line))}"{own}/>')
  out.append("</g>")
  return out


def svg_document(width: int, height: int, body: list[str], background: Optional[str]) -> str:
  """A standalone SVG document of `width` x `height` px around the `body` elements."""
  out = ['<?xml version="1.0" encoding="UTF-8"?>',
         f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}">']
  if background:
    out.append(f'<rect width="{width}" height="{height}" fill={quoteattr(background)}/>')
  return "\n".join(out + body + ["</svg>"]) + "\n"


def sketch_to_svg(strokes_Nx3, *, size: Size = None, stroke_width: float = 2.0,
                  color: str = "black", color_by_stroke: bool = False,
                  margin: Optional[float] = None, background: Optional[str] = "white") -> str:
  """A standalone SVG document of one sketch (see `layout` for size and margin)."""
  arr = check_strokes(strokes_Nx3)
  width, height, transform = layout(arr, size, margin, stroke_width)
  style = Style(stroke_width, color, color_by_stroke)
  body = svg_group(colored_lines(arr, style), transform, style)
  return svg_document(width, height, body, background)


def save_svg(svg_text: str, path) -> str:
  """Write an SVG document as UTF-8 (labels such as "τ=0.3" need it); returns the path."""
  path = os.fspath(path)
  with open(path, "w", encoding="utf-8") as f:
    f.write(svg_text)
  return path


def draw_lines(draw: ImageDraw.ImageDraw, lines: list[tuple[np.ndarray, str]],
               transform: Transform, style: Style, corner: tuple[float, float], k: int) -> None:
  """(polyline, colour) pairs onto a k-times supersampled image.

  Canvas coordinates are continuous (pixel i spans [i, i+1)) as in SVG, while
  ImageDraw puts integer coordinates on pixel centres: hence the -0.5.
  """
  width_px = max(1, round(style.stroke_width * k))
  radius = width_px / 2
  for line, color in lines:
    pts_Kx2 = (transform.apply(line) + corner) * k - 0.5
    pts = [tuple(p) for p in pts_Kx2.tolist()]
    if len(pts) > 1:
      draw.line(pts, fill=color, width=width_px, joint="curve")
    if width_px > 2 or len(pts) == 1:  # round caps, and the dot of a one-point stroke.
      for x, y in {pts[0], pts[-1]}:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)


def raster(size: tuple[int, int], background: str, antialias: bool, paint) -> Image.Image:
  """An RGB image of `size`; paint(draw, k) draws on it at k times the size first."""
  k = SUPERSAMPLE if antialias else 1
  image = Image.new("RGB", (size[0] * k, size[1] * k), background)
  paint(ImageDraw.Draw(image), k)
  return image.resize(size, Image.Resampling.LANCZOS) if k > 1 else image


def sketch_to_png(strokes_Nx3, path=None, *, size: Size = 256, stroke_width: float = 2.0,
                  color: str = "black", color_by_stroke: bool = False,
                  margin: Optional[float] = None, background: str = "white",
                  antialias: bool = True) -> Image.Image:
  """An RGB image of exactly `size` px (int = square; None = data units, see `layout`).

  Saved as PNG to `path` when given. An empty sketch gives a blank image.
  """
  arr = check_strokes(strokes_Nx3)
  width, height, transform = layout(arr, size, margin, stroke_width)
  style = Style(stroke_width, color, color_by_stroke)
  lines = colored_lines(arr, style)
  image = raster((width, height), background, antialias,
                 lambda draw, k: draw_lines(draw, lines, transform, style, (0.0, 0.0), k))
  if path is not None:
    image.save(os.fspath(path), format="PNG")
  return image
