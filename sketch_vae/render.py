"""Sketches as SVG documents and PNG images, without a browser (NumPy + Pillow only).

Launchers write samples, sweeps and interpolations on headless machines, so
rendering needs nothing beyond NumPy and Pillow. SVG and PNG share one layout
(`Transform`), so a point lands at the same place in both.

Conventions:
  * Input is stroke-3 (see `strokes`): rows (dx, dy, p), p = 1 lifts the pen
    after the point. A last stroke without a pen lift is still drawn.
  * y grows downward in sketch-rnn data as in SVG and images, so (x, y) is drawn
    as is; the original `draw_strokes` does not flip either.
  * A drawing is fitted with one uniform scale and an offset, from
    `strokes.bounds`, which includes the origin like the original `get_bounds`.
  * Each pen-down stroke is one SVG <path> "M x y L x y ...". A one-point stroke
    is a zero-length path, which round line caps show as a dot.
  * Grid pixel size is `grid_size(...)`: cols * cell (+ label_width when row
    labels are given) by rows * cell (+ label_height when column labels are
    given). Sketch groups carry class="sketch" (empty cells "sketch empty").

Shape letters: N = points in one sketch, K = points in one stroke.
"""
from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple, Optional, Sequence, Union
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sketch_vae import strokes as strokes_lib

# Distinct hues that read on white; `color_by_stroke` cycles through them, so
# colours are distinct for the first len(PALETTE) strokes of a sketch.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#000080", "#808000")
LABEL_WIDTH = 80  # px of the left strip, present only when row labels are given.
LABEL_HEIGHT = 24  # px of the top strip, present only when column labels are given.
FONT_SIZE = 14
FRAME_COLOR = "#dddddd"
# PNGs are drawn this many times larger and downsampled with LANCZOS, which is
# the cheapest antialiasing ImageDraw allows (it has no antialiased lines).
SUPERSAMPLE = 2
DEFAULT_CELL = 128

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


class Highlight(NamedTuple):
  """A grid cell: one stroke-3 sketch whose rows from `start` on are drawn in `color`.

  For a completed drawing: the given prefix in the grid's colour, the sampled
  continuation in this one. One sketch, so both parts share one fitted
  transform; a continuation that starts mid-stroke joins the prefix's last point.
  """
  strokes: np.ndarray
  start: int
  color: str = "#d62728"


class _Style(NamedTuple):
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


def _margin(margin: Optional[float], side: float, stroke_width: float) -> float:
  """The default keeps half a line plus 5% of the side clear of the border."""
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
    m = _margin(margin, max(max_x - min_x, max_y - min_y), stroke_width)
    width = max(1, math.ceil(max_x - min_x + 2 * m))
    height = max(1, math.ceil(max_y - min_y + 2 * m))
    return width, height, Transform(1.0, (width - min_x - max_x) / 2, (height - min_y - max_y) / 2)
  width, height = (int(size),) * 2 if np.ndim(size) == 0 else (int(v) for v in size)
  if width <= 0 or height <= 0:
    raise ValueError(f"size must be positive, got {size!r}")
  m = _margin(margin, min(width, height), stroke_width)
  return width, height, fit_transform(arr, width, height, m)


def grid_size(n_rows: int, n_cols: int, cell: int = DEFAULT_CELL, *, row_labels: bool = False,
              col_labels: bool = False, label_width: int = LABEL_WIDTH,
              label_height: int = LABEL_HEIGHT) -> tuple[int, int]:
  """(width, height) in px of a grid image: cells plus the label strips in use."""
  return (n_cols * cell + (label_width if row_labels else 0),
          n_rows * cell + (label_height if col_labels else 0))


class _GridLayout(NamedTuple):
  grid: list  # rows of checked [N, 3] arrays or None, padded to equal length.
  left: int  # width of the row-label strip (0 without row labels).
  top: int  # height of the column-label strip (0 without column labels).
  size: tuple  # (width, height) of the whole grid.
  labels: list  # (x, y, text, kind) of every label's centre.


def _check_cell(cell, where: str):
  """None, a checked [N, 3] array, or a Highlight holding one."""
  if cell is None:
    return None
  if isinstance(cell, Highlight):
    arr = check_strokes(cell.strokes, where)
    if not 0 <= int(cell.start) <= len(arr):
      raise ValueError(f"{where}: highlight start {cell.start} is outside 0..{len(arr)}")
    return cell._replace(strokes=arr, start=int(cell.start))
  return check_strokes(cell, where)


