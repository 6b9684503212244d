"""prepare: Quick Draw files -> .npz + report; the launcher end to end (subprocesses)."""
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import rdp as rdp_pkg

from sketch_vae import data
from sketch_vae import quickdraw, quickdraw_dataset
from conftest import BUNDLED, REPO, absolute_strokes, write_lines

# np.cross on 2-d vectors inside the `rdp` package.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CAT = str(BUNDLED / "cat.ndjson")
PIG_RAW = str(BUNDLED / "pig_raw10.ndjson")
# Worked by hand at epsilon 2 (see test_quickdraw.TINY): (10,1) is 1.46 from the
# chord (0,0)-(20,5) and goes; (20,5) is 5 from (0,0)-(30,0) and stays.
TINY = [[[0, 10, 20, 30], [0, 1, 5, 0]], [[5, 5], [10, 30]]]
TINY_STROKE3 = [[0, 0, 0], [20, 5, 0], [10, -5, 1], [-25, 10, 0], [0, 20, 1]]


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.prepare_data", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_prepare_hand_checked_and_first_cat(tmp_path):
  tiny = write_lines(tmp_path / "tiny.ndjson", [json.dumps({"key_id": "t", "drawing": TINY})])
  first_cat = write_lines(tmp_path / "cat1.ndjson", [pathlib.Path(CAT).read_text().splitlines()[0]])
  out = tmp_path / "out" / "two.npz"
  report = quickdraw_dataset.prepare([tiny, first_cat], str(out), train=1, valid=1, test=0, seed=0)
  splits = data.read_npz(str(out))
  both = splits["train"] + splits["valid"]
  assert len(both) == 2 and splits["test"] == []
  by_len = {len(s): s for s in both}
  np.testing.assert_array_equal(by_len[5], TINY_STROKE3)
  cat = [s for s in both if len(s) != 5][0]
  original = json.loads(pathlib.Path(first_cat).read_text())["drawing"]
  want = [rdp_pkg.rdp(np.array(s, np.float64).T, epsilon=2.0) for s in original]
  got = absolute_strokes(cat)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  # The report beside the .npz records the sources and every setting.
  saved = json.loads((tmp_path / "out" / "two.json").read_text())
  assert saved == json.loads(json.dumps(report.as_dict()))
  assert [s["sha256"] for s in saved["sources"]] == [
      hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest() for p in (tiny, first_cat)]
  assert saved["settings"]["epsilon"] == 2.0 and saved["settings"]["seed"] == 0
  assert (saved["read"], saved["kept"]) == (2, 2)
  assert saved["split"] == {"train": 1, "valid": 1, "test": 0}
  assert saved["output"] == str(out)


def test_prepare_is_deterministic_for_a_seed(tmp_path):
  def splits_of(seed, name):
    quickdraw_dataset.prepare([CAT, PIG_RAW], str(tmp_path / name), seed=seed, valid=5, test=5)
    with np.load(tmp_path / name, allow_pickle=True, encoding="latin1") as npz:
      return {s: [x.tolist() for x in npz[s]] for s in quickdraw_dataset.SPLITS}
  a, b, c = splits_of(1, "a.npz"), splits_of(1, "b.npz"), splits_of(2, "c.npz")
  assert a == b and a["train"] != c["train"]
  assert [len(a[s]) for s in quickdraw_dataset.SPLITS] == [25, 5, 5]
  pooled = lambda d: sorted(map(str, d["train"] + d["valid"] + d["test"]))  # noqa: E731
  assert pooled(a) == pooled(c)  # another seed, the same drawings


def test_prepare_rejects_bad_output_name(tmp_path):
  with pytest.raises(quickdraw.QuickDrawError, match="should end in .npz"):
    quickdraw_dataset.prepare(CAT, str(tmp_path / "out.json"))


def test_prepare_refuses_to_overwrite_an_input(tmp_path):
  listed = write_lines(tmp_path / "yoga.json", [json.dumps([TINY, TINY[:1]])])
  before = pathlib.Path(listed).read_bytes()
  with pytest.raises(quickdraw.QuickDrawError, match="is an input and would be overwritten"):
    quickdraw_dataset.prepare(listed, str(tmp_path / "yoga.npz"), valid=0, test=0)
  assert pathlib.Path(listed).read_bytes() == before
  assert not (tmp_path / "yoga.npz").exists()


def test_prepare_accepts_numpy_split_sizes(tmp_path):
  out = tmp_path / "cat.npz"
  report = quickdraw_dataset.prepare(CAT, str(out), valid=np.int64(3), test=np.float64(0.2))
  saved = json.loads((tmp_path / "cat.json").read_text())
  assert saved["settings"]["valid"] == 3 and saved["settings"]["test"] == 0.2
  assert saved["split"] == report.split == {"train": 17, "valid": 3, "test": 5}


def test_launcher_skips_and_counts(tmp_path):
  bad = write_lines(tmp_path / "bad.ndjson", [
      json.dumps({"key_id": "b1", "drawing": TINY}),
      '{"drawing": [[[1, 2, 3], [1, 2]]]}',
      "not json",
      json.dumps({"word": "cat"}),
  ])
  out = tmp_path / "mix.npz"
  inputs = ",".join([CAT, PIG_RAW, bad])
  proc = _run(f"--input={inputs}", f"--output={out}", "--valid=3", "--test=0.1", "--seed=5")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0] == ("read 39 drawings from 3 file(s); kept 36 (26 simplified, 10 raw); "
                      "dropped 3")
  assert (f"  dropped 1 bad_stroke, e.g. {bad} line 2: stroke 0 has 3 x values but 2 y values"
          in lines)
  assert any(l.startswith(f"  dropped 1 malformed_json, e.g. {bad} line 3: not valid JSON")
             for l in lines)
  assert any(l.startswith("  dropped 1 no_drawing") for l in lines)
  assert "split (seed 5): train 29 / valid 3 / test 4, unused 0" in lines
  splits = data.read_npz(str(out))
  assert [len(splits[s]) for s in data.SPLITS] == [29, 3, 4]
  report = json.loads((tmp_path / "mix.json").read_text())
  assert report["dropped"] == {"bad_stroke": 1, "malformed_json": 1, "no_drawing": 1}
  assert report["settings"]["valid"] == 3 and report["settings"]["test"] == 0.1


def test_launcher_strict_stops_with_one_line(tmp_path):
  bad = write_lines(tmp_path / "bad.ndjson", [json.dumps({"drawing": TINY}),
                                         '{"drawing": [[[1, NaN], [1, 2]]]}'])
  proc = _run(f"--input={bad}", f"--output={tmp_path / 'x.npz'}", "--strict")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      f"prepare_data: error: {bad} line 2: stroke 0 has a non-finite x value (nan) at point 1"]
  assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.json").exists()
