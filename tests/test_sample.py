"""Sampling: batched == unbatched, greedy == the top component's mean, temperature and the two
sigma conventions, interpolation and analogy, completion, the end of a sketch; the five sampling
launchers end to end on a tiny trained model.

Decoders with known mixtures are made by zeroing the output weights: every step then emits the
output bias, a mixture chosen in the test, whatever the LSTM does.
"""
import dataclasses
import subprocess
import sys
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from PIL import Image

from sketch_vae import checkpoint, config as config_lib, data, mdn, model, sample, train
from sketch_vae import render_grid
from sketch_vae import strokes as strokes_lib
from conftest import BUNDLED, REPO, run_python

from experiments import analogy, complete, interpolate, reconstruct
from experiments import sample as sample_launcher

L = 16  # max_len of the unit tests' samples
TINY = dict(enc_rnn_size=16, dec_rnn_size=32, z_size=8, num_mixture=3)
END = np.array([0, 0, 0, 0, 1], np.float32)


@pytest.fixture(scope="module")
def tiny():
  spec = config_lib.PRESETS["original"].replace(**TINY).model
  return spec, model.init(spec, jax.random.key(0))


def head_bias(pen, pi, mu_x, mu_y, sigma_x, sigma_y, rho_hat):
  """The raw head output for a chosen mixture, in the original's slicing order."""
  parts = [pen, pi, mu_x, mu_y, np.log(sigma_x), np.log(sigma_y), rho_hat]
  return np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in parts])


def fixed_decoder(params, bias):
  """Params whose decoder emits `bias` at every step (output weights zero)."""
  dec = dict(params["decoder"], out_w=jnp.zeros_like(params["decoder"]["out_w"]),
             out_b=jnp.asarray(bias, jnp.float32))
  return dict(params, decoder=dec)


def z_rows(n, spec, seed=0):
  return np.random.default_rng(seed).normal(size=(n, spec.z_size)).astype(np.float32)


# ----------------------------------------------------------------------------
# The sampler.


@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_batched_row_i_equals_unbatched_sampler_with_fold_in_key(tiny, cell):
  # Under vmap the layer-norm and HyperLSTM cell kernels see one parameter group per sketch.
  spec, params = tiny
  if cell != "lstm":
    spec = dataclasses.replace(spec, dec_model=cell, hyper_num_units=8, hyper_embedding_size=4)
    params = model.init(spec, jax.random.key(0))
  key, temps = jax.random.key(3), np.array([0.2, 0.7, 1.0, 1.5], np.float32)
  z = z_rows(4, spec)
  prefix = np.zeros((4, L, 5), np.float32)  # the completion test's shapes: one compile for both
  prefix[:, :, 0:2] = np.random.default_rng(1).normal(size=(4, L, 2))
  prefix[:, :, 2] = 1.0
  prefix_len = np.array([0, 1, 3, 2], np.int32)
  out = sample.sample_batch(spec, params, key, temps, z=z, prefix=prefix, prefix_len=prefix_len,
                            max_len=L)
  one = jax.jit(lambda k, t, z, p, n: sample.sample_one(spec, params, k, t, z, p, n, max_len=L))
  for i in range(4):
    want = one(jax.random.fold_in(key, i), temps[i], z[i], prefix[i], prefix_len[i])
    np.testing.assert_allclose(out.strokes[i], want.strokes, atol=1e-5)
    np.testing.assert_array_equal(out.strokes[i, :, 2:], want.strokes[:, 2:])
    assert int(out.length[i]) == int(want.length)
  assert len({np.asarray(out.strokes[i]).tobytes() for i in range(4)}) == 4  # rows differ