def _cell_strokes(cell) -> np.ndarray:
  return cell.strokes if isinstance(cell, Highlight) else cell


def _grid_layout(rows, row_labels, col_labels, cell, label_width, label_height) -> _GridLayout:
  """Checked cells, ragged rows padded with empty cells, strips and label places."""
  if len(rows) == 0:
    raise ValueError("rows is empty: a grid needs at least one row")
  n_cols = max(len(row) for row in rows)
  if n_cols == 0:
    raise ValueError("every row is empty: a grid needs at least one column")
  grid = [[_check_cell(s, f"row {i}, column {j}") for j, s in enumerate(row)]
          + [None] * (n_cols - len(row)) for i, row in enumerate(rows)]
  if row_labels is not None and len(row_labels) != len(grid):
    raise ValueError(f"{len(row_labels)} row labels for {len(grid)} rows")
  if col_labels is not None and len(col_labels) != n_cols:
    raise ValueError(f"{len(col_labels)} column labels for {n_cols} columns")
  left = label_width if row_labels is not None else 0
  top = label_height if col_labels is not None else 0
  size = (left + n_cols * cell, top + len(grid) * cell)  # = grid_size(...)
  labels = [(left + (j + 0.5) * cell, top / 2, str(t), "col-label")
            for j, t in enumerate(col_labels or [])]
  labels += [(left / 2, top + (i + 0.5) * cell, str(t), "row-label")
             for i, t in enumerate(row_labels or [])]
  return _GridLayout(grid, left, top, size, labels)


def _stroke_colors(n_strokes: int, style: _Style) -> list[str]:
  return [PALETTE[i % len(PALETTE)] if style.color_by_stroke else style.color
          for i in range(n_strokes)]


def _colored_lines(cell, style: _Style) -> list[tuple[np.ndarray, str]]:
  """(absolute polyline, colour) pairs of a cell; a Highlight's tail gets its colour."""
  arr, start = (cell.strokes, cell.start) if isinstance(cell, Highlight) else (cell, len(cell))
  head = strokes_lib.stroke3_to_polylines(arr[:start])
  out = list(zip(head, _stroke_colors(len(head), style)))
  if start >= len(arr):
    return out
  tail = arr[start:].copy()
  end_xy = arr[:start, 0:2].sum(axis=0)
  tail[0, 0:2] += end_xy  # the tail's offsets continue from where the head stopped
  lines = strokes_lib.stroke3_to_polylines(tail)
  if start > 0 and arr[start - 1, 2] < 0.5:  # cut mid-stroke: join the head's last point
    lines[0] = np.concatenate([end_xy[None], lines[0]])
  return out + [(line, cell.color) for line in lines]


def _num(v: float) -> str:
  """4 decimals: sub-1e-4 px error, short text; '-0' is written as '0'."""
  text = f"{v:.4f}".rstrip("0").rstrip(".")
  return "0" if text in ("-0", "") else text


def _path_data(points_Kx2: np.ndarray) -> str:
  if len(points_Kx2) == 1:  # zero-length segment: a dot under round caps.
    points_Kx2 = np.repeat(points_Kx2, 2, axis=0)
  return "M " + " L ".join(f"{_num(x)} {_num(y)}" for x, y in points_Kx2)


def _svg_sketch(arr: Optional[np.ndarray], transform: Optional[Transform], style: _Style,
                corner: tuple[float, float] = (0.0, 0.0)) -> list[str]:
  """One <g class="sketch"> with a <path> per stroke, translated to `corner`."""
  move = f' transform="translate({_num(corner[0])} {_num(corner[1])})"' if any(corner) else ""
  lines = [] if arr is None else _colored_lines(arr, style)
  kind = "sketch" if lines else "sketch empty"
  common = "" if style.color_by_stroke else f" stroke={quoteattr(style.color)}"
  out = [f'<g class="{kind}"{move} fill="none" stroke-width="{_num(style.stroke_width)}" '
         f'stroke-linecap="round" stroke-linejoin="round"{common}>']
  for line, color in lines:
    own = f" stroke={quoteattr(color)}" if style.color_by_stroke or color != style.color else ""
    out.append(f'<path d="{_path_data(transform.apply(line))}"{own}/>')
  out.append("</g>")
  return out


