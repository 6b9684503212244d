"""Evaluation's argument checks: --rescale (a number or auto), the batch size, and the
launchers (evaluate, export_js) turning bad values into one line instead of a traceback.

The evaluated numbers themselves are tested with the paper's report (test_paper.py) and the
imported browser models (test_browser.py).
"""
import math
import subprocess
import sys

import jax
import numpy as np
import pytest

from sketch_vae import checkpoint, config as config_lib, data, evaluation, parallel, train
from conftest import BUNDLED, REPO

MAX_LEN = 40
TINY = dict(enc_rnn_size=8, dec_rnn_size=12, z_size=4, num_mixture=2)


def _write_npz(path, long: bool):
  """8 / 4 / 4 bundled sheep: cut to MAX_LEN points, or (long) only those longer than it."""
  sheep = np.load(BUNDLED / "aaron_sheep.npz", allow_pickle=True, encoding="latin1")
  arrays = {}
  for split, count in (("train", 8), ("valid", 4), ("test", 4)):
    chosen = [s for s in sheep[split] if len(s) > MAX_LEN] if long else sheep[split]
    arrays[split] = np.empty(count, dtype=object)
    for i in range(count):
      arrays[split][i] = chosen[i] if long else chosen[i][:MAX_LEN]
  np.savez(path, **arrays)
  return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """(workdir of an untrained tiny VAE, short.npz it can score, long.npz all over its N_max)."""
  root = tmp_path_factory.mktemp("evaluation")
  short = _write_npz(root / "short.npz", long=False)
  long = _write_npz(root / "long.npz", long=True)
  dataset = data.load(short, max_seq_len=MAX_LEN)
  cfg = config_lib.PRESETS["original"].replace(**TINY, max_seq_len=MAX_LEN)
  workdir = str(root / "vae")
  checkpoint.save_run_files(workdir, cfg, dataset.facts, sources=[short])
  ckpts = checkpoint.Checkpoints(workdir)
  ckpts.save_latest(0, jax.device_get(train.create_state(cfg, jax.random.key(0)))._asdict())
  ckpts.close()
  return workdir, short, long


@pytest.mark.parametrize("rescale", [0, 0.0, -1.5, "-2", math.nan, "nan", "inf", "-inf", "abc"])
def test_rescale_must_be_finite_and_positive(files, rescale):
  _, short, _ = files
  dataset = data.load(short, max_seq_len=MAX_LEN)
  before = [s.copy() for s in dataset.splits["test"]]
  with pytest.raises(ValueError, match="rescale must be a") as e:
    evaluation.rescale_offsets(dataset, "test", rescale)
  assert repr(rescale) in str(e.value)  # names the bad value
  for got, want in zip(dataset.splits["test"], before):  # and changed nothing
    np.testing.assert_array_equal(got, want)


def test_rescale_multiplies_every_split(files):
  _, short, _ = files
  dataset = data.load(short, max_seq_len=MAX_LEN)
  before = dataset.splits["valid"][0].copy()
  assert evaluation.rescale_offsets(dataset, "test", "2.5") == 2.5
  np.testing.assert_allclose(dataset.splits["valid"][0][:, 0:2], 2.5 * before[:, 0:2])


def test_auto_rescale_with_nothing_to_measure_says_so(files):
  workdir, short, long = files
  facts = checkpoint.load_run_files(workdir)[1]
  dataset = data.load(long, facts=facts)  # every sketch is longer than N_max: all dropped
  with pytest.raises(ValueError) as e:
    evaluation.rescale_offsets(dataset, "test", "auto")
  assert str(e.value) == (
      "rescale 'auto' has no offsets to measure: no sketches in the train or test split "
      f"(test: 4 longer than the model's N_max {MAX_LEN}, 0 empty); pass a number")
  dataset = data.load(short, facts=facts)
  for s in dataset.splits["train"]:
    s[:, 0:2] = 0.0  # spread 0: the factor 1 / spread would be infinite
  with pytest.raises(ValueError, match="offsets of split 'train' do not vary"):
    evaluation.rescale_offsets(dataset, "test", "auto")


@pytest.mark.parametrize("batch_size", [0, -4])
def test_layout_refuses_a_batch_size_below_1(batch_size):
  # Both divide over any number of devices, so the divisibility check lets them through.
  with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {batch_size}"):
    parallel.layout(batch_size)


@pytest.mark.parametrize("launcher, args, message", [
    ("evaluate", ["--rescale=0"], "rescale must be a finite number > 0, not '0'"),
    ("evaluate", ["--rescale=nan"], "rescale must be a finite number > 0, not 'nan'"),
    ("evaluate", ["--rescale=auto", "--data={long}"], "rescale 'auto' has no offsets to measure"),
    ("evaluate", ["--batch_size=0"], "batch_size must be at least 1, got 0"),
    ("evaluate", ["--checkpoint=foo"], "checkpoint must be best, latest or a step number"),
    ("export_js", ["--checkpoint=foo", "--output={out}"],
     "checkpoint must be best, latest or a step number"),
])
def test_launchers_end_bad_values_with_one_line(files, tmp_path, launcher, args, message):
  workdir, _, long = files
  args = [a.format(long=long, out=tmp_path / "model.json") for a in args]
  proc = subprocess.run([sys.executable, "-m", f"experiments.{launcher}", f"--workdir={workdir}",
                         *args], cwd=REPO, capture_output=True, text=True, timeout=120)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 1, proc.stderr
  assert lines[-1].split("error: ", 1)[-1].startswith(message), proc.stderr
  assert "Traceback" not in proc.stderr
  assert proc.stdout == ""  # in particular, no JSON with NaN in it
