"""render, render_grid: SVG structure and geometry, PNG pixels, grids, saved files, bad input."""
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image, ImageColor

from sketch_vae import render, render_grid

SVG = "{http://www.w3.org/2000/svg}"
WHITE = (255, 255, 255)

# Three strokes: three points, a one-point stroke, and a last stroke with no lift.
HAND_Nx3 = np.array([[10, 5, 0], [20, 0, 0], [0, 15, 1],
                     [-5, 5, 1],
                     [10, -30, 0], [5, 5, 0]], np.float64)


@pytest.fixture(scope="module")
def sheep(repo_root):
  path = repo_root / "sketch_vae" / "assets" / "data" / "aaron_sheep.npz"
  return np.load(path, allow_pickle=True, encoding="latin1")["test"]


def n_strokes(strokes_Nx3):
  pen = np.asarray(strokes_Nx3)[:, 2]
  return int((pen == 1).sum()) + int(pen[-1] != 1)


def sketch_groups(root):
  return [g for g in root.iter(SVG + "g") if "sketch" in g.get("class", "").split()]


def path_points(d):
  """[K, 2] points of one 'M x y L x y ...' path; exactly one M per path."""
  assert d.count("M") == 1 and d.startswith("M")
  numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
  return np.array(numbers).reshape(-1, 2)


def dots_once(points_Kx2):
  """A one-point stroke is drawn as a zero-length path: keep its point once."""
  return points_Kx2[:1] if len(points_Kx2) == 2 and np.array_equal(*points_Kx2) else points_Kx2


def drawn_points(root):
  """Canvas points of every path, one per sketch point (a dot's repeat dropped)."""
  pts = []
  for path in root.iter(SVG + "path"):
    pts.append(dots_once(path_points(path.get("d"))))
  return np.concatenate(pts)


def test_svg_has_one_path_per_stroke_hand_made():
  svg = render.sketch_to_svg(HAND_Nx3, size=200)
  root = ET.fromstring(svg)
  paths = list(root.iter(SVG + "path"))
  assert len(paths) == n_strokes(HAND_Nx3) == 3
  assert svg.count("M ") == 3
  assert [len(path_points(p.get("d"))) for p in paths] == [3, 2, 2]
  dot = path_points(paths[1].get("d"))
  np.testing.assert_array_equal(dot[0], dot[1])  # zero-length line...
  (group,) = sketch_groups(root)
  assert group.get("stroke-linecap") == "round"  # ...shown as a dot by round caps.


def test_svg_has_one_path_per_stroke_real_sheep(sheep):
  sketch = sheep[0]
  root = ET.fromstring(render.sketch_to_svg(sketch, size=256))
  assert len(list(root.iter(SVG + "path"))) == n_strokes(sketch)
  assert n_strokes(sketch) > 3
  assert root.get("viewBox") == "0 0 256 256"


@pytest.mark.parametrize("size", [None, 200, (300, 120), (90, 400)])
@pytest.mark.parametrize("which", ["hand", "sheep"])
def test_svg_points_are_an_affine_map_of_absolute_points(size, which, sheep):
  sketch = HAND_Nx3 if which == "hand" else sheep[1]
  absolute_Nx2 = np.cumsum(np.asarray(sketch, np.float64)[:, :2], axis=0)
  root = ET.fromstring(render.sketch_to_svg(sketch, size=size, margin=10))
  drawn_Nx2 = drawn_points(root)
  assert drawn_Nx2.shape == absolute_Nx2.shape
  # The reported transform undoes the drawing.
  width, height, transform = render.layout(sketch, size, margin=10)
  np.testing.assert_allclose(transform.invert(drawn_Nx2), absolute_Nx2, atol=1e-3)
  # Independently: one positive scale for both axes (no flip, aspect kept) and an offset.
  n = len(absolute_Nx2)
  a = np.zeros((2 * n, 3))
  a[:n, 0], a[n:, 0] = absolute_Nx2[:, 0], absolute_Nx2[:, 1]
  a[:n, 1], a[n:, 2] = 1.0, 1.0
  (scale, tx, ty), *_ = np.linalg.lstsq(a, drawn_Nx2.T.reshape(-1), rcond=None)
  assert scale > 0
  np.testing.assert_allclose((drawn_Nx2 - (tx, ty)) / scale, absolute_Nx2, atol=1e-3)
  # The picture is centred in the viewBox and fills it up to the margin on one axis.
  assert root.get("viewBox") == f"0 0 {width} {height}"
  corners = np.vstack([drawn_Nx2, [tx, ty]])  # bounds include the origin.
  low, high = corners.min(axis=0), corners.max(axis=0)
  np.testing.assert_allclose((low + high) / 2, (width / 2, height / 2), atol=1e-3)
  if size is None:
    assert scale == pytest.approx(1.0)
  else:
    room = np.array([width, height]) - 20
    assert np.all(high - low <= room + 1e-3)
    assert np.isclose(high - low, room, atol=1e-3).any()


