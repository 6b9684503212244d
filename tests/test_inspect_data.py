"""inspect_data launcher (subprocess) against a direct NumPy reading of the sheep file."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUNDLED, REPO

SHEEP = str(BUNDLED / "aaron_sheep.npz")


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.inspect_data", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def _expected(max_seq_len):
  with np.load(SHEEP, allow_pickle=True, encoding="latin1") as npz:
    raw = {s: list(npz[s]) for s in ("train", "valid", "test")}
  out = {}
  for split, sketches in raw.items():
    lengths = np.array([len(s) for s in sketches])
    kept = lengths[(lengths > 0) & (lengths <= max_seq_len)]
    out[split] = dict(read=len(sketches), kept=len(kept),
                      dropped=dict(too_long=int(np.sum(lengths > max_seq_len)),
                                   empty=int(np.sum(lengths == 0))),
                      longest=int(kept.max()), mean_length=float(kept.mean()))
  train = [np.clip(s.astype(np.float64), -1000, 1000) for s in raw["train"]
           if 0 < len(s) <= max_seq_len]
  scale = float(np.std(np.concatenate([s[:, :2].ravel() for s in train])))
  return out, scale


def test_json_matches_numpy():
  proc = _run(f"--data={SHEEP}", "--max_seq_len=100", "--json")
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout)  # one JSON object and nothing else
  splits, scale = _expected(100)
  assert got["scale_factor"] == pytest.approx(scale, rel=1e-9)
  assert got["max_seq_len_limit"] == 100
  assert got["max_seq_len"] == max(s["longest"] for s in splits.values())
  assert got["sources"] == [SHEEP]
  for split, want in splits.items():
    assert got["splits"][split]["mean_length"] == pytest.approx(want.pop("mean_length"))
    assert {k: v for k, v in got["splits"][split].items() if k != "mean_length"} == want
  assert splits["train"]["dropped"]["too_long"] > 0  # the limit really dropped some


def test_table():
  proc = _run(f"--data={SHEEP}")
  assert proc.returncode == 0, proc.stderr
  splits, scale = _expected(250)
  lines = proc.stdout.splitlines()
  assert lines[1].startswith(f"scale factor {scale:.4f}, N_max 250 (limit 250)")
  train = lines[3].split()
  assert train[0] == "train"
  assert [int(v) for v in train[1:6]] == [7400, 7400, 0, 0, splits["train"]["longest"]]
  assert float(train[6]) == pytest.approx(splits["train"]["mean_length"], abs=0.005)


def test_bad_input_is_one_line(tmp_path):
  missing = str(tmp_path / "missing.npz")
  not_npz = tmp_path / "cat.npz"
  not_npz.write_text('{"drawing": []}\n')
  for path, message in [(missing, "no such file"), (str(not_npz), "not a readable .npz")]:
    proc = _run(f"--data={SHEEP},{path}", "--json")
    assert proc.returncode == 1
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert err[0].startswith(f"inspect_data: error: {path}: {message}")
