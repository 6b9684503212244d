"""Quick Draw parsing and conversion, against hand-worked values and the `rdp` package."""
import json
import pathlib

import numpy as np
import pytest
import rdp as rdp_pkg

from sketch_vae import data
from sketch_vae import quickdraw, quickdraw_dataset
from conftest import BUNDLED, absolute_strokes, write_lines

# np.cross on 2-d vectors inside the `rdp` package.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CAT = str(BUNDLED / "cat.ndjson")
PIG_RAW = str(BUNDLED / "pig_raw10.ndjson")
DOODLER_CAT = pathlib.Path("/work/shared/data/quickdraw_subsets/"
                            "krishnasriSomepalli_cs50_doodler/cat.json")

# A tiny simplified drawing worked by hand at epsilon 2. Stroke 0 runs (0,0) (10,1)
# (20,5) (30,0): the chord (0,0)-(30,0) is 5 from (20,5), so (20,5) stays; then
# (10,1) is |20*1 - 5*10| / sqrt(20^2 + 5^2) = 1.46 from (0,0)-(20,5), so it goes.
TINY = [[[0, 10, 20, 30], [0, 1, 5, 0]], [[5, 5], [10, 30]]]
TINY_STROKE3 = [[0, 0, 0], [20, 5, 0], [10, -5, 1], [-25, 10, 0], [0, 20, 1]]


def _lines(path):
  return pathlib.Path(path).read_text().splitlines()


def test_tiny_drawing_by_hand():
  d = quickdraw.parse_drawing(TINY, "tiny")
  assert not d.is_raw
  out = quickdraw.to_stroke3(d, epsilon=2.0)
  assert out.dtype == np.int16
  np.testing.assert_array_equal(out, TINY_STROKE3)
  every_point = [[0, 0, 0], [10, 1, 0], [10, 4, 0], [10, -5, 1], [-25, 10, 0], [0, 20, 1]]
  np.testing.assert_array_equal(quickdraw.to_stroke3(d, epsilon=None), every_point)


def test_first_cat_equals_rdp_package_per_stroke():
  record = json.loads(_lines(CAT)[0])
  out = quickdraw.to_stroke3(quickdraw.parse_record(record, "cat line 1"), epsilon=2.0)
  got = absolute_strokes(out)
  want = [rdp_pkg.rdp(np.array(s, np.float64).T, epsilon=2.0) for s in record["drawing"]]
  assert len(got) == len(want) == 9
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  assert len(out) < sum(len(s[0]) for s in record["drawing"])  # RDP removed points


def test_raw_hand_made():
  # Sides 510 x 204 -> scale 0.5: stroke 0 becomes (0,0)-(255,0), stroke 1 the point (0,102).
  record = {"key_id": "r", "drawing": [[[10, 520], [20, 20], [0, 90]], [[10], [224], [200]]]}
  d = quickdraw.parse_record(record, "raw")
  assert d.is_raw
  for resample in (False, True):  # resampled points on a line are removed again by RDP
    np.testing.assert_array_equal(quickdraw.to_stroke3(d, 2.0, resample),
                                  [[0, 0, 0], [255, 0, 1], [-255, 102, 1]])
  resampled = quickdraw.normalize_raw(d.lines, resample=True)[0]
  np.testing.assert_allclose(resampled[:, 0], np.arange(256.0))
  np.testing.assert_allclose(resampled[:, 1], 0.0)
  # Raw pixels kept (hardmaru's notebook), and the start offset zeroed.
  np.testing.assert_array_equal(quickdraw.to_stroke3(d, 2.0, False, raw_size=None),
                                [[10, 20, 0], [510, 0, 1], [-510, 204, 1]])
  np.testing.assert_array_equal(
      quickdraw.to_stroke3(d, 2.0, False, raw_size=None, start_at_origin=True),
      [[0, 0, 0], [510, 0, 1], [-510, 204, 1]])
  tiny = quickdraw.parse_drawing([[[7, 9], [3, 3]]], "t")  # simplified: raw_size is ignored
  np.testing.assert_array_equal(quickdraw.to_stroke3(tiny, raw_size=None, start_at_origin=True),
                                [[0, 0, 0], [2, 0, 1]])


def _resample_reference(points, spacing=1.0):
  """Walk the segments, dropping a point every `spacing` of travelled length."""
  out, travelled, next_at = [points[0]], 0.0, spacing
  for a, b in zip(points[:-1], points[1:]):
    seg = float(np.hypot(*(b - a)))
    while seg > 0 and next_at <= travelled + seg:
      out.append(a + (next_at - travelled) / seg * (b - a))
      next_at += spacing
    travelled += seg
  if len(points) > 1 and np.hypot(*(out[-1] - points[-1])) > 1e-9:
    out.append(points[-1])
  return np.array(out)