@pytest.mark.parametrize("cell", ["lstm", "hyper"])
def test_batch_that_shrinks_as_sketches_end_matches_the_unbatched_sampler(tiny, cell):
  # 96 rows run at batch 96 until at most 32 are unfinished, then those are gathered into a
  # batch of 32 (sample.row_tiers): carries, keys, temperatures and prefixes must follow them.
  spec, params = tiny
  if cell != "lstm":
    spec = dataclasses.replace(spec, dec_model=cell, hyper_num_units=8, hyper_embedding_size=4)
    params = model.init(spec, jax.random.key(0))
  assert sample.row_tiers(96) == (96, 32)
  out_b = params["decoder"]["out_b"].at[2].add(0.5)  # ends spread over the 24 steps
  params = dict(params, decoder=dict(params["decoder"], out_b=out_b))
  K, N = 96, 24
  rng = np.random.default_rng(2)
  key, temps, z = jax.random.key(5), rng.uniform(0.2, 1.5, K).astype(np.float32), z_rows(K, spec)
  prefix = np.zeros((K, 6, 5), np.float32)
  prefix[:, :, 0:2] = rng.normal(size=(K, 6, 2))
  prefix[:, :, 2] = 1.0
  prefix_len = rng.integers(0, 7, K).astype(np.int32)
  out = sample.sample_batch(spec, params, key, temps, z=z, prefix=prefix, prefix_len=prefix_len,
                            max_len=N)
  lengths = np.asarray(out.length)
  shrink_at = int(np.argmax([(lengths > t).sum() <= 32 for t in range(N)]))
  assert 0 < shrink_at and lengths.max() > shrink_at + 3  # rows went on after the gather
  one = jax.jit(jax.vmap(lambda k, t, z, p, n: sample.sample_one(spec, params, k, t, z, p, n,
                                                                 max_len=N)))
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(K))
  want = one(keys, temps, z, prefix, prefix_len)
  np.testing.assert_allclose(out.strokes, want.strokes, atol=1e-5)
  np.testing.assert_array_equal(out.strokes[..., 2:], want.strokes[..., 2:])
  np.testing.assert_array_equal(lengths, want.length)


PI, MU_X, MU_Y = [0.3, 2.0, -1.0], [1.0, -2.0, 3.0], [0.5, 4.0, -1.0]  # component 1 on top


@pytest.mark.parametrize("pen", [0, 1, 2])
def test_greedy_with_a_fixed_decoder_returns_the_top_components_mean(tiny, pen):
  spec, params = tiny
  pen_logits = np.full(3, -1.0)
  pen_logits[pen] = 2.0
  fake = fixed_decoder(params, head_bias(pen_logits, PI, MU_X, MU_Y, [0.5, 0.2, 0.3],
                                         [0.4, 0.6, 0.2], [0.1, -0.3, 0.2]))
  out = sample.sample_batch(spec, fake, jax.random.key(0), [1.0, 0.3, 0.1, 2.0],
                            z=z_rows(4, spec), max_len=L, greedy=True)
  top = int(np.argmax(PI))
  if pen == 2:  # the most likely pen state ends the sketch at once
    expected = np.tile(END, (L, 1))
  else:
    expected = np.tile(np.r_[MU_X[top], MU_Y[top], np.eye(3)[pen]], (L, 1))
  for i in range(4):
    np.testing.assert_allclose(out.strokes[i], expected, rtol=1e-6)
    assert int(out.length[i]) == (0 if pen == 2 else L)


def test_temperature_near_zero_samples_the_top_components_mean(tiny):
  spec, params = tiny
  sigma = 0.1
  fake = fixed_decoder(params, head_bias([3.0, 0.0, -2.0], PI, MU_X, MU_Y, [sigma] * 3,
                                         [sigma] * 3, [0.5] * 3))
  top = np.array([MU_X[1], MU_Y[1]])

  def distances(tau):
    out = sample.sample_batch(spec, fake, jax.random.key(7), [tau] * 48, z=z_rows(48, spec),
                              max_len=L)
    rows = np.asarray(out.strokes).reshape(-1, 5)
    return np.hypot(*(rows[:, 0:2] - top).T), rows

  d, rows = distances(1e-3)
  assert d.max() < 6 * sigma * np.sqrt(1e-3)  # 0.019; the other means are >= 3 away
  np.testing.assert_array_equal(rows[:, 2:], np.tile([1, 0, 0], (len(rows), 1)))
  d_warm, _ = distances(1.0)  # the same test at tau = 1 sees the other components
  assert (d_warm > 2.0).sum() > 0.1 * len(d_warm)


