"""Gaps found by mutation testing of the data, sampling, rendering and browser-format modules.

Each test pins one behaviour that a small change to the code left every other test passing;
the expected values are worked by hand or restated in NumPy, not read from the code.
"""
import base64
import json
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketch_vae import browser, canvas, config as config_lib, data, evaluation, mdn, model
from sketch_vae import pretrained, quickdraw, quickdraw_dataset, render, render_grid, sample
from sketch_vae import strokes
from conftest import write_lines

SVG = "{http://www.w3.org/2000/svg}"
TINY = [[[0, 10, 20, 30], [0, 1, 5, 0]], [[5, 5], [10, 30]]]  # test_quickdraw's hand-made drawing


def _write_npz(path, train, valid, test):
  def obj(seq):
    arr = np.empty(len(seq), dtype=object)
    for i, s in enumerate(seq):
      arr[i] = np.asarray(s, np.int16)
    return arr
  np.savez(path, train=obj(train), valid=obj(valid), test=obj(test))
  return str(path)


# ----------------------------------------------------------------------------
# strokes.py / data.py


def test_sketch_of_exactly_max_len_points_fills_every_row():
  # n == max_len is allowed: rows 1..n hold the sketch and no end row is left.
  s3 = np.array([[3, 1, 0], [-2, 4, 1], [5, 5, 1]], np.int16)
  s5 = strokes.to_stroke5(s3, max_len=3)
  np.testing.assert_array_equal(s5, [[0, 0, 1, 0, 0], [3, 1, 1, 0, 0], [-2, 4, 0, 1, 0],
                                     [5, 5, 0, 1, 0]])
  np.testing.assert_array_equal(strokes.stroke5_to_stroke3(s5[1:]), s3)
  batch, lengths = strokes.pad_batch([s3, s3[:1]], max_len=3)
  assert batch.shape == (2, 4, 5) and list(lengths) == [3, 1]


def test_n_max_is_the_longest_kept_sketch_of_any_split(tmp_path):
  # The valid split holds the longest sketch: N_max must cover it (the original's
  # max_seq_len is the longest sketch over all splits), or its batches cannot be padded.
  train = [[[1, 0, 0], [0, 1, 1]]] * 3
  valid = [[[1, 1, 0]] * 4 + [[2, 2, 1]]]
  test = [[[1, 0, 0], [1, 1, 0], [0, 1, 1]]]
  ds = data.load(_write_npz(tmp_path / "d.npz", train, valid, test), max_seq_len=10)
  assert ds.facts.max_seq_len == 5
  (batch, lengths, _), = data.eval_batches(ds.splits["valid"], 2, ds.facts.max_seq_len)
  assert lengths[0] == 5 and batch.shape == (2, 6, 5)


def _augment_strokes_reference(s, draws, prob):
  """magenta utils.augment_strokes, restated: `draws` are its np.random.rand() values."""
  result, prev, count, stroke = [], [0, 0, 1], 0, None
  for i in range(len(s)):
    cand = [float(s[i][0]), float(s[i][1]), float(s[i][2])]
    count = 0 if (cand[2] == 1 or prev[2] == 1) else count + 1
    if cand[2] == 0 and prev[2] == 0 and count > 2 and draws[i] < prob:
      stroke[0] += cand[0]
      stroke[1] += cand[1]
    else:
      stroke = cand
      prev = stroke
      result.append(stroke)
  return np.array(result, np.float32).reshape(-1, 3)