def _svg_document(width: int, height: int, body: list[str], background: Optional[str]) -> str:
  out = ['<?xml version="1.0" encoding="UTF-8"?>',
         f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}">']
  if background:
    out.append(f'<rect width="{width}" height="{height}" fill={quoteattr(background)}/>')
  return "\n".join(out + body + ["</svg>"]) + "\n"


def _svg_text(x: float, y: float, text: str, kind: str) -> str:
  return (f'<text class="{kind}" x="{_num(x)}" y="{_num(y)}" font-family="DejaVu Sans, sans-serif" '
          f'font-size="{FONT_SIZE}" text-anchor="middle" dominant-baseline="central">'
          f"{escape(str(text))}</text>")


def sketch_to_svg(strokes_Nx3, *, size: Size = None, stroke_width: float = 2.0,
                  color: str = "black", color_by_stroke: bool = False,
                  margin: Optional[float] = None, background: Optional[str] = "white") -> str:
  """A standalone SVG document of one sketch (see `layout` for size and margin)."""
  arr = check_strokes(strokes_Nx3)
  width, height, transform = layout(arr, size, margin, stroke_width)
  body = _svg_sketch(arr, transform, _Style(stroke_width, color, color_by_stroke))
  return _svg_document(width, height, body, background)


def grid_to_svg(rows, *, row_labels: Optional[Sequence[str]] = None,
                col_labels: Optional[Sequence[str]] = None, cell: int = DEFAULT_CELL,
                stroke_width: float = 2.0, color: str = "black", color_by_stroke: bool = False,
                margin: Optional[float] = None, background: Optional[str] = "white",
                frame: bool = True, label_width: int = LABEL_WIDTH,
                label_height: int = LABEL_HEIGHT) -> str:
  """A grid of sketches, each fitted to its own square cell; None is an empty cell.

  Used for one row per temperature, per interpolation, per input sketch.
  """
  g = _grid_layout(rows, row_labels, col_labels, cell, label_width, label_height)
  style = _Style(stroke_width, color, color_by_stroke)
  body = [_svg_text(x, y, text, kind) for x, y, text, kind in g.labels]
  m = _margin(margin, cell, stroke_width)
  for i, row in enumerate(g.grid):
    for j, arr in enumerate(row):
      x0, y0 = g.left + j * cell, g.top + i * cell
      if frame:
        body.append(f'<rect x="{x0 + 0.5}" y="{y0 + 0.5}" width="{cell - 1}" height="{cell - 1}" '
                    f'fill="none" stroke="{FRAME_COLOR}" stroke-width="1"/>')
      transform = None if arr is None else fit_transform(_cell_strokes(arr), cell, cell, m)
      body.extend(_svg_sketch(arr, transform, style, (x0, y0)))
  return _svg_document(*g.size, body, background)


def save_svg(svg_text: str, path) -> str:
  """Write an SVG document as UTF-8 (labels such as "τ=0.3" need it); returns the path."""
  path = os.fspath(path)
  with open(path, "w", encoding="utf-8") as f:
    f.write(svg_text)
  return path


def _draw_sketch(draw: ImageDraw.ImageDraw, arr: np.ndarray, transform: Transform,
                 style: _Style, corner: tuple[float, float], k: int) -> None:
  """Strokes onto a k-times supersampled image.

  Canvas coordinates are continuous (pixel i spans [i, i+1)) as in SVG, while
  ImageDraw puts integer coordinates on pixel centres: hence the -0.5.
  """
  width_px = max(1, round(style.stroke_width * k))
  radius = width_px / 2
  for line, color in _colored_lines(arr, style):
    pts_Kx2 = (transform.apply(line) + corner) * k - 0.5
    pts = [tuple(p) for p in pts_Kx2.tolist()]
    if len(pts) > 1:
      draw.line(pts, fill=color, width=width_px, joint="curve")
    if width_px > 2 or len(pts) == 1:  # round caps, and the dot of a one-point stroke.
      for x, y in {pts[0], pts[-1]}:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)


def _raster(size: tuple[int, int], background: str, antialias: bool, paint) -> Image.Image:
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
  style = _Style(stroke_width, color, color_by_stroke)
  image = _raster((width, height), background, antialias,
                  lambda draw, k: _draw_sketch(draw, arr, transform, style, (0.0, 0.0), k))
  if path is not None:
    image.save(os.fspath(path), format="PNG")
  return image


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
  """DejaVu Sans covers Greek (τ); Pillow's built-in font is the fallback."""
  try:
    return ImageFont.truetype("DejaVuSans.ttf", size)
  except OSError:
    return ImageFont.load_default(size)


