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