def test_int_and_float_input_draw_the_same(sheep):
  sketch = sheep[2]
  assert sketch.dtype.kind == "i"
  assert render.sketch_to_svg(sketch, size=128) == render.sketch_to_svg(
      sketch.astype(np.float32), size=128)


def test_png_has_exact_size_and_draws_a_horizontal_line(tmp_path):
  line = np.array([[0, 0, 0], [100, 0, 1]])
  image = render.sketch_to_png(line, tmp_path / "line.png", size=(64, 48))
  assert image.size == (64, 48) and image.mode == "RGB"
  assert Image.open(tmp_path / "line.png").size == (64, 48)
  gray = np.asarray(image.convert("L"))
  assert (gray[24, 10:54] < 100).all()  # the line lies in the middle row...
  assert (gray[:20] == 255).all() and (gray[29:] == 255).all()  # ...and nowhere else.
  for y, x in [(0, 0), (0, 63), (47, 0), (47, 63)]:
    assert tuple(image.getpixel((x, y))) == WHITE
  assert render.sketch_to_png(line, None, size=50).size == (50, 50)


def test_png_draws_a_vertical_line_in_the_middle_column():
  gray = np.asarray(render.sketch_to_png([[0, 0, 0], [0, 100, 1]], size=40).convert("L"))
  assert (gray[8:32, 20] < 100).all()
  assert (gray[:, :16] == 255).all() and (gray[:, 25:] == 255).all()


def test_png_draws_dots_and_a_last_stroke_without_lift():
  # A dot far below a line, then a vertical last stroke with no final pen lift.
  sketch = np.array([[0, 0, 0], [100, 0, 1], [-50, 60, 1], [50, -60, 0], [0, 60, 0]])
  width, height, transform = render.layout(sketch, 100)
  gray = np.asarray(render.sketch_to_png(sketch, size=100, stroke_width=4).convert("L"))
  dot_x, dot_y = transform.apply([[50, 60]])[0]
  assert gray[int(dot_y), int(dot_x)] < 128
  end_x, end_y = transform.apply([[100, 30]])[0]  # middle of the last stroke.
  assert gray[int(end_y), int(end_x) - 1] < 128


@pytest.mark.parametrize("empty", [np.zeros((0, 3)), [], np.zeros((0, 3), np.int16)])
def test_empty_sketch_gives_blank_png_and_empty_svg(empty):
  image = render.sketch_to_png(empty, size=(30, 20))
  assert image.size == (30, 20)
  assert (np.asarray(image) == 255).all()
  root = ET.fromstring(render.sketch_to_svg(empty, size=30))
  assert list(root.iter(SVG + "path")) == []


def test_grid_svg_has_a_group_per_cell_and_the_labels(sheep):
  rows = [[sheep[0], sheep[1], sheep[2]], [sheep[3], None, HAND_Nx3]]
  row_labels, col_labels = ["τ=0.3", "τ=0.6"], ["a", "b<&>", "c"]
  cell = 100
  root = ET.fromstring(render_grid.grid_to_svg(rows, row_labels=row_labels,
                                               col_labels=col_labels, cell=cell, margin=5))
  width, height = render_grid.grid_size(2, 3, cell, row_labels=True, col_labels=True)
  assert (int(root.get("width")), int(root.get("height"))) == (width, height)
  groups = sketch_groups(root)
  assert len(groups) == 6
  assert [("empty" in g.get("class")) for g in groups] == [False] * 4 + [True, False]
  texts = {t.get("class"): [] for t in root.iter(SVG + "text")}
  for t in root.iter(SVG + "text"):
    texts[t.get("class")].append(t.text)
  assert texts == {"row-label": row_labels, "col-label": col_labels}
  cells = [s for row in rows for s in row]
  for group, sketch, (i, j) in zip(groups, cells, np.ndindex(2, 3)):
    paths = list(group.iter(SVG + "path"))
    assert len(paths) == (0 if sketch is None else n_strokes(sketch))
    if sketch is None:
      continue
    tx, ty = map(float, re.findall(r"-?[\d.]+", group.get("transform")))
    assert (tx, ty) == (render_grid.LABEL_WIDTH + j * cell, render_grid.LABEL_HEIGHT + i * cell)
    # Each sketch is fitted to its own cell: inside the margin, and filling most of it.
    pts = np.concatenate([path_points(p.get("d")) for p in paths])
    assert pts.min() >= 5 - 1e-3 and pts.max() <= cell - 5 + 1e-3
    assert (pts.max(axis=0) - pts.min(axis=0)).max() > 0.6 * (cell - 10)


