"""Dataset loading, checks, scale factor, augmentation and batches."""
import numpy as np
import pytest

from sketch_vae import data
from conftest import BUNDLED

SHEEP = str(BUNDLED / "aaron_sheep.npz")


def _write_npz(path, train, valid=None, test=None, **extra):
  def obj(seq):
    arr = np.empty(len(seq), dtype=object)
    for i, s in enumerate(seq):
      arr[i] = s
    return arr
  splits = {"train": obj(train), "valid": obj(valid or train[:1]), "test": obj(test or train[:1])}
  splits.update(extra)
  np.savez(path, **splits)
  return str(path)


@pytest.fixture(scope="module")
def sheep():
  return data.load(SHEEP, max_seq_len=250)


def test_scale_factor_against_numpy(sheep):
  raw = np.load(SHEEP, allow_pickle=True, encoding="latin1")["train"]
  kept = [np.clip(s.astype(np.float64), -1000, 1000) for s in raw if 0 < len(s) <= 250]
  expected = np.std(np.concatenate([s[:, :2].ravel() for s in kept]))
  assert sheep.facts.scale_factor == pytest.approx(expected, rel=1e-9)
  # Every split is divided by the same factor; pen states untouched.
  raw_test = np.load(SHEEP, allow_pickle=True, encoding="latin1")["test"]
  np.testing.assert_allclose(sheep.splits["test"][3][:, :2],
                             raw_test[3][:, :2] / expected, rtol=1e-6)
  np.testing.assert_array_equal(sheep.splits["test"][3][:, 2], raw_test[3][:, 2])


def test_report_counts(sheep):
  r = sheep.report["train"]
  assert (r.read, r.kept) == (7400, 7400)
  assert sheep.facts.max_seq_len == max(rep.longest for rep in sheep.report.values())
  short = data.load(SHEEP, max_seq_len=100)
  raw = np.load(SHEEP, allow_pickle=True, encoding="latin1")["train"]
  assert short.report["train"].dropped_too_long == int(sum(len(s) > 100 for s in raw))
  assert short.report["train"].kept == int(sum(len(s) <= 100 for s in raw))
  assert short.facts.max_seq_len <= 100


def test_multi_file_is_concatenation(tmp_path):
  a = [np.array([[1, 2, 0], [3, 4, 1]], np.int16)] * 3
  b = [np.array([[5, 6, 1]], np.int16)] * 2
  pa, pb = _write_npz(tmp_path / "a.npz", a), _write_npz(tmp_path / "b.npz", b)
  ds = data.load([pa, pb], max_seq_len=10)
  assert len(ds.splits["train"]) == 5
  expected = np.std(np.array([1, 2, 3, 4] * 3 + [5, 6] * 2, float))
  assert ds.facts.scale_factor == pytest.approx(expected)
  ds2 = data.load(f"{pa},{pb}", max_seq_len=10)
  assert ds2.facts == ds.facts


def test_offsets_clamped_like_original(tmp_path):
  p = _write_npz(tmp_path / "big.npz", [np.array([[5000, -3000, 1], [1, 1, 1]], np.int32)] * 2)
  ds = data.load(p, facts=data.DataFacts(scale_factor=1.0, max_seq_len=10))
  np.testing.assert_array_equal(ds.splits["train"][0][0], [1000, -1000, 1])


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file"),
    ("not_npz", "not a readable .npz"),
    ("no_splits", r"missing split\(s\) \['valid', 'test'\]"),
    ("bad_shape", r"sketch 1: expected shape \(n, 3\)"),
    ("bad_dtype", "expected integer or float offsets"),
    ("nan", "sketch 0: non-finite value"),
    ("bad_pen", "pen state must be 0 or 1"),
])
def test_bad_input_names_file_and_sketch(tmp_path, case, match):
  path = tmp_path / f"{case}.npz"
  good = np.array([[1, 2, 0], [3, 4, 1]], np.int16)
  if case == "missing":
    path = tmp_path / "nope.npz"
  elif case == "not_npz":
    path.write_text("hello, I am not a zip file")
  elif case == "no_splits":
    np.savez(path, train=np.array([good], dtype=object))
  elif case == "bad_shape":
    _write_npz(path, [good, np.zeros((4, 2), np.int16)])
  elif case == "bad_dtype":
    _write_npz(path, [np.array([["a", "b", "c"]])])
  elif case == "nan":
    _write_npz(path, [np.array([[np.nan, 1, 0], [1, 1, 1]])])
  elif case == "bad_pen":
    _write_npz(path, [np.array([[1, 1, 2]], np.int16)])
  with pytest.raises(data.DataError, match=match) as info:
    data.load(str(path))
  assert path.name in str(info.value)


