"""Gaps found by mutation testing of the launchers (experiments/*.py, experiments/paper/*.py).

Each test checks a launcher's output against values worked out independently (the library
called directly), on the tiny models test_sample.py trains once per session.
"""
import http.client
import json
import subprocess
import sys
import threading
import types

import jax
import numpy as np
import pytest

from sketch_vae import checkpoint, data, evaluation, sample
from sketch_vae import strokes as strokes_lib
from conftest import BUNDLED, REPO, run_python
from test_sample import run, workdirs  # noqa: F401  (the session's tiny trained models)

from experiments import analogy, common, interpolate, reconstruct, serve
from experiments import sample as sample_launcher
from experiments.paper import figures
from experiments.paper import pretrained as paper_pretrained


def _stored(path):
  s = np.load(path, allow_pickle=True)
  return s, dict(zip(map(tuple, s["grid_index"]), s["strokes"]))


@pytest.fixture
def decode_calls(monkeypatch):
  """Records every common.decode call's (temperatures, z) and passes it on."""
  calls, real = [], common.decode

  def spy(model, key, temps, z=None, **kw):
    calls.append(dict(temps=list(temps), z=None if z is None else np.asarray(z), kw=kw))
    return real(model, key, temps, z, **kw)

  monkeypatch.setattr(common, "decode", spy)
  return calls


def _mean_z(workdir, split_path, indices):
  """Posterior means of test sketches, straight from the library (the launchers' default
  --z_mean), normalised as the run's data are."""
  config, facts, params, _ = checkpoint.load_model(workdir, "best")
  test = data.load(str(split_path), facts=facts).splits["test"]
  x, lengths = strokes_lib.pad_batch([test[i] for i in indices], facts.max_seq_len)
  return np.asarray(sample.encode(config.model, params, x, lengths, jax.random.key(0),
                                  use_mean=True))


# ----------------------------------------------------------------------------
# sample


def test_sample_defaults_are_8_per_row_at_0_1_0_5_0_9(workdirs, tmp_path):
  vae, _, _ = workdirs
  run(sample_launcher, f"--workdir={vae}", f"--output_dir={tmp_path}", "--cell=16")
  stored, _ = _stored(tmp_path / "sample.npz")
  assert tuple(stored["grid_shape"]) == (3, 8)
  assert stored["row_labels"].tolist() == ["τ=0.1", "τ=0.5", "τ=0.9"]


def test_sample_column_keeps_its_z_and_row_keeps_its_temperature(workdirs, tmp_path,
                                                                 decode_calls):
  vae, _, _ = workdirs
  run(sample_launcher, f"--workdir={vae}", f"--output_dir={tmp_path}", "--num=3",
      "--temperatures=0.2,0.7", "--cell=16", "--seed=5")
  (call,) = decode_calls
  assert call["temps"] == pytest.approx([0.2] * 3 + [0.7] * 3)
  config, _, _, _ = checkpoint.load_model(vae, "best")
  k_z = jax.random.split(jax.random.key(5), 2)[0]
  want = np.asarray(sample.prior_z(config.model, k_z, 3))
  np.testing.assert_allclose(call["z"], np.concatenate([want, want]), rtol=1e-6)


# ----------------------------------------------------------------------------
# reconstruct, interpolate, analogy


def test_reconstruct_decodes_each_rows_own_z(workdirs, tmp_path, decode_calls):
  vae, _, small = workdirs
  run(reconstruct, f"--workdir={vae}", f"--output_dir={tmp_path}", "--index=1,3",
      "--temperatures=0.2,0.8", "--num=2", "--cell=16")
  z1, z3 = _mean_z(vae, small, [1, 3])
  (call,) = decode_calls
  assert call["temps"] == pytest.approx([0.2, 0.2, 0.8, 0.8] * 2)
  np.testing.assert_allclose(call["z"], np.stack([z1] * 4 + [z3] * 4), rtol=1e-5, atol=1e-6)