def test_merge_points_merges_from_the_fourth_point_of_a_stroke_on():
  # prob = 1, worked by hand: points 0-2 of each stroke stay, later pen-down points are
  # added into the third; pen lifts stay.
  s = np.array([[1, 0, 0]] * 8 + [[0, 1, 1]] + [[2, 0, 0]] * 5 + [[0, 0, 1]], np.float32)
  merged = data.merge_points(s, np.random.default_rng(0), prob=1.0)
  np.testing.assert_array_equal(merged, [[1, 0, 0], [1, 0, 0], [6, 0, 0], [0, 1, 1],
                                         [2, 0, 0], [2, 0, 0], [6, 0, 0], [0, 0, 1]])
  # And on random sketches at p = 0.5, the original's loop with the same uniform draws.
  rng = np.random.default_rng(3)
  for _ in range(20):
    n = int(rng.integers(1, 40))
    sk = np.concatenate([rng.integers(-5, 6, (n, 2)), (rng.random((n, 1)) < 0.2)], 1)
    sk = sk.astype(np.float32)
    draws = np.random.default_rng(11).random(n)
    got = data.merge_points(sk, np.random.default_rng(11), prob=0.5)
    np.testing.assert_array_equal(got, _augment_strokes_reference(sk, draws, 0.5))


def test_each_epoch_visits_the_split_in_a_new_order():
  sketches = [np.array([[i, 0, 1]], np.float32) for i in range(12)]
  b = data.Batcher(sketches, data.BatchSpec(batch_size=4, max_seq_len=1), seed=0)
  orders = [np.concatenate([b.train_indices(e * 3 + k) for k in range(3)]) for e in range(4)]
  for order in orders:
    np.testing.assert_array_equal(np.sort(order), np.arange(12))  # a whole epoch, once each
  assert len({o.tobytes() for o in orders}) == 4  # reshuffled every epoch


# ----------------------------------------------------------------------------
# quickdraw.py / quickdraw_dataset.py


def test_rdp_epsilon_is_the_one_asked_for():
  d = quickdraw.parse_drawing(TINY, "tiny")
  # epsilon 10: (20, 5) is 5 from the chord (0,0)-(30,0), so it goes as well.
  np.testing.assert_array_equal(quickdraw.to_stroke3(d, epsilon=10.0),
                                [[0, 0, 0], [30, 0, 1], [-25, 10, 0], [0, 20, 1]])
  # epsilon 0.5: (10, 1) is 1.46 from (0,0)-(20,5), so every point stays.
  np.testing.assert_array_equal(quickdraw.to_stroke3(d, epsilon=0.5),
                                [[0, 0, 0], [10, 1, 0], [10, 4, 0], [10, -5, 1], [-25, 10, 0],
                                 [0, 20, 1]])


def test_same_points_cut_into_other_strokes_are_not_duplicates(tmp_path):
  a = [[[0, 1], [0, 1]], [[2], [2]]]  # strokes of 2 and 1 points
  b = [[[0], [0]], [[1, 2], [1, 2]]]  # the same points, strokes of 1 and 2
  da, db = quickdraw.parse_drawing(a, "a"), quickdraw.parse_drawing(b, "b")
  assert da.content_key() != db.content_key()
  assert da.content_key() == quickdraw.parse_drawing(a, "again").content_key()
  path = write_lines(tmp_path / "x.ndjson", [json.dumps({"drawing": a}), json.dumps({"drawing": b}),
                                             json.dumps({"drawing": a})])
  _, report = quickdraw_dataset.convert(path, valid=0, test=0)
  assert (report.kept, report.dropped) == (2, {"duplicate": 1})


def test_offsets_of_exactly_int16_max_fit():
  ok = quickdraw.parse_drawing([[[0, 32767], [0, -32767], [0, 1]]], "raw")
  np.testing.assert_array_equal(quickdraw.to_stroke3(ok, None, False, raw_size=None),
                                [[0, 0, 0], [32767, -32767, 1]])
  too_far = quickdraw.parse_drawing([[[0, 32768], [0, 0], [0, 1]]], "raw")
  with pytest.raises(quickdraw.QuickDrawError, match="does not fit in int16") as e:
    quickdraw.to_stroke3(too_far, None, False, raw_size=None)
  assert e.value.reason == "out_of_range"


def test_conversion_report_lengths(tmp_path):
  # At epsilon 2: TINY -> 5 rows; (1,3) (2,2) (3,9) loses its middle point (1.26 from the
  # chord) -> 2 rows; a dot -> 1 row. Longest 5, mean 8 / 3.
  path = write_lines(tmp_path / "x.ndjson", [json.dumps({"drawing": d}) for d in
                                             (TINY, [[[1, 2, 3], [3, 2, 9]]], [[[4], [4]]])])
  _, report = quickdraw_dataset.convert(path, valid=0, test=0)
  assert report.lengths["train"] == {"longest": 5, "mean": pytest.approx(8 / 3)}
  assert report.lengths["valid"] == {"longest": 0, "mean": 0.0}