def test_raw_pigs_against_independent_recipe():
  for n, line in enumerate(_lines(PIG_RAW)):
    strokes = [np.array(s[:2], np.float64).T for s in json.loads(line)["drawing"]]
    allpts = np.concatenate(strokes)
    low = allpts.min(axis=0)
    scale = 255.0 / (allpts.max(axis=0) - low).max()
    scaled = [(s - low) * scale for s in strokes]
    d = quickdraw.parse_record(json.loads(line), f"pig {n}")
    assert d.is_raw
    plain = quickdraw.normalize_raw(d.lines, resample=False)
    both = np.concatenate(plain)
    np.testing.assert_allclose(both.min(axis=0), 0.0, atol=1e-12)
    assert both.max() == pytest.approx(255.0)
    for got, want in zip(plain, scaled):
      np.testing.assert_allclose(got, want, rtol=1e-12)
    resampled = quickdraw.normalize_raw(d.lines, resample=True)
    reference = [_resample_reference(s) for s in scaled]
    for got, want in zip(resampled, reference):
      np.testing.assert_allclose(got, want, atol=1e-6)
    # No resampling: conversion = rdp package on the scaled points, then rounding.
    got = absolute_strokes(quickdraw.to_stroke3(d, 2.0, resample=False))
    for g, s in zip(got, scaled):
      np.testing.assert_array_equal(g, np.round(rdp_pkg.rdp(s, epsilon=2.0)))
    out = np.concatenate(absolute_strokes(quickdraw.to_stroke3(d, 2.0, resample=True)))
    assert out.min() >= 0 and out.max() <= 255


# ----------------------------------------------------------------------------
# Bad input.

GOOD = json.dumps({"key_id": "1", "drawing": TINY})
BAD_LINES = [
    ('{"drawing": [[[1, 2], [3, 4]]', "malformed_json", "not valid JSON"),
    ("[1, 2]", "malformed_json", "expected a JSON object"),
    ('{"word": "cat", "key_id": "7"}', "no_drawing", "no 'drawing' key (keys: key_id, word)"),
    ('{"drawing": [[[1], [1]], [[1], [2]], [[1, 2, 3, 4, 5], [1, 2, 3, 4]]]}', "bad_stroke",
     "stroke 2 has 5 x values but 4 y values"),
    ('{"drawing": [[[1, 2], [1, 2], [0]]]}', "bad_stroke",
     "stroke 0 has 2 x and y values but 1 t"),
    ('{"drawing": [[[1, NaN], [2, 3]]]}', "non_finite", "stroke 0 has a non-finite x value (nan)"),
    ('{"drawing": [[[1, 2], [2, Infinity]]]}', "non_finite",
     "non-finite y value (inf) at point 1"),
    ('{"drawing": [[["a", 2], [1, 2]]]}', "bad_stroke", "stroke 0 has non-numeric x values"),
    ('{"drawing": [[[1, [2]], [1, 2]]]}', "bad_stroke", "stroke 0 has non-numeric x values"),
    ('{"drawing": [[[1, 2]]]}', "bad_stroke", "stroke 0 should be [[xs], [ys]]"),
    ('{"drawing": [[[1], [2]], [[1], [2], [3]]]}', "bad_stroke", "stroke 1 has 3 lists"),
    ('{"drawing": null}', "bad_stroke", "the drawing should be a list of strokes"),
    ('{"drawing": []}', "empty", "the drawing has no strokes"),
    ('{"drawing": [[[1], [2]], [[], []]]}', "empty", "stroke 1 is empty"),
]


@pytest.mark.parametrize("line,reason,message", BAD_LINES)
def test_bad_line(tmp_path, line, reason, message):
  path = write_lines(tmp_path / "cat.ndjson", [GOOD, line])
  with pytest.raises(quickdraw.QuickDrawError) as e:
    quickdraw_dataset.convert(path, strict=True, train=1, valid=0, test=0)
  assert str(e.value).startswith(f"{path} line 2: ")
  assert message in str(e.value)
  assert e.value.reason == reason
  splits, report = quickdraw_dataset.convert(path, train=1, valid=0, test=0)
  assert (report.read, report.kept, report.dropped) == (2, 1, {reason: 1})
  assert report.examples[reason] == [str(e.value)]
  np.testing.assert_array_equal(splits["train"][0], TINY_STROKE3)


def test_bad_lines_counted_together(tmp_path):
  # Line 1 good, lines 2.. the bad ones, then a blank line and a line that is not UTF-8.
  text = "\n".join([GOOD] + [line for line, _, _ in BAD_LINES] + [""]).encode()
  path = tmp_path / "mixed.ndjson"
  path.write_bytes(text + b"\n\xc3\x28{}\n")
  _, report = quickdraw_dataset.convert(str(path), train=1, valid=0, test=0)
  want = {}
  for _, reason, _ in BAD_LINES:
    want[reason] = want.get(reason, 0) + 1
  want["malformed_json"] += 1  # the non-UTF-8 line; the blank line is not a drawing
  assert report.dropped == want
  assert report.read == len(BAD_LINES) + 2 and report.kept == 1
  last = len(BAD_LINES) + 3
  assert report.examples["malformed_json"][-1] == f"{path} line {last}: not UTF-8 text"