def grid_to_png(rows, path=None, *, row_labels: Optional[Sequence[str]] = None,
                col_labels: Optional[Sequence[str]] = None, cell: int = DEFAULT_CELL,
                stroke_width: float = 2.0, color: str = "black", color_by_stroke: bool = False,
                margin: Optional[float] = None, background: str = "white", frame: bool = True,
                label_width: int = LABEL_WIDTH, label_height: int = LABEL_HEIGHT,
                antialias: bool = True) -> Image.Image:
  """The `grid_to_svg` layout as an RGB image of exactly `grid_size(...)` px."""
  g = _grid_layout(rows, row_labels, col_labels, cell, label_width, label_height)
  style = _Style(stroke_width, color, color_by_stroke)
  m = _margin(margin, cell, stroke_width)
  corners = [(i, j, g.left + j * cell, g.top + i * cell)
             for i in range(len(g.grid)) for j in range(len(g.grid[0]))]

  def paint(draw, k):
    for i, j, x0, y0 in corners:
      if g.grid[i][j] is not None:
        transform = fit_transform(_cell_strokes(g.grid[i][j]), cell, cell, m)
        _draw_sketch(draw, g.grid[i][j], transform, style, (x0, y0), k)

  image = _raster(g.size, background, antialias, paint)
  # Frames and text go on after downsampling, so they stay crisp.
  draw = ImageDraw.Draw(image)
  for _, _, x0, y0 in corners if frame else []:
    draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline=FRAME_COLOR)
  for x, y, text, _ in g.labels:
    draw.text((x, y), text, fill="black", font=_font(FONT_SIZE), anchor="mm")
  if path is not None:
    image.save(os.fspath(path), format="PNG")
  return image


def save_sketches(path_prefix, rows, *, row_labels: Optional[Sequence[str]] = None,
                  col_labels: Optional[Sequence[str]] = None, cell: int = DEFAULT_CELL,
                  **style) -> tuple[str, str, str]:
  """Write prefix.svg, prefix.png and prefix.npz for a grid; returns the three paths.

  The .npz keeps the raw strokes the sketch-rnn way, so a picture can be redrawn
  or re-scored later: `strokes` is a 1-d object array of the non-empty cells in
  row-major order, each as given (dtype kept); `grid_index` [n, 2] holds their
  (row, column) and `grid_shape` the grid's (rows, columns); `row_labels` and
  `col_labels` are present when given; `highlight_start` [n] (a Highlight's
  `start`, -1 for plain cells) when any cell is a Highlight. Load with
  allow_pickle=True. `style` goes to both `grid_to_svg` and `grid_to_png`.
  """
  grid = _grid_layout(rows, row_labels, col_labels, cell, 0, 0).grid  # fail before writing.
  prefix = os.fspath(path_prefix)
  if os.path.dirname(prefix):
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
  svg_path, png_path, npz_path = prefix + ".svg", prefix + ".png", prefix + ".npz"
  labels = dict(row_labels=row_labels, col_labels=col_labels, cell=cell)
  save_svg(grid_to_svg(rows, **labels, **style), svg_path)
  grid_to_png(rows, png_path, **labels, **style)
  cells = [(i, j) for i, row in enumerate(grid) for j, arr in enumerate(row) if arr is not None]
  strokes = np.empty(len(cells), dtype=object)  # object array even if shapes agree.
  for n, (i, j) in enumerate(cells):
    strokes[n] = np.asarray(_cell_strokes(rows[i][j]))
  arrays = dict(strokes=strokes, grid_index=np.array(cells, np.int32).reshape(-1, 2),
                grid_shape=np.array([len(grid), len(grid[0])], np.int32))
  starts = [grid[i][j].start if isinstance(grid[i][j], Highlight) else -1 for i, j in cells]
  if any(start >= 0 for start in starts):
    arrays["highlight_start"] = np.array(starts, np.int32)
  for key, texts in (("row_labels", row_labels), ("col_labels", col_labels)):
    if texts is not None:
      arrays[key] = np.array([str(t) for t in texts], dtype=str)
  np.savez(npz_path, **arrays)
  return svg_path, png_path, npz_path