# ----------------------------------------------------------------------------
# sample.py (and the sampler's use of mdn.sample_point)

TINY_MODEL = dict(enc_rnn_size=16, dec_rnn_size=32, z_size=8, num_mixture=3)


@pytest.fixture(scope="module")
def tiny():
  spec = config_lib.PRESETS["original"].replace(**TINY_MODEL).model
  return spec, model.init(spec, jax.random.key(0))


def test_interpolate_slerp_turns_on_the_great_circle():
  z0, z1 = np.array([2.0, 0.0]), np.array([0.0, 2.0])  # orthogonal, equal norms
  mid = np.sqrt(2.0)  # 2 sin(pi/4) / sin(pi/2) per axis
  np.testing.assert_allclose(sample.interpolate(z0, z1, 3, "slerp")[1], [mid, mid], rtol=1e-6)
  np.testing.assert_allclose(sample.interpolate(z0, z1, 3)[1], [mid, mid], rtol=1e-6)  # default
  np.testing.assert_allclose(sample.interpolate(z0, z1, 3, "lerp")[1], [1.0, 1.0], rtol=1e-6)


def test_sampled_offsets_have_the_components_correlation(tiny):
  # One component (mu 0, sigma 1, rho 0.8), the pen always down: at tau = 1 the samples'
  # correlation is rho, and each axis has unit spread.
  spec, params = tiny
  rho = 0.8
  bias = np.concatenate([[10.0, -10.0, -10.0], [0.0, -1e4, -1e4], np.zeros(3), np.zeros(3),
                         np.zeros(3), np.zeros(3), [np.arctanh(rho), 0.0, 0.0]]).astype(np.float32)
  dec = dict(params["decoder"], out_w=jnp.zeros_like(params["decoder"]["out_w"]),
             out_b=jnp.asarray(bias))
  fake = dict(params, decoder=dec)
  K = 64
  z = np.random.default_rng(0).normal(size=(K, spec.z_size)).astype(np.float32)
  out = sample.sample_batch(spec, fake, jax.random.key(1), [1.0] * K, z=z, max_len=32)
  xy = np.asarray(out.strokes).reshape(-1, 5)[:, 0:2]
  assert len(xy) == 2048 and np.all(np.asarray(out.length) == 32)
  assert np.corrcoef(xy.T)[0, 1] == pytest.approx(rho, abs=0.05)  # std error ~0.008
  np.testing.assert_allclose(xy.std(axis=0), 1.0, atol=0.08)


def test_conditional_sampler_uses_the_decoder_bias(tiny):
  # model.init leaves the LSTM bias at 0; a trained (or imported) model's is not. Greedy
  # sampling must follow the teacher-forced decoder (model.decode) fed its own outputs.
  spec, params = tiny
  rnn = dict(params["decoder"]["rnn"])
  rnn["b"] = jnp.asarray(np.random.default_rng(2).normal(0, 0.7, rnn["b"].shape), jnp.float32)
  params = dict(params, decoder=dict(params["decoder"], rnn=rnn))
  z = jnp.asarray(np.random.default_rng(3).normal(size=(spec.z_size,)), jnp.float32)
  L = 12
  out = sample.sample_one(spec, params, jax.random.key(0), 1.0, z, max_len=L, greedy=True)
  rows, n = np.asarray(out.strokes), int(out.length)
  assert n >= 3
  inputs = np.concatenate([strokes.START_TOKEN[None], rows[:-1]])[None]
  y, _ = model.decode(spec, params, z[None], jnp.asarray(inputs))
  for t in range(min(n + 1, L)):
    mix = mdn.split(y[0, t])
    j, pen = int(np.argmax(mix.log_pi)), int(np.argmax(mix.pen_logits))
    if t < n:
      np.testing.assert_allclose(rows[t], np.r_[mix.mu_x[j], mix.mu_y[j], np.eye(3)[pen]],
                                 atol=1e-5)
    else:
      assert pen == 2  # the sketch ends where the decoder's most likely pen state is p3