def test_object_arrays_of_equal_length_sketches_load(tmp_path):
  # np.array([...], dtype=object) of same-length sketches is a 3-d object array.
  a = [[1, 2, 0], [3, 4, 1]]
  path = tmp_path / "obj.npz"
  np.savez(path, train=np.array([a, [[5, 6, 0], [7, 8, 1]]], dtype=object),
           valid=np.array([a], dtype=object), test=np.array([a], dtype=object))
  raw = data.read_npz(str(path))
  np.testing.assert_array_equal(raw["valid"][0], a)
  assert raw["valid"][0].dtype == np.float32 and len(raw["train"]) == 2
  np.savez(path, train=np.array([[["x", 2, 0]]], dtype=object), valid=np.array([a]),
           test=np.array([a]))
  with pytest.raises(data.DataError, match="obj.npz: split 'train', sketch 0: .*not numbers"):
    data.read_npz(str(path))


def test_empty_training_split_says_why(tmp_path):
  long = np.array([[1, 2, 0]] * 12 + [[3, 4, 1]], np.int16)
  p = _write_npz(tmp_path / "long.npz", [long, long])
  with pytest.raises(data.DataError, match=r"long.npz: training split empty after filtering "
                     r"\(read 2, 2 longer than max_seq_len=10, 0 empty\)"):
    data.load(p, max_seq_len=10)


def test_empty_sketches_are_counted_and_dropped(tmp_path):
  good = np.array([[1, 2, 0], [3, 4, 1]], np.int16)
  p = _write_npz(tmp_path / "e.npz", [good, np.zeros((0, 3), np.int16), good])
  ds = data.load(p, max_seq_len=10)
  assert ds.report["train"].dropped_empty == 1
  assert ds.report["train"].kept == 2


def test_merge_points_keeps_endpoints_and_respects_stroke_starts():
  rng = np.random.default_rng(0)
  s = np.array([[1, 0, 0]] * 8 + [[0, 1, 1]] + [[2, 0, 0]] * 5 + [[0, 0, 1]], np.float32)
  merged = data.merge_points(s, rng, prob=1.0)
  np.testing.assert_allclose(merged[:, :2].sum(0), s[:, :2].sum(0))
  assert merged[:, 2].sum() == s[:, 2].sum()  # no stroke lost
  # The first two points of a stroke are never candidates nor merged into.
  assert len(merged) < len(s)
  assert np.all(merged[:2] == s[:2])
  none = data.merge_points(s, rng, prob=0.0)
  np.testing.assert_array_equal(none, s)


def test_random_scale_bounds():
  rng = np.random.default_rng(1)
  s = np.ones((5, 3), np.float32)
  for _ in range(50):
    out = data.random_scale(s, rng, 0.15)
    assert np.all((out[:, :2] >= 0.85) & (out[:, :2] <= 1.15))
    np.testing.assert_array_equal(out[:, 2], s[:, 2])


def test_random_scale_draws_independent_x_and_y_factors():
  s = np.array([[3.0, -2.0, 0], [1.5, 4.0, 1]], np.float32)
  fx, fy = np.random.default_rng(7).uniform(0.85, 1.15, size=2)  # the same draws
  out = data.random_scale(s, np.random.default_rng(7), 0.15)
  np.testing.assert_allclose(out[:, 0], s[:, 0] * fx, rtol=1e-6)
  np.testing.assert_allclose(out[:, 1], s[:, 1] * fy, rtol=1e-6)
  ratios = out[:, :2] / s[:, :2]
  assert abs(ratios[0, 0] - ratios[0, 1]) > 1e-3  # not one shared factor
  np.testing.assert_array_equal(s[:, 2], [0, 1])  # the input is not changed