def test_grid_png_has_the_documented_size(sheep):
  rows = [[sheep[0], sheep[1], None], [sheep[2]]]  # ragged: padded with an empty cell.
  cell = 64
  image = render_grid.grid_to_png(rows, cell=cell, row_labels=["x", "y"],
                                  col_labels=["1", "2", "3"])
  assert image.size == (3 * cell + render_grid.LABEL_WIDTH, 2 * cell + render_grid.LABEL_HEIGHT)
  assert image.size == render_grid.grid_size(2, 3, cell, row_labels=True, col_labels=True)
  plain = render_grid.grid_to_png(rows, cell=cell)
  assert plain.size == (3 * cell, 2 * cell) == render_grid.grid_size(2, 3, cell)
  gray = np.asarray(plain.convert("L"))
  assert (gray[2:cell - 2, 2:cell - 2] < 100).any()  # a drawn cell has ink...
  assert (gray[2:cell - 2, 2 * cell + 2:3 * cell - 2] == 255).all()  # ...an empty one none.
  assert (gray[cell + 2:2 * cell - 2, cell + 2:2 * cell - 2] == 255).all()
  labelled = np.asarray(image.convert("L"))
  row_strip = labelled[render_grid.LABEL_HEIGHT:, :render_grid.LABEL_WIDTH]
  assert (row_strip < 128).any()  # row label text.
  wide = render_grid.grid_to_png(rows, cell=cell, row_labels=["x", "y"], label_width=30)
  assert wide.size == (3 * cell + 30, 2 * cell)


def test_color_by_stroke_gives_distinct_colors():
  three_lines = np.array([[0, 0, 0], [100, 0, 1], [-100, 40, 0], [100, 0, 1],
                          [-100, 40, 0], [100, 0, 1]])
  root = ET.fromstring(render.sketch_to_svg(three_lines, size=100, color_by_stroke=True))
  colors = [p.get("stroke") for p in root.iter(SVG + "path")]
  assert len(set(colors)) == 3 and colors == list(render.PALETTE[:3])
  plain = ET.fromstring(render.sketch_to_svg(three_lines, size=100, color="red"))
  assert [p.get("stroke") for p in plain.iter(SVG + "path")] == [None] * 3
  assert sketch_groups(plain)[0].get("stroke") == "red"
  image = render.sketch_to_png(three_lines, size=100, color_by_stroke=True, stroke_width=4,
                               antialias=False)
  _, _, transform = render.layout(three_lines, 100, stroke_width=4)
  for i, y in enumerate([0, 40, 80]):
    x, v = transform.apply([[50, y]])[0]
    assert image.getpixel((int(x), int(v))) == ImageColor.getrgb(render.PALETTE[i])