def test_reconstruct_default_inputs_are_test_0_to_3(workdirs, tmp_path):
  vae, _, _ = workdirs
  run(reconstruct, f"--workdir={vae}", f"--output_dir={tmp_path}", "--num=1",
      "--temperatures=0.5", "--cell=16")
  stored, _ = _stored(tmp_path / "reconstruct.npz")
  assert stored["row_labels"].tolist() == ["test 0", "test 1", "test 2", "test 3"]


def test_interpolate_walks_from_a_to_b_with_labelled_fractions(workdirs, tmp_path,
                                                               decode_calls):
  vae, _, small = workdirs
  run(interpolate, f"--workdir={vae}", f"--output_dir={tmp_path}", "--index=0,2", "--steps=4",
      "--cell=16")  # default --method: slerp
  za, zb = _mean_z(vae, small, [0, 2])
  (call,) = decode_calls
  np.testing.assert_allclose(call["z"], sample.interpolate(za, zb, 4, "slerp"), rtol=1e-5,
                             atol=1e-6)
  stored, _ = _stored(tmp_path / "interpolate.npz")
  assert stored["row_labels"].tolist() == ["slerp τ=0.1"]
  assert stored["col_labels"].tolist() == ["test 0", "0", "0.33", "0.67", "1", "test 2"]


def test_interpolate_cells_share_one_sampling_key(workdirs, tmp_path):
  """From a sketch to itself every z is the same: with one key, so is every decoding,
  even at tau = 1."""
  vae, _, _ = workdirs
  run(interpolate, f"--workdir={vae}", f"--output_dir={tmp_path}", "--index=3,3", "--steps=3",
      "--method=lerp", "--temperatures=1.0", "--cell=16")
  _, cells = _stored(tmp_path / "interpolate.npz")
  for col in (2, 3):
    np.testing.assert_array_equal(cells[0, col], cells[0, 1])


def test_interpolate_refuses_fewer_than_two_steps(workdirs, tmp_path):
  vae, _, _ = workdirs
  with pytest.raises(SystemExit) as e:
    run(interpolate, f"--workdir={vae}", f"--output_dir={tmp_path}", "--steps=1")
  assert "need --steps >= 2" in str(e.value.code)


def test_analogy_decodes_a_minus_b_plus_c(workdirs, tmp_path, decode_calls):
  vae, _, small = workdirs
  run(analogy, f"--workdir={vae}", f"--output_dir={tmp_path}", "--index=1,4,6", "--cell=16")
  za, zb, zc = _mean_z(vae, small, [1, 4, 6]).astype(np.float64)
  (call,) = decode_calls
  assert call["temps"] == pytest.approx([0.1] * 4)  # defaults: tau 0.1, --num 4
  np.testing.assert_allclose(call["z"], np.tile(za - zb + zc, (4, 1)), rtol=1e-4, atol=1e-5)
  stored, _ = _stored(tmp_path / "analogy.npz")
  assert tuple(stored["grid_shape"]) == (1, 7)


# ----------------------------------------------------------------------------
# evaluate (its flags clash with common.py's: a subprocess)


def test_evaluate_scores_the_asked_split_seed_and_rescale(workdirs):
  vae, _, small = workdirs
  proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={vae}",
                         f"--data={small}", "--split=valid", "--seed=3", "--rescale=2",
                         "--batch_size=4", "--num_devices=1"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  config, facts, params, _ = checkpoint.load_model(vae, "best")

  def direct(split, seed, rescale):
    dataset = data.load(str(small), facts=facts)
    factor = evaluation.rescale_offsets(dataset, split, rescale)  # offsets scaled in place
    return evaluation.evaluate_split(config, params, dataset, split, batch_size=4,
                                     num_devices=1, seed=seed, rescale=factor)

  want = direct("valid", 3, 2.0)
  assert got["split"] == "valid" and got["rescale"] == 2.0
  for k in ("recon_loss", "offset_loss", "pen_loss", "kl_loss_raw", "offset_nll_per_point_px",
            "count"):
    assert got[k] == pytest.approx(want[k], rel=1e-6), k
  # and the numbers do depend on each of split, seed and rescale
  for args in (("test", 3, 2.0), ("valid", 0, 2.0), ("valid", 3, 1.0)):
    alt = direct(*args)
    assert alt["recon_loss"] != pytest.approx(want["recon_loss"], rel=1e-6) or \
        alt["kl_loss_raw"] != pytest.approx(want["kl_loss_raw"], rel=1e-6)