@pytest.mark.parametrize("convention, factor", [(mdn.SIGMA_PAPER, np.sqrt), (mdn.SIGMA_ORIGINAL,
                                                                            lambda t: t)])
def test_sigma_scaling_follows_the_convention_exactly(tiny, convention, factor):
  spec, params = tiny
  mu = np.array([0.5, -0.3])
  # Component 0 holds all the mass (exp(-1e4) underflows to 0), so both draws pick it.
  fake = fixed_decoder(params, head_bias([10.0, -10.0, -10.0], [0.0, -1e4, -1e4],
                                         [mu[0], 5.0, -5.0], [mu[1], 5.0, -5.0], [0.7, 1, 1],
                                         [1.3, 1, 1], [0.4, 0, 0]))
  one = jax.jit(lambda t: sample.sample_one(spec, fake, jax.random.key(11), t,
                                            jnp.asarray(z_rows(1, spec)[0]), max_len=L,
                                            convention=convention).strokes)
  tau = 0.25
  cold, warm = np.asarray(one(tau)), np.asarray(one(1.0))
  ratio = (cold[:, 0:2] - mu) / (warm[:, 0:2] - mu)
  np.testing.assert_allclose(ratio, factor(tau), rtol=2e-5)


def test_end_of_sketch_rows_and_length(tiny):
  spec, params = tiny
  out_b = params["decoder"]["out_b"].at[2].add(1.0)  # make p3 likely enough to end mid-way
  params = dict(params, decoder=dict(params["decoder"], out_b=out_b))
  out = sample.sample_batch(spec, params, jax.random.key(2), [1.0] * 48, z=z_rows(48, spec),
                            max_len=L)
  rows, lengths = np.asarray(out.strokes), np.asarray(out.length)
  firsts = []
  for r, n in zip(rows, lengths):
    ends = np.flatnonzero(r[:, 4] == 1)
    first = int(ends[0]) if len(ends) else L
    firsts.append(first)
    np.testing.assert_array_equal(r[first:], np.tile(END, (L - first, 1)))
    np.testing.assert_array_equal(r[:first, 4], 0)
    assert n == first
  assert len(set(firsts)) > 3 and min(firsts) < L  # varied, and some sketches end early


# ----------------------------------------------------------------------------
# Latent arithmetic.


def test_interpolation_endpoints_are_exact_and_decode_as_the_endpoints(tiny):
  spec, params = tiny
  z0, z1 = z_rows(2, spec, seed=4)
  for method in ("lerp", "slerp"):
    path = sample.interpolate(z0, z1, 4, method)
    np.testing.assert_array_equal(path[0], z0)
    np.testing.assert_array_equal(path[-1], z1)
    ends = sample.sample_batch(spec, params, jax.random.key(0), [1.0] * 4,
                               z=np.stack([z0, z1, z1, z0]), max_len=L, greedy=True)
    walk = sample.sample_batch(spec, params, jax.random.key(1), [1.0] * 4, z=path, max_len=L,
                               greedy=True)
    np.testing.assert_allclose(walk.strokes[np.array([0, -1])], ends.strokes[:2], atol=1e-5)
    assert not np.allclose(walk.strokes[1], ends.strokes[0])  # z matters to the decoder
  np.testing.assert_allclose(sample.lerp(z0, z1, 0.25), 0.75 * z0 + 0.25 * z1, rtol=1e-6)


def test_slerp_keeps_the_norm_and_moves_uniformly_in_angle(tiny):
  spec, _ = tiny
  z0, z1 = z_rows(2, spec, seed=5).astype(np.float64)
  z1 *= np.linalg.norm(z0) / np.linalg.norm(z1)
  omega = np.arccos(z0 @ z1 / (z0 @ z0))
  for t in np.linspace(0, 1, 7):
    z = sample.slerp(z0, z1, t)
    assert np.linalg.norm(z) == pytest.approx(np.linalg.norm(z0), rel=1e-12)
    assert np.arccos(np.clip(z @ z0 / (z0 @ z0), -1, 1)) == pytest.approx(t * omega, abs=1e-7)
  with pytest.raises(ValueError, match="lerp.*slerp"):
    sample.interpolate(z0, z1, 3, "cubic")