def test_whole_file_problems(tmp_path):
  cases = {
      str(tmp_path / "missing.ndjson"): "no such file",
      str(tmp_path): "not a file",
      str(BUNDLED / "aaron_sheep.npz"): "unsupported file type '.npz'",
      write_lines(tmp_path / "dict.json", ['{"drawing": []}']): "expected a JSON list of drawings",
      write_lines(tmp_path / "broken.json", ["[[[[1], [2]]]"]): "not valid JSON",
  }
  for path, message in cases.items():
    for strict in (False, True):  # a whole-file problem is never skipped
      with pytest.raises(quickdraw.QuickDrawError, match=message) as e:
        quickdraw_dataset.convert(path, strict=strict)
      assert str(e.value).startswith(path)
  garbage = tmp_path / "garbage.ndjson"
  garbage.write_bytes(bytes(range(256)) * 4)
  with pytest.raises(quickdraw.QuickDrawError, match="no drawing kept.*(not valid JSON|UTF-8)"):
    quickdraw_dataset.convert(str(garbage))


def test_json_list_format_and_out_of_range(tmp_path):
  items = [TINY, [[[0, 1], [0]]], [[[0, 40000], [0, 0]]]]
  path = write_lines(tmp_path / "cats.json", [json.dumps(items)])
  with pytest.raises(quickdraw.QuickDrawError, match=r"cats.json item 1: stroke 0 has 2 x values"):
    quickdraw_dataset.convert(path, strict=True, train=1, valid=0, test=0)
  splits, report = quickdraw_dataset.convert(path, epsilon=None, train=1, valid=0, test=0)
  assert report.dropped == {"bad_stroke": 1, "out_of_range": 1}
  np.testing.assert_array_equal(splits["train"][0], quickdraw.to_stroke3(
      quickdraw.parse_drawing(TINY, "t"), epsilon=None))


# ----------------------------------------------------------------------------
# Filters.


def test_recognized_filter():
  records = [json.loads(line) for line in _lines(CAT)]
  unrecognized = [i + 1 for i, r in enumerate(records) if not r["recognized"]]
  assert unrecognized  # the bundled file has some
  _, report = quickdraw_dataset.convert(CAT, recognized_only=True)
  assert report.kept == len(records) - len(unrecognized)
  assert report.dropped == {"not_recognized": len(unrecognized)}
  assert report.examples["not_recognized"] == [f"{CAT} line {i}: recognized is false"
                                               for i in unrecognized]
  _, report = quickdraw_dataset.convert(CAT)
  assert report.kept == len(records) and report.dropped == {}


def test_recognized_filter_keeps_drawings_without_the_field(tmp_path):
  path = write_lines(tmp_path / "a.ndjson", [json.dumps({"recognized": False, "drawing": TINY}),
                                        json.dumps({"drawing": TINY}),
                                        json.dumps({"recognized": True, "drawing": [[[1], [1]]]})])
  _, report = quickdraw_dataset.convert(path, recognized_only=True, valid=0, test=0)
  assert (report.kept, report.dropped) == (2, {"not_recognized": 1})


def test_deduplicate(tmp_path):
  other = [[[1, 2, 3], [3, 2, 9]]]
  ndjson = write_lines(tmp_path / "a.ndjson", [
      json.dumps({"key_id": "1", "drawing": TINY}),
      json.dumps({"key_id": "1", "drawing": other}),  # same key_id: duplicate
      json.dumps({"key_id": "2", "drawing": TINY}),  # same strokes, own key_id: kept
      json.dumps({"drawing": other}),  # no key_id, new content: kept
      json.dumps({"drawing": TINY}),  # no key_id, seen content: duplicate
  ])
  listed = write_lines(tmp_path / "b.json", [json.dumps([other, TINY, [[[7], [7]]]])])
  _, report = quickdraw_dataset.convert([ndjson, listed], valid=0, test=0)
  assert (report.read, report.kept, report.dropped) == (8, 4, {"duplicate": 4})
  assert report.examples["duplicate"][0] == f"{ndjson} line 2: same key_id 1 as an earlier drawing"
  assert report.examples["duplicate"][2] == f"{listed} item 0: same content as an earlier drawing"
  _, report = quickdraw_dataset.convert([ndjson, listed], deduplicate=False, valid=0, test=0)
  assert report.kept == 8