def test_batcher_applies_each_augmentation(sheep):
  train = sheep.splits["train"]
  max_len = sheep.facts.max_seq_len
  def batch(scale, merge):
    spec = data.BatchSpec(batch_size=20, max_seq_len=max_len, random_scale_factor=scale,
                          augment_stroke_prob=merge)
    return data.Batcher(train, spec, seed=5).train_batch(3)
  plain, plain_len = batch(0.0, 0.0)
  scaled, scaled_len = batch(0.15, 0.0)
  merged, merged_len = batch(0.0, 0.5)
  np.testing.assert_array_equal(scaled_len, plain_len)
  x_factors, y_factors = [], []
  for row in range(20):
    n = plain_len[row]
    dx, dy = plain[row, 1:n + 1, 0], plain[row, 1:n + 1, 1]
    ix, iy = np.abs(dx) > 0.1, np.abs(dy) > 0.1
    fx = scaled[row, 1:n + 1, 0][ix] / dx[ix]
    fy = scaled[row, 1:n + 1, 1][iy] / dy[iy]
    # One stretch per axis per sketch, within [0.85, 1.15].
    np.testing.assert_allclose(fx, fx[0], rtol=1e-4)
    np.testing.assert_allclose(fy, fy[0], rtol=1e-4)
    x_factors.append(fx[0]); y_factors.append(fy[0])
  assert np.all((np.array(x_factors + y_factors) >= 0.85) & (np.array(x_factors + y_factors) <= 1.15))
  assert np.std(x_factors) > 0.03 and np.max(np.abs(np.subtract(x_factors, y_factors))) > 0.05
  # Merging drops points but keeps each sketch's end point and stroke count.
  assert np.all(merged_len <= plain_len) and merged_len.sum() < plain_len.sum()
  for row in range(20):
    p, m = plain[row, 1:plain_len[row] + 1], merged[row, 1:merged_len[row] + 1]
    np.testing.assert_allclose(m[:, :2].sum(0), p[:, :2].sum(0), atol=1e-3)
    assert m[:, 3].sum() == p[:, 3].sum()


def test_batches_deterministic_sharded_and_epoch_complete(sheep):
  spec = data.BatchSpec(batch_size=100, max_seq_len=sheep.facts.max_seq_len,
                        random_scale_factor=0.15, augment_stroke_prob=0.1)
  a = data.Batcher(sheep.splits["train"], spec, seed=3)
  b = data.Batcher(sheep.splits["train"], spec, seed=3)
  x1, l1 = a.train_batch(17)
  a.train_batch(5000)  # asking out of order changes nothing
  x2, l2 = b.train_batch(17)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(l1, l2)
  # Host shards are exactly the rows of the global batch.
  top, lt = b.train_batch(17, rows=slice(0, 50))
  bottom, lb = b.train_batch(17, rows=slice(50, 100))
  np.testing.assert_array_equal(np.concatenate([top, bottom]), x1)
  np.testing.assert_array_equal(np.concatenate([lt, lb]), l1)
  # One epoch visits every sketch at most once.
  seen = np.concatenate([a.train_indices(s) for s in range(a.steps_per_epoch)])
  assert len(np.unique(seen)) == len(seen) == a.steps_per_epoch * 100
  c = data.Batcher(sheep.splits["train"], spec, seed=4)
  assert not np.array_equal(c.train_indices(0), a.train_indices(0))


def test_eval_batches_cover_everything_once(sheep):
  sk = sheep.splits["valid"][:230]
  batches = list(data.eval_batches(sk, 100, sheep.facts.max_seq_len))
  assert len(batches) == 3
  weights = np.concatenate([w for _, _, w in batches])
  assert weights.sum() == 230
  lengths = np.concatenate([l for _, l, _ in batches])[:230]
  np.testing.assert_array_equal(lengths, [len(s) for s in sk])


def test_facts_json_round_trip():
  f = data.DataFacts(scale_factor=12.5, max_seq_len=130)
  assert data.DataFacts.from_json(f.to_json()) == f