def test_slerp_from_or_to_the_zero_latent_is_lerp(tiny):
  # z = 0 (the prior mean) has no direction: the angle to it is 0 / 0.
  spec, _ = tiny
  zero, z1 = np.zeros(spec.z_size, np.float32), z_rows(1, spec, seed=7)[0]
  for z_from, z_to in ((zero, z1), (z1, zero), (zero, zero), (zero, np.full_like(z1, 1e-14))):
    path = sample.interpolate(z_from, z_to, 5, "slerp")
    assert np.all(np.isfinite(path))
    np.testing.assert_array_equal(path[0], z_from)
    np.testing.assert_array_equal(path[-1], z_to)
    np.testing.assert_array_equal(path, sample.interpolate(z_from, z_to, 5, "lerp"))


def test_analogy_is_a_minus_b_plus_c(tiny):
  spec, _ = tiny
  a, b, c = z_rows(3, spec, seed=6)
  np.testing.assert_allclose(sample.analogy(a, b, c), a - b + c, rtol=1e-6)
  np.testing.assert_allclose(sample.analogy(a, a, c), c, atol=1e-6)
  np.testing.assert_allclose(sample.analogy(a, b, b), a, atol=1e-6)


# ----------------------------------------------------------------------------
# Completion.


@pytest.fixture(scope="module")
def prefix_case(tiny):
  """A real sheep's first 10 points as a prefix, and the same z for 4 endings."""
  spec, _ = tiny
  sheep = np.load(BUNDLED / "aaron_sheep.npz", allow_pickle=True, encoding="latin1")["test"][1]
  strokes = sheep[:10].astype(np.float32)
  strokes[:, 0:2] /= 18.5
  n = len(strokes)
  prefix = strokes_lib.to_stroke5(strokes, L)[1:]  # [L, 5], no start token
  return prefix, n, np.tile(z_rows(1, spec, seed=8), (4, 1))


def test_completion_keeps_the_prefix_and_continues_from_its_state(tiny, prefix_case):
  spec, params = tiny
  prefix, n, z = prefix_case
  key = jax.random.key(9)
  kwargs = dict(z=z, prefix=np.tile(prefix, (4, 1, 1)), prefix_len=[n] * 4, max_len=L)
  out = sample.sample_batch(spec, params, key, [0.8] * 4, **kwargs)
  greedy = sample.sample_batch(spec, params, key, [0.8] * 4, greedy=True, **kwargs)
  for rows in (out.strokes, greedy.strokes):
    np.testing.assert_array_equal(np.asarray(rows)[:, :n], np.tile(prefix[:n], (4, 1, 1)))
  endings = {np.asarray(out.strokes[i, n:]).tobytes() for i in range(4)}
  assert len(endings) == 4  # different keys, different endings
  # Reference: the teacher-forced decoder over S0 and the prefix predicts row n.
  inputs = np.concatenate([strokes_lib.START_TOKEN[None], prefix[:n]])[None]
  y, _ = model.decode(spec, params, jnp.asarray(z[:1]), jnp.asarray(inputs))
  mix = mdn.split(y[0, n])
  j, pen = int(np.argmax(mix.log_pi)), int(np.argmax(mix.pen_logits))
  want = np.r_[mix.mu_x[j], mix.mu_y[j], np.eye(3)[pen]]
  for i in range(4):
    np.testing.assert_allclose(greedy.strokes[i, n], want, atol=1e-5)
    row_key = jax.random.fold_in(jax.random.fold_in(key, i), n)  # row i's key at step n
    point = np.asarray(mdn.sample_point(mix, row_key, 0.8))
    np.testing.assert_allclose(out.strokes[i, n], END if point[4] else point, atol=1e-5)