def test_deduplicate_does_not_depend_on_file_order(tmp_path):
  # A drawing copied without its key_id into another file (as the JSON-list
  # subsets do) is a duplicate whichever file comes first.
  other = [[[1, 2, 3], [3, 2, 9]]]
  keyed = write_lines(tmp_path / "a.ndjson", [json.dumps({"key_id": "1", "drawing": TINY}),
                                               json.dumps({"key_id": "2", "drawing": other})])
  unkeyed = write_lines(tmp_path / "b.json", [json.dumps([TINY])])
  for order in ([keyed, unkeyed], [unkeyed, keyed]):
    _, report = quickdraw_dataset.convert(order, valid=0, test=0)
    assert (report.kept, report.dropped) == (2, {"duplicate": 1}), order
  assert report.examples["duplicate"] == [f"{keyed} line 1: same content as an earlier drawing"]


@pytest.mark.skipif(not DOODLER_CAT.exists(), reason="shared data not present")
def test_deduplicate_real_subset():
  # SOURCES.md: 4999 drawings, 4867 unique (counted there with a separate script).
  _, report = quickdraw_dataset.convert(str(DOODLER_CAT), epsilon=None, valid=0, test=0)
  assert (report.read, report.kept) == (4999, 4867)


def test_max_drawings_per_file(tmp_path):
  _, report = quickdraw_dataset.convert([CAT, PIG_RAW], max_drawings=4, valid=1, test=1)
  assert [s["kept"] for s in report.sources] == [4, 4]
  assert [s["read"] for s in report.sources] == [4, 4]
  assert report.formats == {"simplified": 4, "raw": 4}


# ----------------------------------------------------------------------------
# Splits and the .npz file.


def test_split_sizes():
  assert quickdraw_dataset.split_sizes(75000) == (70000, 2500, 2500)
  assert quickdraw_dataset.split_sizes(100) == (94, 3, 3)
  assert quickdraw_dataset.split_sizes(10, 5, 2, 1) == (5, 2, 1)
  assert quickdraw_dataset.split_sizes(25, 0.8, 0.1, 0.1) == (21, 2, 2)  # train takes the rest
  assert quickdraw_dataset.split_sizes(25, valid=4, test=0) == (21, 4, 0)
  assert quickdraw_dataset.split_sizes(20, 0.5, 0.25) == (10, 5, 1)
  for bad in [dict(train=30), dict(valid=-1), dict(test=1.5), dict(train=True), dict(valid="3")]:
    with pytest.raises(quickdraw.QuickDrawError):
      quickdraw_dataset.split_sizes(25, **bad)


def test_split_is_seeded_permutation():
  items = list(range(50))
  a = quickdraw_dataset.split_sketches(items, (40, 6, 3), seed=3)
  assert a == quickdraw_dataset.split_sketches(items, (40, 6, 3), seed=3)
  assert a != quickdraw_dataset.split_sketches(items, (40, 6, 3), seed=4)
  assert [len(a[s]) for s in quickdraw_dataset.SPLITS] == [40, 6, 3]
  used = a["train"] + a["valid"] + a["test"]
  assert len(set(used)) == 49
  order = np.random.default_rng(3).permutation(50)
  assert a["valid"] == list(order[40:46])


def test_write_npz_object_arrays(tmp_path):
  same = [np.array([[1, 2, 0], [3, 4, 1]])] * 3  # equal lengths
  path = str(tmp_path / "sub" / "x.npz")
  quickdraw_dataset.write_npz(path, {"train": same, "valid": same[:1], "test": []})
  with np.load(path, allow_pickle=True, encoding="latin1") as npz:
    for name, n in [("train", 3), ("valid", 1), ("test", 0)]:
      assert npz[name].dtype == object and npz[name].shape == (n,)
      for s in npz[name]:
        assert s.dtype == np.int16
        np.testing.assert_array_equal(s, same[0])
  back = data.read_npz(path)
  assert [len(back[s]) for s in data.SPLITS] == [3, 1, 0]
  assert not list(tmp_path.glob("sub/*.part"))


def test_json_list_of_records_reads_like_ndjson(tmp_path):
  # An array of the ndjson objects (a common export): key_id and recognized are read too.
  lines = pathlib.Path(CAT).read_text().splitlines()[:6]
  records = [json.loads(l) for l in lines]
  records.append(dict(records[0]))  # the same key_id again: a duplicate
  listed = tmp_path / "cat_records.json"
  listed.write_text(json.dumps(records))
  from_ndjson, _ = quickdraw_dataset.convert(CAT, max_drawings=6, valid=0, test=0, seed=3)
  from_list, report = quickdraw_dataset.convert(str(listed), valid=0, test=0, seed=3)
  assert (report.read, report.kept, report.dropped) == (7, 6, {"duplicate": 1})
  for a, b in zip(from_ndjson["train"], from_list["train"]):
    np.testing.assert_array_equal(a, b)