def test_save_sketches_writes_three_files_and_the_strokes_round_trip(tmp_path, sheep):
  same_shape = np.arange(9, dtype=np.float32).reshape(3, 3) % 2
  rows = [[sheep[0], None], [same_shape, same_shape + 1], [sheep[5]]]
  paths = render_grid.save_sketches(tmp_path / "out" / "grid", rows,
                                    row_labels=["a", "b", "τ=1"], cell=50)
  assert [p.rsplit(".", 1)[1] for p in paths] == ["svg", "png", "npz"]
  svg_path, png_path, npz_path = paths
  assert len(sketch_groups(ET.parse(svg_path).getroot())) == 6
  assert Image.open(png_path).size == render_grid.grid_size(3, 2, 50, row_labels=True)
  data = np.load(npz_path, allow_pickle=True, encoding="latin1")
  strokes = data["strokes"]
  assert strokes.dtype == object and strokes.shape == (4,)
  expected = [sheep[0], same_shape, same_shape + 1, sheep[5]]
  for got, want in zip(strokes, expected):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(data["grid_index"], [[0, 0], [1, 0], [1, 1], [2, 0]])
  np.testing.assert_array_equal(data["grid_shape"], [3, 2])
  assert data["row_labels"].tolist() == ["a", "b", "τ=1"]
  assert "col_labels" not in data.files


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_offsets_raise_a_clear_error(bad):
  sketch = HAND_Nx3.copy()
  sketch[3, 1] = bad
  with pytest.raises(ValueError, match=r"non-finite.*NaN or inf.*\[3\]"):
    render.sketch_to_svg(sketch)
  with pytest.raises(ValueError, match="non-finite"):
    render.sketch_to_png(sketch, None)
  with pytest.raises(ValueError, match="row 1, column 0: non-finite"):
    render_grid.grid_to_png([[HAND_Nx3], [sketch]])


def test_bad_shapes_and_labels_raise():
  with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
    render.sketch_to_svg(np.zeros((4, 5)))
  with pytest.raises(ValueError, match="1 row labels for 2 rows"):
    render_grid.grid_to_svg([[HAND_Nx3], [HAND_Nx3]], row_labels=["x"])
  with pytest.raises(ValueError, match="rows is empty"):
    render_grid.grid_to_png([])


@pytest.mark.parametrize("start", [2, 3])  # 2 cuts the first stroke; 3 follows a pen lift.
def test_highlight_draws_the_tail_in_its_colour_in_the_same_frame(start, tmp_path):
  absolute_Nx2 = np.cumsum(HAND_Nx3[:, :2], axis=0)
  cell = render_grid.Highlight(HAND_Nx3, start, "#ff0000")
  root = ET.fromstring(render_grid.grid_to_svg([[HAND_Nx3, cell]], cell=100, margin=5,
                                               frame=False))
  plain_group, lit_group = sketch_groups(root)
  assert lit_group.get("stroke") == "black"
  paths = [(dots_once(path_points(p.get("d"))), p.get("stroke")) for p in lit_group.iter(SVG + "path")]
  assert {color for _, color in paths} == {None, "#ff0000"}  # None: the group's black.
  head = np.concatenate([pts for pts, color in paths if color is None])
  tail = np.concatenate([pts for pts, color in paths if color == "#ff0000"])
  # Same fitted transform as the plain sketch: every point lands where it does there.
  transform = render.fit_transform(HAND_Nx3, 100, 100, 5)
  expected_Nx2 = transform.apply(absolute_Nx2)
  np.testing.assert_allclose(drawn_points(plain_group), expected_Nx2, atol=1e-3)
  np.testing.assert_allclose(head, expected_Nx2[:start], atol=1e-3)
  if start == 2:  # cut mid-stroke: the tail starts at the head's last point, unbroken.
    np.testing.assert_allclose(tail[0], expected_Nx2[start - 1], atol=1e-3)
    tail = tail[1:]
  np.testing.assert_allclose(tail, expected_Nx2[start:], atol=1e-3)
  # The PNG shows both colours; the npz keeps the whole sketch and the start.
  _, png_path, npz_path = render_grid.save_sketches(tmp_path / "lit", [[cell, HAND_Nx3]],
                                                    cell=100, stroke_width=4)
  pixels = np.asarray(Image.open(png_path).convert("RGB")).reshape(-1, 3).astype(int)
  assert ((pixels[:, 0] > 200) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)).sum() > 20
  assert (pixels.max(axis=1) < 60).sum() > 20
  data = np.load(npz_path, allow_pickle=True)
  np.testing.assert_array_equal(data["strokes"][0], HAND_Nx3)
  np.testing.assert_array_equal(data["highlight_start"], [start, -1])


def test_highlight_start_must_lie_in_the_sketch():
  with pytest.raises(ValueError, match="highlight start 7 is outside 0..6"):
    render_grid.grid_to_svg([[render_grid.Highlight(HAND_Nx3, 7)]])
