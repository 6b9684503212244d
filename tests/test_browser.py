"""Browser (sketch-rnn-js) models: decoding, cell layout against a NumPy browser forward pass,
VAE mapping, round trips, samples, errors, and the import / export / evaluate launchers.

The references here are written from the format's description (REFERENCE.md,
"Browser model format"; data/SOURCES.md): blobs are decoded with NumPy from the
base64 text, and the browser's LSTM, head and VAE are restated in float64.
"""
import base64
import dataclasses
import json
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from sketch_vae import browser, model, pretrained, quickdraw, quickdraw_dataset, sample, strokes
from conftest import BUNDLED, REPO

CAT_FILE = REPO / "sketch_vae" / "assets" / "models" / "cat.gen.json"
STEP = 10.0 / 32767
# The documented blob order, restated here (not imported from browser.LAYOUTS).
GEN_ORDER = ["out_w", "out_b", "dec_w_xh", "dec_w_hh", "dec_b"]
VAE_ORDER = ["fw_w_xh", "fw_w_hh", "fw_b", "bw_w_xh", "bw_w_hh", "bw_b", "mu_w", "mu_b",
             "sigma_w", "sigma_b", "init_w", "init_b"] + GEN_ORDER
TINY_VAE = model.ModelSpec(enc_rnn_size=8, dec_rnn_size=12, z_size=4, num_mixture=3)
TINY_GEN = model.ModelSpec(dec_rnn_size=6, num_mixture=2, conditional=False)
TINY_INFO = {"name": "tiny", "max_seq_len": 40, "scale_factor": 12.5}


def _np_decode(text, shape):
  # float64 before "* 10": int16 * 10 would wrap around for |q| > 3276.
  return (np.frombuffer(base64.b64decode(text), "<i2").astype(np.float64) * 10 / 32767).reshape(shape)


def _np_blobs(value, order):
  info, shapes, blobs = value
  return {name: _np_decode(b, s) for name, s, b in zip(order, shapes, blobs)}


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _np_lstm(w_xh, w_hh, b, x, h, c):
  """concat(x, h) @ concat(W_xh, W_hh) + b; gates i, g, f, o; forget bias 1."""
  H = w_hh.shape[0]
  g = np.concatenate([x, h]) @ np.concatenate([w_xh, w_hh], axis=0) + b
  c = c * _sigmoid(g[2 * H:3 * H] + 1.0) + _sigmoid(g[:H]) * np.tanh(g[H:2 * H])
  return np.tanh(c) * _sigmoid(g[3 * H:]), c


def _np_decoder(w, inputs_Tx5, z=None):
  """The browser's decoder, teacher-forced: per step (pi, mu1, mu2, s1, s2, rho, pen)."""
  H = w["dec_w_hh"].shape[0]
  h = c = np.zeros(H)
  if z is not None:  # tanh(z W + b), c first then h
    state = np.tanh(z @ w["init_w"] + w["init_b"])
    c, h = state[:H], state[H:]
  out = []
  for x in inputs_Tx5:
    x = x if z is None else np.concatenate([x, z])
    h, c = _np_lstm(w["dec_w_xh"], w["dec_w_hh"], w["dec_b"], x, h, c)
    y = h @ w["out_w"] + w["out_b"]
    M = (len(y) - 3) // 6
    pi, mu1, mu2, ls1, ls2, corr = np.split(y[3:], 6)
    out.append((_softmax(pi), mu1, mu2, np.exp(ls1), np.exp(ls2), np.tanh(corr), _softmax(y[:3])))
    assert len(pi) == M
  return [np.array(k) for k in zip(*out)]


def _ours(spec, params, inputs_BxTx5, z=None):
  y, _ = jax.jit(lambda p, x, z: model.decode(spec, p, z, x))(params, inputs_BxTx5, z)
  y = np.asarray(y, np.float64)[0]
  pi, mu1, mu2, ls1, ls2, corr = np.split(y[:, 3:], 6, axis=-1)
  soft = lambda a: np.exp(a - a.max(-1, keepdims=True)) / np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)
  return [soft(pi), mu1, mu2, np.exp(ls1), np.exp(ls2), np.tanh(corr), soft(y[:, :3])]


def _first_cat(scale_factor):
  drawing = next(d for d in quickdraw.iter_drawings(str(BUNDLED / "cat.ndjson")))
  s3 = quickdraw.to_stroke3(drawing).astype(np.float32)
  s3[:, 0:2] /= scale_factor
  return s3


@pytest.fixture(scope="module")
def cat_value():
  return json.loads(CAT_FILE.read_text())


@pytest.fixture(scope="module")
def cat():
  return browser.read(str(CAT_FILE))