# ----------------------------------------------------------------------------
# The launchers, on a tiny model trained for 4 steps.

FLAGS = flags.FLAGS
MAX_LEN = 60


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory):
  """(VAE workdir, decoder-only workdir, the small .npz they are recorded to use)."""
  root = tmp_path_factory.mktemp("sampling")
  sheep = np.load(BUNDLED / "aaron_sheep.npz", allow_pickle=True, encoding="latin1")
  small = root / "sheep60.npz"
  arrays = {}
  for split, count in (("train", 48), ("valid", 8), ("test", 8)):
    arr = np.empty(count, dtype=object)
    for i in range(count):
      arr[i] = sheep[split][i][:MAX_LEN]
    arrays[split] = arr
  np.savez(small, **arrays)
  dataset = data.load(str(small), max_seq_len=MAX_LEN)
  dataset.splits["valid"] = []  # no validation, no eval compile; "best" falls back to "latest"
  cfg = config_lib.PRESETS["original"].replace(**TINY, batch_size=8, num_steps=4,
                                               max_seq_len=MAX_LEN, log_every=2, eval_every=4,
                                               save_every=4)
  vae = root / "vae"
  train.fit(cfg, dataset, str(vae))
  dec_only = root / "decoder_only"
  cfg_dec = cfg.replace(conditional=False)
  checkpoint.save_run_files(str(dec_only), cfg_dec, dataset.facts, sources=[str(small)])
  ckpts = checkpoint.Checkpoints(str(dec_only))
  ckpts.save_latest(0, jax.device_get(train.create_state(cfg_dec, jax.random.key(0)))._asdict())
  ckpts.close()
  return str(vae), str(dec_only), small


def run(module, *args):
  """The launcher's main through absl flag parsing, in this process; flags reset after."""
  FLAGS.unparse_flags()
  try:
    FLAGS([module.__name__, *args])
    module.main([])
  finally:
    FLAGS.unparse_flags()


def check_pictures(prefix, shape, cell=48):
  """SVG parses, PNG has the grid's size; returns the npz."""
  ET.parse(f"{prefix}.svg")
  stored = np.load(f"{prefix}.npz", allow_pickle=True)
  assert tuple(stored["grid_shape"]) == shape
  labels = [str(t) for t in stored["row_labels"]] if "row_labels" in stored.files else []
  label_width = max(render_grid.LABEL_WIDTH, 16 + 8 * max(map(len, labels))) if labels else 0
  width = shape[1] * cell + label_width
  height = shape[0] * cell + (render_grid.LABEL_HEIGHT if "col_labels" in stored.files else 0)
  with Image.open(f"{prefix}.png") as image:
    assert image.size == (width, height)
  return stored


def test_sample_launcher_as_a_subprocess(workdirs, tmp_path):
  vae, _, _ = workdirs
  proc = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={vae}",
                         f"--output_dir={tmp_path}", "--num=3", "--temperatures=0.5,1.0",
                         "--cell=48", "--sigma_convention=original"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == [str(tmp_path / f"sample.{e}") for e in ("svg", "png", "npz")]
  stored = check_pictures(tmp_path / "sample", (2, 3))
  assert stored["row_labels"].tolist() == ["τ=0.5", "τ=1"]


def test_decoder_only_model_samples_greedily_and_completes(workdirs, tmp_path):
  _, dec_only, _ = workdirs
  run(sample_launcher, f"--workdir={dec_only}", f"--output_dir={tmp_path}", "--num=2",
      "--greedy", "--cell=48", "--name=greedy", "--units=normalized", "--checkpoint=latest")
  stored = check_pictures(tmp_path / "greedy", (1, 2))
  assert stored["row_labels"].tolist() == ["greedy"]
  run(complete, f"--workdir={dec_only}", f"--output_dir={tmp_path}", "--index=4",
      "--prefix_points=5", "--num=2", "--cell=48")  # --z=prior: a decoder-only model has no z
  stored = check_pictures(tmp_path / "complete", (2, 3))
  assert stored["row_labels"].tolist() == ["test 4 τ=0.3", "test 4 τ=0.6"]