# ----------------------------------------------------------------------------
# paper/pretrained.score: the test split


def test_paper_pretrained_scores_the_test_split(workdirs):
  vae, _, small = workdirs
  got = paper_pretrained.score(vae, str(small), "1", 4)
  config, facts, params, _ = checkpoint.load_model(vae, "best")
  dataset = data.load(str(small), facts=facts)
  want = evaluation.evaluate_split(config, params, dataset, "test", batch_size=4, num_devices=1)
  for k in ("recon_loss", "kl_loss_raw", "count"):
    assert got[k] == pytest.approx(want[k], rel=1e-6), k
  valid = evaluation.evaluate_split(config, params, dataset, "valid", batch_size=4, num_devices=1)
  assert valid["recon_loss"] != pytest.approx(want["recon_loss"], rel=1e-6)


# ----------------------------------------------------------------------------
# paper/figures: interpolation direction and analogy sign


@pytest.fixture
def two_classes(workdirs, tmp_path):
  """Classes a and b: different sheep (as npz files) for the tiny VAE."""
  vae, _, small = workdirs
  raw = np.load(small, allow_pickle=True)
  paths = {}
  for name, start in (("a", 0), ("b", 4)):
    arrays = {s: raw[s] for s in ("train", "valid")}
    test = np.empty(4, dtype=object)
    for i in range(4):
      test[i] = raw["test"][start + i]
    arrays["test"] = test
    paths[name] = str(tmp_path / f"{name}.npz")
    np.savez(paths[name], **arrays)
  sweep = types.SimpleNamespace(classes=lambda d: ["a", "b"], root=str(tmp_path / "root"),
                                class_path=lambda c, make=True: paths[c])
  job = types.SimpleNamespace(workdir=vae, setting="0.50", dataset="a+b")
  figures._model.cache_clear()
  figures._test_split.cache_clear()
  return sweep, job, small


@pytest.fixture
def figure_decodes(monkeypatch):
  calls, real = [], figures._decode

  def spy(config, params, facts, key, temps, z=None, **kw):
    calls.append(np.asarray(z))
    return real(config, params, facts, key, temps, z, **kw)

  monkeypatch.setattr(figures, "_decode", spy)
  return calls


def test_figure_interpolation_goes_from_the_first_class_to_the_second(two_classes,
                                                                      figure_decodes):
  sweep, job, small = two_classes
  figures.interpolation(sweep, "a+b", [job], jax.random.key(0))
  za, zb = _mean_z(job.workdir, small, [0, 4])  # a's test 0 is sheep 0, b's is sheep 4
  (z,) = figure_decodes
  np.testing.assert_allclose(z, sample.interpolate(za, zb, figures.INTERP_STEPS, "slerp"),
                             rtol=1e-5, atol=1e-6)