@pytest.fixture(scope="module")
def cat_workdir(tmp_path_factory):
  """The bundled cat imported by the launcher, once per module."""
  workdir = tmp_path_factory.mktemp("imported") / "cat"
  r = subprocess.run([sys.executable, "-m", "experiments.import_js", "--model=cat",
                      f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert "decoder-only, LSTM decoder 512, 20 mixtures" in r.stdout
  return workdir


def test_import_decodes_every_weight_as_the_format_defines(cat, cat_value):
  info, shapes, blobs = cat_value
  ours = [cat.params["decoder"][k] for k in ("out_w", "out_b")] + [
      cat.params["decoder"]["rnn"][k] for k in ("w_x", "w_h", "b")]
  rng = np.random.default_rng(0)
  for blob, shape, got in zip(blobs, shapes, ours):
    want = np.frombuffer(base64.b64decode(blob), "<i2").astype(np.float64) * 10 / 32767
    assert got.shape == tuple(shape) and got.dtype == np.float32
    picks = np.concatenate([[0, 1, want.size // 2, want.size - 1], rng.integers(0, want.size, 20)])
    np.testing.assert_array_equal(got.reshape(-1)[picks], want[picks].astype(np.float32))
  assert cat.spec == model.ModelSpec(conditional=False, dec_model="lstm", dec_rnn_size=512,
                                     num_mixture=20)
  assert cat.facts.scale_factor == 82.2 and cat.facts.max_seq_len == 130
  # The tree is what model.init builds, so checkpoints restore into it.
  shapes_init = jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda k: model.init(cat.spec, k), jax.random.key(0)))
  assert jax.tree.map(lambda a: a.shape, cat.params) == shapes_init


def test_cell_layout_matches_a_numpy_browser_forward_pass(cat, cat_value):
  s3 = _first_cat(cat.facts.scale_factor)
  n = len(s3)
  x = strokes.to_stroke5(s3, n)[None, :n]  # S0 and the sketch: predicts rows 1..n
  want = _np_decoder(_np_blobs(cat_value, GEN_ORDER), x[0].astype(np.float64))
  got = _ours(cat.spec, cat.params, x)
  for name, g, w in zip(["pi", "mu1", "mu2", "sigma1", "sigma2", "rho", "pen"], got, want):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5, err_msg=name)


def test_vae_maps_onto_a_numpy_browser_vae_and_round_trips(tmp_path):
  params = model.init(TINY_VAE, jax.random.key(3))
  # Make every encoder and z-map weight matter (the 0.001 init hides mix-ups).
  for part, key in (("encoder", "mu_w"), ("encoder", "presig_w"), ("decoder", "init_w")):
    params[part][key] = params[part][key] * 800
  path = str(tmp_path / "tiny.vae.json")
  with pytest.warns(UserWarning, match="3 mixture components"):
    browser.write(path, TINY_VAE, params, TINY_INFO)
  value = json.loads(open(path).read())
  assert value[0]["mode"] in (0, 1) and len(value[2]) == 17
  back = browser.read(path)
  assert back.spec == TINY_VAE and back.facts.scale_factor == 12.5
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), params, back.params)
  assert max(jax.tree.leaves(diffs)) <= STEP / 2 + 1e-7
  # The browser's VAE, from the blobs: fw over the sketch, bw over it reversed.
  w = _np_blobs(value, VAE_ORDER)
  s3 = _first_cat(60.0)[:30]
  rows = strokes.to_stroke5(s3, len(s3)).astype(np.float64)
  hf = cf = hb = cb = np.zeros(8)
  for xf, xb in zip(rows[1:], rows[1:][::-1]):
    hf, cf = _np_lstm(w["fw_w_xh"], w["fw_w_hh"], w["fw_b"], xf, hf, cf)
    hb, cb = _np_lstm(w["bw_w_xh"], w["bw_w_hh"], w["bw_b"], xb, hb, cb)
  h = np.concatenate([hf, hb])
  mu, presig = h @ w["mu_w"] + w["mu_b"], h @ w["sigma_w"] + w["sigma_b"]
  batch, lengths = strokes.pad_batch([s3], 40)  # padded: the backward pass must skip it
  encode = jax.jit(lambda p: model.encode(TINY_VAE, p, batch, lengths, jax.random.key(0)))
  enc = encode(back.params)
  np.testing.assert_allclose(enc.mu[0], mu, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(enc.presig[0], presig, rtol=1e-4, atol=1e-5)
  # And the same encoder output as the float params, to the quantisation's effect.
  enc0 = encode(jax.tree.map(np.asarray, params))
  np.testing.assert_allclose(enc.mu, enc0.mu, atol=0.02)
  z = np.asarray(enc.mu[0], np.float64)
  want = _np_decoder(w, rows[:-1], z)
  got = _ours(TINY_VAE, back.params, rows[None, :-1].astype(np.float32), enc.mu)
  for name, g, ww in zip(["pi", "mu1", "mu2", "sigma1", "sigma2", "rho", "pen"], got, want):
    np.testing.assert_allclose(g, ww, rtol=1e-4, atol=1e-5, err_msg=name)


def test_cat_export_reproduces_the_file_and_launchers_run(cat_workdir, tmp_path):
  out = tmp_path / "cat_again.json"
  r = subprocess.run([sys.executable, "-m", "experiments.export_js", f"--workdir={cat_workdir}",
                      f"--output={out}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert out.read_bytes() == CAT_FILE.read_bytes()  # stronger than "within 10 / 32767"
  record = json.loads((cat_workdir / "imported.json").read_text())
  assert record["info"]["scale_factor"] == 82.2 and record["sha256"].startswith("54d83b0b")
  facts = json.loads((cat_workdir / "data_facts.json").read_text())
  assert facts == {"scale_factor": 82.2, "max_seq_len": 130}
  # evaluate on the bundled cats, prepared into a tiny .npz.
  npz = tmp_path / "cats.npz"
  quickdraw_dataset.prepare([str(BUNDLED / "cat.ndjson")], str(npz), train=10, valid=5, test=10)
  r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={cat_workdir}",
                      f"--data={npz}", "--split=test", "--batch_size=8", "--rescale=auto"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result["count"] + result["dropped_too_long"] == 10 and result["checkpoint_step"] == 0
  assert np.isfinite(result["recon_loss"]) and -2.0 < result["recon_loss"] < 2.0
  # auto: the train split's offsets, so rescaled, spread like the model's training data.
  train = np.load(npz, allow_pickle=True, encoding="latin1")["train"]
  spread = np.std(np.concatenate([s[:, 0:2].reshape(-1) for s in train]).astype(np.float64))
  assert result["rescale"] == pytest.approx(82.2 / spread, rel=1e-5)


def test_ensure_workdir_imports_once_and_passes_workdirs_through(cat_workdir, tmp_path):
  assert pretrained.ensure_workdir(str(cat_workdir)) == str(cat_workdir)
  first = pretrained.ensure_workdir("bundled:pig", cache_dir=str(tmp_path))
  assert json.loads(open(f"{first}/data_facts.json").read())["max_seq_len"] == 168
  stamp = open(f"{first}/imported.json").read()
  assert pretrained.ensure_workdir("bundled:pig", cache_dir=str(tmp_path)) == first
  assert open(f"{first}/imported.json").read() == stamp
  assert [p.name for p in tmp_path.iterdir()] == [first.split("/")[-1]]  # no temporary left
  with pytest.raises(browser.BrowserModelError, match="bundled: cat, pig"):
    pretrained.ensure_workdir("bundled:dragon", cache_dir=str(tmp_path))


def test_low_temperature_cats_end_in_time_and_have_a_drawing_size(cat):
  N = cat.facts.max_seq_len
  temps = [0.1, 0.1, 0.15, 0.2, 0.25, 0.25]
  out = sample.sample_batch(cat.spec, cat.params, jax.random.key(7), temps, max_len=N)
  for rows, length in zip(np.asarray(out.strokes), np.asarray(out.length)):
    assert 10 <= length <= N
    assert np.all(rows[length:, 4] == 1)
    s3 = strokes.stroke5_to_stroke3(rows) * np.array([cat.facts.scale_factor] * 2 + [1])
    x0, x1, y0, y1 = strokes.bounds(s3)
    assert 30 < x1 - x0 < 1500 and 30 < y1 - y0 < 1500, (x1 - x0, y1 - y0)
    assert s3[:, 2].sum() >= 1  # at least one pen lift: strokes, not one scribble


# ----------------------------------------------------------------------------
# Errors name the file and the problem.


def _tiny_gen_value():
  params = model.init(TINY_GEN, jax.random.key(1))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    value, _ = browser.to_json(TINY_GEN, params, TINY_INFO)
  return value


def _broken(kind):
  info, shapes, blobs = _tiny_gen_value()
  b16 = lambda n: base64.b64encode(np.zeros(n, "<i2").tobytes()).decode()
  if kind == "blob_count":
    return [info, shapes, blobs[:-1]]
  if kind == "blob_length":
    return [info, shapes, [blobs[0], b16(14)] + blobs[2:]]  # out_b needs 15
  if kind == "w_hh_shape":
    return [info, shapes[:3] + [[6, 20]] + shapes[4:], blobs]
  if kind == "w_xh_rows":
    return [info, shapes[:2] + [[7, 24]] + shapes[3:], blobs]
  if kind == "not_6m_plus_3":
    return [info, [[6, 16], [16]] + shapes[2:], blobs]
  if kind == "base64":
    return [info, shapes, ["@@not base64@@"] + blobs[1:]]
  if kind == "mode":
    return [dict(info, mode=7), shapes, blobs]
  if kind == "vae_mode_gen_blobs":
    return [dict(info, mode=0), shapes, blobs]
  if kind == "version":
    return [dict(info, version=99), shapes, blobs]
  if kind == "scale":
    return [dict(info, scale_factor=-1), shapes, blobs]
  if kind == "scale_huge_int":
    return [dict(info, scale_factor=10 ** 400), shapes, blobs]
  if kind == "max_seq_len_huge":
    return [dict(info, max_seq_len=10 ** 12), shapes, blobs]
  if kind == "shape_of_file":
    return {"info": info}
  raise KeyError(kind)


@pytest.mark.parametrize("kind, message", [
    ("blob_count", "5 shapes but 4 weight blobs"),
    ("blob_length", r"blob 1 \(output b.*decodes to 14 values, its shape needs 15"),
    ("w_hh_shape", r"blob 3 \(decoder LSTM W_hh\) has shape \[6, 20\], expected \[H,4H\] = \[6, 24\]"),
    ("w_xh_rows", r"blob 2 \(decoder LSTM W_xh\) has shape \[7, 24\], expected \[5\+Z,4H\] = \[5, 24\]"),
    ("not_6m_plus_3", "not 6M"),
    ("base64", "not valid base64"),
    ("mode", "unknown mode 7"),
    ("vae_mode_gen_blobs", r"VAE model has 17 weight blobs, this one has 5 \(.*decoder-only"),
    ("version", "unknown version 99"),
    ("scale", "scale_factor should be a positive number"),
    ("scale_huge_int", r"scale_factor should be a positive number, got 1000.*\.\.\."),
    ("max_seq_len_huge", "max_seq_len should be an integer from 1 to 10000, got 1000000000000"),
    ("shape_of_file", r"expected a JSON array \[info, shapes, weights\]"),
])
def test_bad_files_are_clear_errors_naming_the_file(tmp_path, kind, message):
  path = tmp_path / f"{kind}.json"
  path.write_text(json.dumps(_broken(kind)))
  with pytest.raises(browser.BrowserModelError, match=message) as e:
    browser.read(str(path))
  assert str(path) in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("[" * 200_000, "nested too deeply"),
    ('[{"scale_factor": ' + "9" * 5000 + "}]", "not readable as a model file"),
])
def test_unparseable_json_is_a_clear_error(tmp_path, text, message):
  path = tmp_path / "odd.gen.json"
  path.write_text(text)
  with pytest.raises(browser.BrowserModelError, match=message) as e:
    browser.read(str(path))
  assert str(path) in str(e.value)


def test_truncated_and_missing_files(tmp_path):
  path = tmp_path / "cut.gen.json"
  path.write_bytes(CAT_FILE.read_bytes()[:5000])
  with pytest.raises(browser.BrowserModelError, match="not valid JSON .*truncated") as e:
    browser.read(str(path))
  assert str(path) in str(e.value)
  with pytest.raises(browser.BrowserModelError, match="cannot read"):
    browser.read(str(tmp_path / "absent.json"))
  with pytest.raises(browser.BrowserModelError, match="not a bundled model"):
    pretrained.resolve_model("dragon")


@pytest.mark.parametrize("overrides, message", [
    (dict(dec_model="layer_norm"), "decoder is a 'layer_norm' cell"),
    (dict(enc_model="hyper"), "encoder is a 'hyper' cell"),
])
def test_non_lstm_models_cannot_be_exported(overrides, message):
  spec = dataclasses.replace(TINY_VAE, **overrides)
  params = jax.eval_shape(lambda k: model.init(spec, k), jax.random.key(0))
  with pytest.raises(browser.BrowserModelError, match=message):
    browser.to_json(spec, params, TINY_INFO)


@pytest.mark.filterwarnings("ignore:.*mixture components")
def test_weights_beyond_ten_are_refused_or_clipped_and_counted():
  params = model.init(TINY_GEN, jax.random.key(1))
  params["decoder"]["out_b"] = params["decoder"]["out_b"].at[2].set(12.5).at[4].set(-10.2)
  with pytest.raises(browser.BrowserModelError, match=r"output b: 2 weight\(s\) beyond \+-10"):
    browser.to_json(TINY_GEN, params, TINY_INFO)
  with pytest.warns(UserWarning, match=r"clipped 2 weight"):
    value, clipped = browser.to_json(TINY_GEN, params, TINY_INFO, clip=True)
  assert clipped == 2
  out_b = _np_decode(value[2][1], value[1][1])
  assert out_b[2] == 10.0 and out_b[4] == -10.0
