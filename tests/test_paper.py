"""The paper sweep (experiments/paper): a tiny run end to end, its table equal to a direct
evaluation, the figures, resuming without retraining, and the report from existing workdirs."""
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sketch_vae import checkpoint, data, evaluation, quickdraw_dataset, render_grid
from experiments.paper import figures, make_datasets
from experiments.paper import sweep as sweep_lib
from conftest import BUNDLED, REPO

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # np.cross inside `rdp`

# Tiny models and few steps: the test checks the plumbing, not the learning.
TINY = ("enc_rnn_size=16,dec_rnn_size=24,z_size=8,num_mixture=3,batch_size=8,"
        "log_every=3,eval_every=3,save_every=3")
STEPS = 3
SETTINGS = ("0.50", "decoder")
METRICS = ("recon_loss", "kl_loss_raw", "kl_loss", "offset_loss", "pen_loss", "pen_loss_masked",
           "count")


def _files(workdir):
  """Every file under a workdir with its bytes (checkpoints included)."""
  out = {}
  for base, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(base, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """cat and pig files of 25 drawings each (17/4/4), and the sweep over cat+pig, run once."""
  root = tmp_path_factory.mktemp("paper")
  for name in ("cat", "pig"):
    quickdraw_dataset.prepare([str(BUNDLED / f"{name}.ndjson")],
                              str(root / "data" / f"{name}.npz"), valid=4, test=4, seed=0)
  # A class the models never see, for the reconstructions of "other" inputs.
  quickdraw_dataset.prepare([str(BUNDLED / "pig_raw10.ndjson")],
                            str(root / "data" / "rawpig.npz"), valid=0, test=10, seed=0)
  sweep = sweep_lib.Sweep(datasets=("cat+pig",), settings=SETTINGS, root=str(root / "runs"),
                          data_dir=str(root / "data"), preset="small", num_steps=STEPS,
                          hparams=TINY, num_devices=1, eval_batch_size=8)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert sweep_lib.run(sweep) == 0
  return sweep, out.getvalue()


@pytest.fixture(scope="module")
def tiny(tiny_run):
  return tiny_run[0]


def test_one_summary_line_per_model_with_elapsed_time_and_eta(tiny_run):
  lines = [l for l in tiny_run[1].splitlines() if l.startswith("[")]
  assert [l.split(":")[0] for l in lines] == ["[1/2] cat+pig/wkl_0.50",
                                              "[2/2] cat+pig/decoder_only"]
  assert all(f": {STEPS} steps in " in l and "test L_R" in l and "ETA" in l for l in lines)
  assert lines[-1].endswith("ETA 0s")


def test_table_equals_direct_evaluation_of_each_saved_model(tiny):
  with open(os.path.join(tiny.root, "results.json")) as f:
    rows = json.load(f)["rows"]
  assert [(r["dataset"], r["setting"]) for r in rows] == [("cat+pig", s) for s in SETTINGS]
  table = open(os.path.join(tiny.root, "results.md")).read()
  for r in rows:
    assert r["status"] == "done" and r["trained_steps"] == STEPS
    config, facts, params, step = checkpoint.load_model(r["workdir"], "best")
    assert config.model.conditional == (r["setting"] != "decoder")
    if config.model.conditional:
      assert config.train.kl_weight == 0.5
    dataset = data.load(evaluation.training_data(r["workdir"]), facts=facts)
    assert [os.path.basename(p) for p in dataset.sources] == ["cat.npz", "pig.npz"]
    direct = evaluation.evaluate_split(config, params, dataset, "test", batch_size=8, num_devices=1)
    assert r["checkpoint_step"] == step
    for k in METRICS:
      assert r[k] == direct[k], k
    assert r["count"] == 8  # 4 test sketches of each class
    assert r["scale_factor"] == facts.scale_factor
    w = 0.5 if config.model.conditional else 0.0
    assert r["loss"] == pytest.approx(direct["recon_loss"] + w * direct["kl_loss"])
    name = "decoder-only" if w == 0 else "w_KL = 0.50"
    line = next(l for l in table.splitlines() if l.startswith(f"| cat+pig | {name} |"))
    assert f"| {direct['recon_loss']:.4f} |" in line and f"| {STEPS}/{STEPS} |" in line
    if config.model.conditional:
      assert f"| {direct['kl_loss_raw']:.4f} | {max(direct['kl_loss_raw'], 0.2):.4f} |" in line
    else:
      assert direct["kl_loss_raw"] == 0.0 and "| — | — |" in line


def _figure(tiny, name, n_rows, n_cols):
  """Opens the PNG (checking its size) and returns the strokes saved beside it."""
  prefix = os.path.join(tiny.root, "figures", name)
  with Image.open(prefix + ".png") as image:
    image.load()
    assert image.size == render_grid.grid_size(n_rows, n_cols, figures.CELL, row_labels=True,
                                               col_labels=True, label_width=figures.LABEL_WIDTH)
    assert len(set(image.convert("L").getdata())) > 2  # something is drawn
  assert "<svg" in open(prefix + ".svg").read()
  saved = np.load(prefix + ".npz", allow_pickle=True)
  assert tuple(saved["grid_shape"]) == (n_rows, n_cols)
  return {tuple(ij): s for ij, s in zip(saved["grid_index"], saved["strokes"])}


def test_figures_show_the_test_sketches_and_what_the_models_made_of_them(tiny):
  facts = checkpoint.load_run_files(os.path.join(tiny.root, "cat+pig", "wkl_0.50"))[1]
  cat, pig, other = (data.load(os.path.join(tiny.data_dir, f"{c}.npz"), facts=facts).splits["test"]
                     for c in ("cat", "pig", "rawpig"))
  temps = len(figures.RECON_TEMPERATURES)
  recon = _figure(tiny, "reconstruct_cat+pig_wkl_0.50", 6, 1 + temps)  # 2 cats, 2 pigs, 2 others
  for row, sketch in enumerate([cat[0], cat[1], pig[0], pig[1], other[0], other[1]]):
    np.testing.assert_array_equal(recon[(row, 0)], sketch)
  labels = list(np.load(os.path.join(tiny.root, "figures", "reconstruct_cat+pig_wkl_0.50.npz"))[
      "row_labels"])
  assert labels == ["cat 0", "cat 1", "pig 0", "pig 1", "rawpig 0 (other)", "rawpig 1 (other)"]
  interp = _figure(tiny, "interpolate_cat+pig", 1, figures.INTERP_STEPS + 2)
  np.testing.assert_array_equal(interp[(0, 0)], cat[0])
  np.testing.assert_array_equal(interp[(0, figures.INTERP_STEPS + 1)], pig[0])
  analogy = _figure(tiny, "analogy_cat+pig", 2, 6)  # cat->pig and pig->cat, 3 inputs each
  for i in range(3):
    np.testing.assert_array_equal(analogy[(0, 2 * i)], cat[i])
    np.testing.assert_array_equal(analogy[(1, 2 * i)], pig[i])
  complete = _figure(tiny, "complete_cat+pig", 4, 2 + figures.COMPLETIONS)
  for row, sketch in enumerate([cat[0], cat[1], pig[0], pig[1]]):
    given = figures.first_half(sketch)
    np.testing.assert_array_equal(complete[(row, 1)], given)
    for col in range(2, 2 + figures.COMPLETIONS):
      if (row, col) in complete:  # a completion starts with the given strokes, forced
        np.testing.assert_allclose(complete[(row, col)][:len(given)], given, rtol=0, atol=1e-6)
  names = sorted(os.listdir(os.path.join(tiny.root, "figures")))
  expected = ("reconstruct_cat+pig_wkl_0.50", "interpolate_cat+pig", "analogy_cat+pig",
              "complete_cat+pig")
  assert names == sorted(f"{n}.{ext}" for n in expected for ext in ("png", "svg", "npz"))


def test_rerun_skips_finished_models_without_training(tiny, capsys):
  workdirs = [os.path.join(tiny.root, "cat+pig", d) for d in ("wkl_0.50", "decoder_only")]
  before = {w: _files(w) for w in workdirs}
  results = open(os.path.join(tiny.root, "results.json")).read()
  capsys.readouterr()
  assert sweep_lib.run(tiny) == 0
  out = capsys.readouterr().out
  assert out.count("done already") == 2 and "train step" not in out
  assert "[2/2] cat+pig/decoder_only: done already (3 steps), skipped" in out
  for w in workdirs:
    assert _files(w) == before[w]  # checkpoints, metrics.jsonl and done.json untouched
    assert sweep_lib.latest_step(w) == STEPS
  assert open(os.path.join(tiny.root, "results.json")).read() == results


def test_report_scores_unfinished_models_afresh(tiny, tmp_path):
  """Without done.json a model counts as unfinished: the report scores its best checkpoint."""
  workdir = os.path.join(tiny.root, "cat+pig", "wkl_0.50")
  done_path = os.path.join(workdir, sweep_lib.DONE_FILE)
  done = open(done_path).read()
  os.remove(done_path)
  try:
    sweep = dataclasses.replace(tiny, figures=False)
    assert sweep_lib.run(sweep, only_report=True) == 0
    rows = json.load(open(os.path.join(tiny.root, "results.json")))["rows"]
  finally:
    with open(done_path, "w") as f:
      f.write(done)
  assert rows[0]["status"] == "partial" and rows[1]["status"] == "done"
  for k in METRICS:
    assert rows[0][k] == json.loads(done)["test"][k], k
  assert "unfinished" in open(os.path.join(tiny.root, "results.md")).read()


def test_launcher_only_report_from_the_command_line(tiny):
  args = [f"--datasets=cat+pig", f"--settings={','.join(SETTINGS)}", f"--root={tiny.root}",
          f"--data_dir={tiny.data_dir}", "--preset=small", f"--num_steps={STEPS}",
          f"--hparams={TINY}", "--eval_batch_size=8", "--only_report", "--nofigures"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.paper.run", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "results.md and results.json (2 rows)" in proc.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.paper.run", *args[:-2],
                        "--settings=0.5x"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 1 and "error:" in bad.stderr


def test_released_models_scored_on_the_same_test_split(tiny, tmp_path):
  """experiments.paper.pretrained: the released model found by name, scored as is and with
  --rescale=auto, per-point numbers in pixels, and the sweep's rows beside it."""
  released = tmp_path / "released"
  released.mkdir()
  model = REPO / "sketch_vae" / "assets" / "models" / "cat.gen.json"
  (released / "catpig.gen.json").write_bytes(model.read_bytes())
  scale = json.loads(model.read_text())[0]["scale_factor"]
  proc = subprocess.run([sys.executable, "-m", "experiments.paper.pretrained", "--datasets=cat+pig",
                         f"--root={tiny.root}", f"--data_dir={tiny.data_dir}",
                         f"--pretrained_dir={released}", "--batch_size=8"],
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads((pathlib.Path(tiny.root) / "pretrained.json").read_text())
  assert [r["model"] for r in rows] == ["released catpig.gen.json"] * 2 + [
      "ours, decoder-only", "ours, w_KL = 0.50"]
  as_is, auto = rows[0], rows[1]
  assert as_is["scale_factor"] == pytest.approx(scale) and as_is["rescale"] == 1.0
  assert as_is["offset_nll_per_point_px"] == pytest.approx(
      as_is["offset_loss"] * as_is["max_seq_len"] / as_is["mean_length"] + 2 * np.log(scale), rel=1e-5)
  train = [s for c in ("cat", "pig") for s in data.read_npz(os.path.join(tiny.data_dir, f"{c}.npz"))["train"]
           if 0 < len(s) <= as_is["max_seq_len"]]  # what the model keeps (N_max 130)
  pixels_std = np.std(np.concatenate([s[:, 0:2].reshape(-1) for s in train]).astype(np.float64))
  assert auto["rescale"] == pytest.approx(scale / pixels_std, rel=1e-5)
  assert auto["count"] == as_is["count"] and as_is["count"] + as_is["dropped_too_long"] == 8
  assert "| cat+pig | released catpig.gen.json | 1 |" in (pathlib.Path(tiny.root) / "pretrained.md").read_text()
  missing = subprocess.run([sys.executable, "-m", "experiments.paper.pretrained", "--datasets=crab",
                            f"--root={tmp_path}", f"--data_dir={tiny.data_dir}",
                            f"--pretrained_dir={released}"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
  assert missing.returncode == 1 and "no released model for 'crab'" in missing.stderr


def test_settings_hparams_and_done_logic(tmp_path):
  sweep = sweep_lib.Sweep(datasets=("cat", "cat+pig"), root=str(tmp_path), preset="small",
                          num_steps=7, hparams="dec_rnn_size=32,conditional=true,kl_decay_rate=0.9")
  jobs = sweep.jobs(make_data=False)
  assert [j.name for j in jobs] == [f"{d}/{s}" for d in ("cat", "cat+pig") for s in (
      "wkl_1.00", "wkl_0.50", "wkl_0.25", "decoder_only")]
  assert [j.config.train.kl_weight for j in jobs[:3]] == [1.0, 0.5, 0.25]
  assert not jobs[3].config.model.conditional and jobs[0].config.model.conditional
  assert {j.config.model.dec_rnn_size for j in jobs} == {32}
  assert {j.config.train.kl_decay_rate for j in jobs} == {0.9}
  assert {j.config.train.num_steps for j in jobs} == {7}
  assert [os.path.basename(p) for p in jobs[4].paths] == ["cat.npz", "pig.npz"]
  with pytest.raises(ValueError, match="bad --hparams"):
    sweep_lib.parse_hparams("dec_size=3")
  os.makedirs(jobs[0].workdir)
  assert not sweep_lib.is_done(jobs[0])
  with open(os.path.join(jobs[0].workdir, sweep_lib.DONE_FILE), "w") as f:
    json.dump({"num_steps": 5}, f)
  assert not sweep_lib.is_done(jobs[0])  # a larger --num_steps continues the model
  with open(os.path.join(jobs[0].workdir, sweep_lib.DONE_FILE), "w") as f:
    json.dump({"num_steps": 7}, f)
  assert sweep_lib.is_done(jobs[0])


def test_first_half_and_other_class(tmp_path):
  s = np.array([[0, 0, 0], [1, 0, 1], [0, 1, 0], [1, 1, 0], [2, 0, 1], [1, 1, 0], [0, 2, 1]],
               np.float32)
  np.testing.assert_array_equal(figures.first_half(s), s[:2])  # strokes end at 2, 5, 7
  np.testing.assert_array_equal(figures.first_half(s[:2]), s[:1])  # one stroke: cut inside
  for name in ("cat", "pig", "owl"):
    open(tmp_path / f"{name}.npz", "w").close()
  sweep = sweep_lib.Sweep(datasets=("cat", "cat+pig"), data_dir=str(tmp_path))
  assert figures.other_class(sweep, "cat") == "pig"
  assert figures.other_class(sweep, "cat+pig") == "owl"  # from the data folder
  assert make_datasets.prepare_command("a.json", "a.npz", 400, 400, 0, 2.0).endswith(
      "--input=a.json --output=a.npz --valid=400 --test=400 --seed=0 --epsilon=2")