def test_reconstruct_launcher_shows_the_input_in_pixels(workdirs, tmp_path):
  vae, _, small = workdirs
  run(reconstruct, f"--workdir={vae}", f"--output_dir={tmp_path}", "--index=1,3",
      "--temperatures=0.2,0.8", "--num=2", "--cell=48")
  stored = check_pictures(tmp_path / "reconstruct", (2, 5))
  test_split = np.load(small, allow_pickle=True)["test"]
  cells = dict(zip(map(tuple, stored["grid_index"]), stored["strokes"]))
  for row, index in enumerate([1, 3]):
    np.testing.assert_allclose(cells[row, 0], test_split[index], rtol=1e-5, atol=1e-4)
  assert stored["col_labels"].tolist() == ["input", "τ=0.2", "τ=0.2", "τ=0.8", "τ=0.8"]
  # A picture's .npz is an --input too: its cells in row-major order, in pixels.
  n = next(k for k, (_, col) in enumerate(stored["grid_index"])
           if col > 0 and len(stored["strokes"][k]) > 0)
  run(reconstruct, f"--workdir={vae}", f"--output_dir={tmp_path / 'again'}", "--num=1",
      f"--input={tmp_path / 'reconstruct.npz'}:{n}", "--cell=48")
  again = np.load(tmp_path / "again" / "reconstruct.npz", allow_pickle=True)
  shown = dict(zip(map(tuple, again["grid_index"]), again["strokes"]))[0, 0]
  np.testing.assert_allclose(shown, stored["strokes"][n], rtol=1e-5, atol=1e-4)
  assert again["row_labels"].tolist()[0].startswith(f"reconstruct.npz:{n}")


def test_interpolate_launcher(workdirs, tmp_path):
  vae, _, _ = workdirs
  run(interpolate, f"--workdir={vae}", f"--output_dir={tmp_path}", "--index=0,2", "--steps=4",
      "--method=lerp,slerp", "--greedy", "--cell=48")
  stored = check_pictures(tmp_path / "interpolate", (2, 6))
  assert stored["row_labels"].tolist() == ["lerp greedy", "slerp greedy"]
  cells = dict(zip(map(tuple, stored["grid_index"]), stored["strokes"]))
  for col in (1, 4):  # both methods decode the same endpoints, greedily: the same sketch
    np.testing.assert_allclose(cells[0, col], cells[1, col], atol=1e-4)


def test_analogy_launcher_from_quick_draw_files(workdirs, tmp_path):
  vae, _, _ = workdirs
  run(analogy, f"--workdir={vae}", f"--output_dir={tmp_path}", "--num=2", "--cell=48",
      f"--input={BUNDLED / 'cat.ndjson'}:4", f"--input={BUNDLED / 'pig_raw10.ndjson'}:4",
      f"--input={BUNDLED / 'cat.ndjson'}:5", "--input_scale=0.5")
  stored = check_pictures(tmp_path / "analogy", (1, 5))
  assert stored["col_labels"].tolist()[:3] == ["a: cat.ndjson:4", "− b: pig_raw10.ndjson:4",
                                               "+ c: cat.ndjson:5"]


@pytest.mark.parametrize("how, n_rows", [("--prefix_strokes=1", 5), ("--prefix_points=7", 7)])
def test_complete_launcher_keeps_the_prefix(workdirs, tmp_path, how, n_rows):
  vae, _, small = workdirs
  run(complete, f"--workdir={vae}", f"--output_dir={tmp_path}", "--index=2", how, "--num=3",
      "--temperatures=0.5", "--z=encode", "--cell=48")
  stored = check_pictures(tmp_path / "complete", (1, 4))
  given = np.load(small, allow_pickle=True)["test"][2].astype(np.float32)
  if how.startswith("--prefix_strokes"):
    n_rows = int(np.flatnonzero(given[:, 2] == 1)[0]) + 1
  np.testing.assert_array_equal(stored["highlight_start"], [-1, n_rows, n_rows, n_rows])
  for cell in stored["strokes"]:
    np.testing.assert_allclose(cell[:n_rows], given[:n_rows], rtol=1e-5, atol=1e-4)
  assert all(len(cell) >= n_rows for cell in stored["strokes"][1:])