# ----------------------------------------------------------------------------
# evaluation.py


def test_selection_loss_uses_the_floored_kl_at_the_final_weight():
  cfg = config_lib.PRESETS["original"]  # w_KL 0.5, KL_min 0.2
  m = {"recon_loss": 1.0, "kl_loss_raw": 0.05, "kl_loss": 0.2}
  assert evaluation.selection_loss(cfg, m) == pytest.approx(1.0 + 0.5 * 0.2)


def test_rescale_leaves_the_pen_states_alone(tmp_path):
  s = [[3, -2, 0], [1, 4, 1], [2, 2, 1]]
  ds = data.load(_write_npz(tmp_path / "r.npz", [s, s], [s], [s]),
                 facts=data.DataFacts(scale_factor=1.0, max_seq_len=10))
  evaluation.rescale_offsets(ds, "test", 2.0)
  for split in data.SPLITS:
    np.testing.assert_array_equal(ds.splits[split][0], [[6, -4, 0], [2, 8, 1], [4, 4, 1]])


# ----------------------------------------------------------------------------
# render.py / render_grid.py / canvas.py


def test_default_margin_is_half_a_line_plus_five_percent():
  line = np.array([[0, 0, 0], [100, 0, 1]])
  # side 100, width 2: margin 1 + 5 = 6, room 88 -> scale 0.88, centred.
  assert render.layout(line, 100) == (100, 100, render.Transform(0.88, 6.0, 50.0))
  # width 4: margin 2 + 5 = 7, room 86.
  w, h, t = render.layout(line, 100, stroke_width=4.0)
  assert t.scale == pytest.approx(0.86) and t.offset_x == pytest.approx(7.0)


def test_png_line_is_centred_where_the_svg_puts_it():
  # A 4 px line at canvas y = 10.5 (x = 10.5): antialiased, its ink is centred there,
  # as in the SVG (pixel i spans [i, i + 1)).
  for sketch, size, axis in (([[0, 0, 0], [100, 0, 1]], (60, 21), 1),
                             ([[0, 0, 0], [0, 100, 1]], (21, 60), 0)):
    _, _, t = render.layout(sketch, size, stroke_width=4)
    assert (t.offset_x, t.offset_y)[axis] == 10.5
    ink = 255.0 - np.asarray(render.sketch_to_png(sketch, size=size, stroke_width=4)
                             .convert("L"), np.float64)
    ink = ink[:, 20:40] if axis == 1 else ink[20:40]
    profile = ink.sum(axis=axis)
    centre = float((profile * (np.arange(21) + 0.5)).sum() / profile.sum())
    assert centre == pytest.approx(10.5, abs=0.1)


def test_png_draws_one_point_strokes_with_thin_lines():
  sketch = np.array([[0, 0, 0], [100, 0, 1], [-50, 60, 1], [50, -60, 0], [0, 60, 0]])
  for width in (1.0, 2.0):
    _, _, t = render.layout(sketch, 100, stroke_width=width)
    x, y = t.apply([[50, 60]])[0]  # the dot
    gray = np.asarray(render.sketch_to_png(sketch, size=100, stroke_width=width,
                                           antialias=False).convert("L"))
    # Within a pixel of its place (Pillow puts ellipses up to a pixel up-left); nothing
    # else is drawn near it.
    assert gray[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].min() < 128, width
    assert gray[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7].mean() > 200, width


def test_grid_labels_are_centred_on_their_rows_and_columns():
  rows = [[np.array([[5, 5, 1]]), None], [None, np.array([[1, 2, 1]])]]
  root = ET.fromstring(render_grid.grid_to_svg(rows, row_labels=["r0", "r1"],
                                               col_labels=["c0", "c1"], cell=100))
  texts = {t.text: (float(t.get("x")), float(t.get("y"))) for t in root.iter(SVG + "text")}
  # Left strip 80 px, top strip 24 px, cells of 100.
  assert texts == {"c0": (130.0, 12.0), "c1": (230.0, 12.0), "r0": (40.0, 74.0),
                   "r1": (40.0, 174.0)}