def test_figure_analogy_moves_from_its_class_mean_to_the_others(two_classes, figure_decodes):
  sweep, job, small = two_classes
  figures.analogy(sweep, "a+b", [job], jax.random.key(0), n=2)
  z = _mean_z(job.workdir, small, range(8)).astype(np.float64)
  mean_a, mean_b = z[:4].mean(0), z[4:].mean(0)
  a_to_b, b_to_a = figure_decodes
  np.testing.assert_allclose(a_to_b, z[:2] - mean_a + mean_b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(b_to_a, z[4:6] - mean_b + mean_a, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# serve: the body limit is inclusive


class _EchoService:
  limits = types.SimpleNamespace(max_body_bytes=100)

  def sample(self, body):
    return {"got": body}


def test_serve_accepts_a_body_of_exactly_the_limit_and_refuses_one_more():
  srv = serve.Server(("127.0.0.1", 0), _EchoService(), request_timeout=5.0)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  try:
    def post(raw):
      conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
      try:
        conn.request("POST", "/api/sample", body=raw,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
      finally:
        conn.close()
    body = b'{"x": "' + b"a" * 91 + b'"}'
    assert len(body) == 100
    assert post(body) == (200, {"got": {"x": "a" * 91}})
    status, out = post(body + b" ")
    assert status == 413 and "at most 100" in out["error"]
  finally:
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------
# prepare_data: --start_at_origin reaches the library


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_prepare_data_start_at_origin_zeroes_every_first_offset(tmp_path):
  def first_offsets(*flags):
    out = tmp_path / f"cats{len(flags)}.npz"
    proc = subprocess.run([sys.executable, "-m", "experiments.prepare_data",
                           f"--input={BUNDLED / 'cat.ndjson'}", f"--output={out}", "--valid=1",
                           "--test=1", "--max_drawings=6", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    npz = np.load(out, allow_pickle=True, encoding="latin1")
    return np.array([s[0, :2] for split in ("train", "valid", "test") for s in npz[split]])

  assert np.any(first_offsets() != 0)  # by default: the start point
  np.testing.assert_array_equal(first_offsets("--start_at_origin"), 0)


@pytest.mark.parametrize("clip", [False, True])
def test_export_js_passes_clip_to_the_library(clip):
  # The library's clipping is tested in test_browser.py; here the flag must reach it.
  code = ("import sys, types\nfrom absl import app\nfrom sketch_vae import pretrained\n"
          "def export(workdir, output, **kw):\n"
          "  print('options', sorted(kw.items()))\n"
          "  return types.SimpleNamespace(path=output, step=3, info={}, clipped=2 * kw['clip'])\n"
          "pretrained.export_workdir = export\n"
          "from experiments import export_js\n"
          f"sys.argv = ['export_js', '--workdir=w', '--output=o.json', '--clip={clip}']\n"
          "app.run(export_js.main)\n")
  stdout = run_python(code)
  assert f"options [('checkpoint', 'best'), ('clip', {clip}), ('name', None)]" in stdout
  assert stdout.rstrip().endswith("; clipped 2 weight(s)" if clip else "{}")


def test_paper_table_step_is_the_scored_checkpoint_not_the_last_trained():
  # A run trained to 500 steps whose best validation checkpoint is 300 is scored at 300.
  from experiments.paper import report, sweep as sweep_lib
  values = dict(recon_loss=0.5, kl_loss_raw=0.1, kl_loss=0.2, offset_loss=0.3, pen_loss=0.2,
                loss=0.6, offset_nll_per_point_px=1.234, count=7)
  rows = [dict(dataset="cat", setting="0.50", status="done", conditional=True,
               checkpoint_step=300, trained_steps=500, num_steps=500, scale_factor=3.0,
               max_seq_len=60, **values),
          dict(dataset="pig", setting="decoder", status="partial", conditional=False,
               checkpoint_step=40, trained_steps=90, num_steps=500, scale_factor=2.5,
               max_seq_len=61, **values)]
  table = report.markdown(rows, sweep_lib.Sweep(num_steps=500)).splitlines()
  assert "| cat | w_KL = 0.50 | 300/500 | 0.5000 | 0.1000 | 0.2000 | 0.3000 | 0.2000 | 0.6000 | " \
         "1.234 | 7 | 3.00 | 60 |" in table
  assert "| pig | decoder-only | 40/500 * | 0.5000 | — | — | 0.3000 | 0.2000 | 0.6000 | " \
         "1.234 | 7 | 2.50 | 61 |" in table
