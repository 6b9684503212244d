"""Grids of sketches as SVG, PNG and `.npz`, with optional row and column labels.

Each sketch is fitted to its own square cell with `render`'s single-sketch
layout and drawing, so a cell looks as the sketch would alone at that size.

Conventions (besides `render`'s):
  * A cell is a stroke-3 sketch, None (an empty cell), or a `Highlight`. Ragged
    rows are padded with empty cells on the right.
  * Grid pixel size is `grid_size(...)`: cols * cell (+ label_width when row
    labels are given) by rows * cell (+ label_height when column labels are
    given). Sketch groups carry class="sketch" (empty cells "sketch empty").
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional, Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sketch_vae import render

LABEL_WIDTH = 80  # px of the left strip, present only when row labels are given.
LABEL_HEIGHT = 24  # px of the top strip, present only when column labels are given.
FONT_SIZE = 14
FRAME_COLOR = "#dddddd"
DEFAULT_CELL = 128


class Highlight(NamedTuple):
  """A grid cell: one stroke-3 sketch whose rows from `start` on are drawn in `color`.

  For a completed drawing: the given prefix in the grid's colour, the sampled
  continuation in this one. One sketch, so both parts share one fitted
  transform; a continuation that starts mid-stroke joins the prefix's last point.
  """
  strokes: np.ndarray
  start: int
  color: str = "#d62728"


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
    arr = render.check_strokes(cell.strokes, where)
    if not 0 <= int(cell.start) <= len(arr):
      raise ValueError(f"{where}: highlight start {cell.start} is outside 0..{len(arr)}")
    return cell._replace(strokes=arr, start=int(cell.start))
  return render.check_strokes(cell, where)


def _cell_strokes(cell) -> np.ndarray:
  return cell.strokes if isinstance(cell, Highlight) else cell


def _cell_lines(cell, style: render.Style) -> list[tuple[np.ndarray, str]]:
  """(absolute polyline, colour) pairs of a checked cell; a Highlight's tail gets its colour."""
  if cell is None:
    return []
  if isinstance(cell, Highlight):
    return render.colored_lines(cell.strokes, style, cell.start, cell.color)
  return render.colored_lines(cell, style)


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


def _svg_text(x: float, y: float, text: str, kind: str) -> str:
  x, y = render.svg_number(x), render.svg_number(y)
  return (f'<text class="{kind}" x="{x}" y="{y}" font-family="DejaVu Sans, sans-serif" '
          f'font-size="{FONT_SIZE}" text-anchor="middle" dominant-baseline="central">'
          f"{escape(str(text))}</text>")


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
  style = render.Style(stroke_width, color, color_by_stroke)
  body = [_svg_text(x, y, text, kind) for x, y, text, kind in g.labels]
  m = render.resolve_margin(margin, cell, stroke_width)
  for i, row in enumerate(g.grid):
    for j, arr in enumerate(row):
      x0, y0 = g.left + j * cell, g.top + i * cell
      if frame:
        body.append(f'<rect x="{x0 + 0.5}" y="{y0 + 0.5}" width="{cell - 1}" height="{cell - 1}" '
                    f'fill="none" stroke="{FRAME_COLOR}" stroke-width="1"/>')
      transform = None if arr is None else render.fit_transform(_cell_strokes(arr), cell, cell, m)
      body.extend(render.svg_group(_cell_lines(arr, style), transform, style, (x0, y0)))
  return render.svg_document(*g.size, body, background)


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
  style = render.Style(stroke_width, color, color_by_stroke)
  m = render.resolve_margin(margin, cell, stroke_width)
  corners = [(i, j, g.left + j * cell, g.top + i * cell)
             for i in range(len(g.grid)) for j in range(len(g.grid[0]))]

  def paint(draw, k):
    for i, j, x0, y0 in corners:
      if g.grid[i][j] is not None:
        transform = render.fit_transform(_cell_strokes(g.grid[i][j]), cell, cell, m)
        render.draw_lines(draw, _cell_lines(g.grid[i][j], style), transform, style, (x0, y0), k)

  image = render.raster(g.size, background, antialias, paint)
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
  render.save_svg(grid_to_svg(rows, **labels, **style), svg_path)
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