def test_highlight_may_start_after_the_last_row():
  # A completion whose ending is empty: nothing is drawn in the highlight colour.
  s = np.array([[0, 0, 0], [10, 0, 1], [0, 10, 0], [5, 5, 1]], np.float64)
  svg = render_grid.grid_to_svg([[render_grid.Highlight(s, len(s))]])
  root = ET.fromstring(svg)
  assert len(list(root.iter(SVG + "path"))) == 2
  assert "#d62728" not in svg
  assert svg == render_grid.grid_to_svg([[s]])


def test_model_to_canvas_moves_the_first_offset_by_the_anchor():
  # Model units * scale_factor / scale: (1, 2) -> (2, 4), (3, 4) -> (6, 8); first point at
  # anchor + (2, 4), the lift after the second point ends the stroke.
  lines = canvas.model_to_canvas([[1, 2, 0], [3, 4, 1], [1, 1, 0]], scale=2.0, scale_factor=4.0,
                                 anchor=(10.0, 20.0))
  assert len(lines) == 2
  np.testing.assert_allclose(lines[0], [[12, 24], [18, 32]])
  np.testing.assert_allclose(lines[1], [[20, 34]])


# ----------------------------------------------------------------------------
# browser.py / pretrained.py


def test_weights_of_exactly_plus_minus_ten_need_no_clipping():
  text, clipped = browser.encode_blob([10.0, -10.0, 0.0], "w")
  assert clipped == 0
  np.testing.assert_array_equal(np.frombuffer(base64.b64decode(text), "<i2"),
                                [32767, -32767, 0])
  np.testing.assert_array_equal(browser.decode_blob(text, 3, "w"), [10.0, -10.0, 0.0])
  with pytest.raises(browser.BrowserModelError, match="1 weight"):
    browser.encode_blob([10.0 + 10.0 / 32767], "w")


def test_output_width_needs_at_least_one_mixture():
  def shapes(H, Y):
    return [[H, Y], [Y], [5, 4 * H], [H, 4 * H], [4 * H]]
  assert browser.check_shapes("gen", shapes(2, 9), "m") == {"H": 2, "Y": 9}
  with pytest.raises(browser.BrowserModelError, match="Y=3 is not 6M \\+ 3 for any M >= 1"):
    browser.check_shapes("gen", shapes(2, 3), "m")


def test_exported_losses_come_from_the_test_evaluation_at_the_checkpoint_step(tmp_path):
  events = [{"step": 5, "split": "train", "recon_loss": 7.0, "kl_loss": 7.0},
            {"step": 5, "split": "valid", "recon_loss": 1.0, "kl_loss": 0.3},
            {"step": 5, "split": "test", "recon_loss": 2.0, "kl_loss": 0.4},
            {"step": 8, "split": "test", "recon_loss": 9.0, "kl_loss": 9.0},
            {"step": 6, "split": "valid", "recon_loss": 3.0, "kl_loss": 0.5}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
  wd = str(tmp_path)
  losses = pretrained._reported_losses
  assert losses(wd, 5, None, True) == {"training_steps": 5, "r_loss": 2.0, "kl_loss": 0.4}
  assert losses(wd, 5, None, False) == {"training_steps": 5, "r_loss": 2.0}  # no KL: decoder-only
  assert losses(wd, 6, None, True) == {"training_steps": 6, "r_loss": 3.0, "kl_loss": 0.5}
  assert losses(wd, 7, None, True) == {"training_steps": 7}
  # Imported params keep the source file's numbers only while they are the imported ones.
  imported = {"step": 0, "info": {"r_loss": -0.6, "training_size": 70000, "name": "cat"}}
  assert losses(wd, 0, imported, False) == {"r_loss": -0.6, "training_size": 70000}
  assert losses(wd, 5, imported, True) == {"training_steps": 5, "r_loss": 2.0, "kl_loss": 0.4}