@pytest.mark.parametrize("module, args, message", [
    (sample_launcher, ["--workdir=/nonexistent"], "/nonexistent"),
    (reconstruct, ["--workdir={dec_only}"], "decoder-only model"),
    (interpolate, ["--workdir={dec_only}"], "decoder-only model"),
    (analogy, ["--workdir={dec_only}"], "decoder-only model"),
    (complete, ["--workdir={dec_only}", "--z=encode"], "decoder-only model"),
    (reconstruct, ["--workdir={vae}", "--index=999"], "index 999 out of range"),
    (reconstruct, ["--workdir={vae}", "--input={garbage}"], "not a readable .npz"),
    (reconstruct, ["--workdir={vae}", "--input=/no/such.ndjson"], "no such file"),
    (reconstruct, ["--workdir={vae}", f"--input={BUNDLED / 'cat.ndjson'}:1"],
     "70 points, more than the model's N_max 60"),
    (interpolate, ["--workdir={vae}", "--index=1,2,3"], "exactly 2 input sketches"),
    (complete, ["--workdir={vae}", "--prefix_points=60"], "fewer than the model's N_max"),
    (sample_launcher, ["--workdir={vae}", "--checkpoint=foo"],
     "checkpoint must be best, latest or a step number, not 'foo'"),
    (sample_launcher, ["--workdir={vae}", "--temperatures=0.5,nan"],
     "--temperatures must be a finite number > 0, not 'nan'"),
    (sample_launcher, ["--workdir={vae}", "--temperatures=inf"],
     "--temperatures must be a finite number > 0, not 'inf'"),
    (sample_launcher, ["--workdir={vae}", "--temperatures=0"],
     "--temperatures must be a finite number > 0, not '0'"),
    (sample_launcher, ["--workdir={vae}", "--temperatures=hot"],
     "--temperatures must be a number > 0, not 'hot'"),
])
def test_bad_input_is_one_clear_error(workdirs, tmp_path, module, args, message):
  vae, dec_only, _ = workdirs
  garbage = tmp_path / "garbage.npz"
  garbage.write_text("not a zip")
  args = [a.format(vae=vae, dec_only=dec_only, garbage=garbage) for a in args]
  with pytest.raises(SystemExit) as e:
    run(module, *args, f"--output_dir={tmp_path}")
  assert str(e.value.code).startswith("error: ") and message in str(e.value.code)
  assert "\n" not in str(e.value.code)


def test_bad_input_exits_1_without_traceback(workdirs, tmp_path):
  _, dec_only, _ = workdirs
  proc = subprocess.run([sys.executable, "-m", "experiments.reconstruct", f"--workdir={dec_only}",
                         f"--output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      f"error: {dec_only} holds a decoder-only model (conditional=False): it has no encoder, "
      "so it cannot reconstruct"]


def test_bundled_model_works_as_workdir(tmp_path):
  """--workdir=bundled:cat imports the bundled browser model once (into a cache) and samples."""
  cache, out = tmp_path / "cache", tmp_path / "out"
  code = ("import sys; from sketch_vae import pretrained; real = pretrained.ensure_workdir;"
          f"pretrained.ensure_workdir = lambda n: real(n, cache_dir={str(cache)!r});"
          "from absl import app; from experiments import sample;"
          f"sys.argv = ['sample', '--workdir=bundled:cat', '--output_dir={out}', '--num=2',"
          "'--temperatures=0.2', '--cell=64']; app.run(sample.main)")
  run_python(code, timeout=300)
  with Image.open(out / "sample.png") as im:
    assert im.size[1] == 64
  assert len(list(cache.iterdir())) == 1  # imported once into the cache
