"""Behaviours of the core modules (config, keys, split_scan, fused_ln, flops, benchmark,
reporting, heap, download, serving, the launchers' helpers) that a mutation audit showed no
test pinned. Each test names what it guards; references are hand-computed values, the
documented presets, or the jnp equations the kernels must equal."""
import io
import json
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from experiments import hugepages
from sketch_vae import (benchmark, canvas, cells, config as config_lib, data, download, flops,
                        fused_ln, heap, keys, model, reporting, rnn, serving)


# ----------------------------------------------------------------------------
# config: the checks, the defaults (the original's HParams) and the presets.


@pytest.mark.parametrize("override, words", [
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(save_every=0), "save_every must be positive"),
    (dict(output_dropout_prob=0.0), "output_dropout_prob must be in (0, 1]"),
    (dict(random_scale_factor=1.0), "random_scale_factor must be < 1"),
    (dict(grad_clip=0.0), "grad_clip must be positive"),
])
def test_config_check_refuses_settings_that_cannot_work(override, words):
  with pytest.raises(ValueError) as e:
    config_lib.check(config_lib.Config().replace(**override))
  assert words in str(e.value)
  config_lib.check(config_lib.Config())  # the defaults pass


def test_config_replace_refuses_an_unknown_name():
  # A misspelt override must not be dropped silently.
  with pytest.raises(ValueError, match="unknown hyperparameter"):
    config_lib.Config().replace(kl_tolerence=0.3)


def test_defaults_are_the_originals_and_presets_are_as_documented():
  # REFERENCE.md "original defaults in brackets"; README's preset `small`.
  m, t = config_lib.PRESETS["original"].model, config_lib.PRESETS["original"].train
  assert (m.enc_model, m.dec_model, m.enc_rnn_size, m.dec_rnn_size, m.z_size, m.num_mixture) == (
      "lstm", "lstm", 256, 512, 128, 20)
  assert (m.recurrent_dropout_prob, m.use_input_dropout, m.use_output_dropout) == (0.9, False, False)
  assert (t.batch_size, t.learning_rate, t.min_learning_rate, t.decay_rate) == (100, 1e-3, 1e-5, 0.9999)
  assert (t.kl_weight, t.kl_weight_start, t.kl_decay_rate, t.kl_tolerance) == (0.5, 0.01, 0.99995, 0.2)
  assert (t.grad_clip, t.clip_mode, t.random_scale_factor, t.augment_stroke_prob) == (1.0, "value", 0.15, 0.1)
  s = config_lib.PRESETS["small"]
  assert (s.model.enc_rnn_size, s.model.dec_rnn_size, s.model.z_size, s.model.num_mixture) == (64, 128, 32, 10)
  assert (s.train.batch_size, s.train.kl_decay_rate, s.train.kl_tolerance) == (50, 0.999, 0.2)
  p = config_lib.PRESETS["paper_large"].model
  assert (p.enc_model, p.dec_model, p.enc_rnn_size, p.dec_rnn_size) == ("layer_norm", "hyper", 512, 2048)
  assert (p.hyper_num_units, p.hyper_embedding_size) == (256, 32)


# ----------------------------------------------------------------------------
# keys: one key per sketch is fold_in(step key, global row index) (BUILD_NOTES).


def test_row_keys_are_fold_in_of_the_global_row_index():
  step_key = jax.random.key(5)
  rows = jnp.array([3, 0, 7], jnp.int32)
  got = jax.random.key_data(keys.row_keys(step_key, rows))
  for i, row in enumerate([3, 0, 7]):
    np.testing.assert_array_equal(got[i], jax.random.key_data(jax.random.fold_in(step_key, row)))


# ----------------------------------------------------------------------------
# split_scan: the weight gradient's last partial chunk of time steps.


def test_split_scan_weight_gradient_includes_the_steps_after_the_last_full_chunk():
  # T = 27 = one chunk of 25 + 2 steps, which _weight_gradient adds after its chunk loop.
  from sketch_vae import split_scan
  T, B, I, H = split_scan.CHUNK + 2, 2, 3, 4
  cell = cells.CELLS["layer_norm"](H)
  plain = cell._replace(step_split=None)
  params = cell.init(jax.random.key(0), I)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), params)
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  carry = jax.tree.map(lambda a: a + 0.1, cell.initial_carry((B,)))

  def loss(p, which):
    _, hs = rnn.unroll(which, p, carry, xs)
    # Weight the last steps so that their share of dW is far above the tolerance.
    return jnp.sum(jnp.sin(hs) * jnp.arange(1, T + 1)[:, None, None])

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  ga, gb = grad(params, cell), grad(params, plain)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


# ----------------------------------------------------------------------------
# fused_ln: the kernel for other forget biases, at the default keep 0.9, and really used.


def _ln_inputs(R=3, H=8, seed=0):
  k = jax.random.split(jax.random.key(seed), 8)
  n = lambda i, shape, s=1.0: s * jax.random.normal(k[i], shape, jnp.float32)
  return (n(0, (R, 4 * H)), n(1, (R, 4 * H)), None, n(2, (4 * H,), 0.2), 1.0 + n(3, (4 * H,), 0.3),
          n(4, (4 * H,), 0.2), 1.0 + n(5, (H,), 0.3), n(6, (H,), 0.2), n(7, (R, H)))


@pytest.mark.parametrize("forget_bias", [0.0, 2.5])
def test_fused_ln_passes_the_forget_bias_to_the_kernel(forget_bias):
  args = _ln_inputs()
  got = fused_ln.update(*args, None, keep=1.0, forget_bias=forget_bias)
  want = cells.ln_lstm_update(*args, None, keep=1.0, forget_bias=forget_bias)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_ln_drops_at_the_default_keep_of_0_9():
  # The models' keep is 0.9 (the tests elsewhere use 0.8): the kernel must drop there too.
  args = _ln_inputs(R=4, H=32)
  key = jax.random.key(9)
  got = fused_ln.update(*args, key, keep=0.9, forget_bias=1.0)
  want = cells.ln_lstm_update(*args, key, keep=0.9, forget_bias=1.0)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got[0], fused_ln.update(*args, None, keep=0.9, forget_bias=1.0)[0])


def test_fused_ln_update_runs_the_cpu_kernel():
  # Comparing against the jnp equations cannot tell a silent fallback to them apart.
  args = _ln_inputs()
  fn = jax.jit(lambda *a: fused_ln.update(*a, None, keep=1.0, forget_bias=1.0))
  assert "sketch_vae_ln_lstm_fwd" in fn.lower(*args).as_text()
  grad = jax.jit(jax.grad(lambda xh: jnp.sum(fused_ln.update(xh, *args[1:], None, keep=1.0,
                                                              forget_bias=1.0)[1])))
  assert "sketch_vae_ln_lstm_bwd" in grad.lower(args[0]).as_text()


# ----------------------------------------------------------------------------
# flops: products inside a rematerialised (jax.checkpoint) function.


def test_flops_count_products_inside_remat():
  # remat's body is a plain Jaxpr (not a ClosedJaxpr): --remat runs must be counted too.
  a, b = jnp.zeros((3, 5)), jnp.zeros((5, 7))
  one = 2 * 3 * 5 * 7
  assert flops.matmul_flops(jax.checkpoint(lambda a, b: a @ b), a, b) == one
  # Gradient: the forward, its recomputation in the backward, and the two gradient products.
  loss = lambda a, b: jnp.sum(jax.checkpoint(lambda a, b: jnp.tanh(a @ b))(a, b))
  assert flops.matmul_flops(jax.grad(loss, argnums=(0, 1)), a, b) == 4 * one


# ----------------------------------------------------------------------------
# benchmark: the synthetic batch is valid stroke-5 data; overrides win over the config.


def test_synthetic_batch_is_valid_stroke5_with_lengths_in_range():
  b = benchmark.synthetic_batch(16, 12, seed=3, min_len=4)
  x, lengths = b["strokes"], b["lengths"]
  assert x.shape == (16, 13, 5) and np.all((4 <= lengths) & (lengths <= 12))
  np.testing.assert_array_equal(b["rows"], np.arange(16))
  for row, n in zip(x, lengths):
    np.testing.assert_array_equal(row[0], [0, 0, 1, 0, 0])  # S0
    np.testing.assert_array_equal(row[1:n + 1, 2:].sum(axis=1), 1)  # one pen state per point
    assert not np.any(row[1:n + 1, 4])  # the n points are drawn, none is an end row
    np.testing.assert_array_equal(row[n + 1:], np.tile([0, 0, 0, 0, 1], (12 - n, 1)))


def test_benchmark_config_overrides_win():
  c = benchmark.make_config("B", dec_rnn_size=64, matmul_dtype="bfloat16")
  assert (c.model.enc_model, c.model.dec_model, c.model.enc_rnn_size) == ("layer_norm", "layer_norm", 256)
  assert (c.model.dec_rnn_size, c.model.matmul_dtype) == (64, "bfloat16")


# ----------------------------------------------------------------------------
# reporting: a resumed run keeps its lines up to the checkpoint, TensorBoard is purged too.


def _resumed_run(tmp_path):
  """Steps 1-4 logged, then a run resumed from the checkpoint of step 2 logs step 3 anew."""
  wd = str(tmp_path)
  r = reporting.Reporter(wd, console=None)
  for step in (1, 2, 3, 4):
    event = r.write(step, "train", {"loss": float(step)})
  assert 0 <= event["elapsed_sec"] < 60  # seconds since the reporter started, not a date
  r.close()
  # Reopened at once: within the same second, as a quick restart is (event files are named
  # by the second; the writer's suffix keeps the first run's file).
  r = reporting.Reporter(wd, resume_step=2, console=None)
  r.write(3, "train", {"loss": 30.0})
  r.close()
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
  acc.Reload()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  return [(e["step"], e["loss"]) for e in lines], [(e.step, e.value) for e in acc.Scalars("train/loss")]


def test_reporter_resume_drops_the_redone_steps_from_both_logs(tmp_path):
  jsonl, tb = _resumed_run(tmp_path)
  assert jsonl == [(1, 1.0), (2, 2.0), (3, 30.0)]  # the checkpoint's own step is kept
  assert tb[0] == (1, 1.0) and tb[-1] == (3, 30.0)
  assert (3, 3.0) not in tb and (4, 4.0) not in tb  # TensorBoard purged them too


def test_reporter_resume_keeps_the_checkpoint_step_in_tensorboard(tmp_path):
  # purge_step=resume_step dropped the checkpoint step's event, which metrics.jsonl keeps.
  jsonl, tb = _resumed_run(tmp_path)
  assert tb == jsonl


def test_progress_line_names_the_step_and_the_skipped_steps(tmp_path):
  out = io.StringIO()
  r = reporting.Reporter(str(tmp_path), console=out)
  r.progress(7, 10, {"loss": 1.23456, "lr": 1e-3, "skipped_steps": 2.0})
  assert out.getvalue() == "train step 7/10  loss 1.235  lr 0.001  skipped 2 non-finite step(s)\n"
  r.close()


# ----------------------------------------------------------------------------
# heap and hugepages.


def test_step_temp_bytes_takes_the_first_of_a_per_device_list():
  analysis = types.SimpleNamespace(temp_size_in_bytes=123)
  compiled = types.SimpleNamespace(memory_analysis=lambda: [analysis, analysis])
  assert heap.step_temp_bytes(compiled) == 123


def test_reuse_tunables_are_the_documented_ones():
  # hugepages.py: mmap_max=0, trim_threshold=64 GiB, arena_max=1; hugetlb=1.
  assert hugepages.REUSE == ("glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={64 << 30}",
                             "glibc.malloc.arena_max=1")
  assert hugepages.HUGE_PAGES == ("glibc.malloc.hugetlb=1",)
  assert heap.KEEPS_FREED in hugepages.REUSE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tunables")
def test_reexec_only_when_a_tunable_is_missing(monkeypatch):
  calls = []
  monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append(env))
  monkeypatch.delenv(hugepages._MARK, raising=False)
  wanted = ":".join(hugepages.REUSE + hugepages.HUGE_PAGES)
  monkeypatch.setenv("GLIBC_TUNABLES", wanted)  # set by hand already: no re-run
  hugepages.reexec_with_malloc_tunables(True, True)
  assert calls == []
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  hugepages.reexec_with_malloc_tunables(True, True)
  assert len(calls) == 1 and calls[0]["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1:" + ":".join(
      hugepages.REUSE) and calls[0][hugepages._MARK] == "1"


# ----------------------------------------------------------------------------
# download: a server that sends no Content-Length.


def test_download_without_content_length_is_saved(tmp_path, monkeypatch, capsys):
  import urllib.request

  class Response(io.BytesIO):
    headers = {}

  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(b"12345"))
  dest = download.sketchrnn_npz("cat", cache_dir=str(tmp_path), progress=True)
  assert open(dest, "rb").read() == b"12345"
  assert "/sketchrnn/cat.npz (size unknown)\n" in capsys.readouterr().err
  assert os.listdir(os.path.dirname(dest)) == ["cat.npz"]  # no temporary left


# ----------------------------------------------------------------------------
# The launchers' helpers.


def test_train_launcher_flags_override_the_preset_and_nothing_else():
  code = ("from absl import flags\nfrom experiments import train\n"
          "flags.FLAGS(['train', '--preset=small', '--z_size=7'])\n"
          "print(train.build_config().to_json())")
  cfg = json.loads(run_python(code))
  assert cfg["model"]["z_size"] == 7
  # The rest is the preset's, not the flags' defaults (the original's values).
  assert cfg["model"]["dec_rnn_size"] == 128 and cfg["train"]["batch_size"] == 50
  assert cfg["train"]["log_every"] == 50


def test_input_drawings_are_scaled_then_clamped_and_may_fill_n_max():
  from experiments import common
  facts = data.DataFacts(scale_factor=4.0, max_seq_len=3)
  s3 = np.array([[600.0, -10.0, 0], [1.0, 2.0, 0], [-700.0, 3.0, 1]], np.float32)
  got = common._normalise(s3, 2.0, facts, "x").strokes  # exactly N_max points: accepted
  # --input_scale first (1200, -1400 px), then the +-1000 clamp, then / scale factor.
  np.testing.assert_allclose(got, [[250.0, -5.0, 0], [0.5, 1.0, 0], [-250.0, 1.5, 1]])
  with pytest.raises(ValueError, match="4 points, more than the model's N_max 3"):
    common._normalise(np.concatenate([s3, s3[:1]]), 1.0, facts, "x")


def test_num_per_row_must_be_at_least_1():
  from experiments import common
  common.FLAGS.unparse_flags()
  try:
    common.FLAGS(["sample", "--num=0"])
    with pytest.raises(ValueError, match="--num must be at least 1, got 0"):
      common.num(4)
    common.FLAGS.unparse_flags()
    common.FLAGS(["sample"])
    assert common.num(4) == 4  # unset: the launcher's default
  finally:
    common.FLAGS.unparse_flags()


# ----------------------------------------------------------------------------
# serving: `ended` and the room a completion needs.


@pytest.fixture(scope="module")
def tiny_service():
  cfg = config_lib.PRESETS["original"].replace(conditional=False, dec_rnn_size=8, num_mixture=2)
  params = model.init(cfg.model, jax.random.key(0))
  facts = data.DataFacts(scale_factor=30.0, max_seq_len=6)

  def served(name, end_logit):
    p = jax.tree.map(lambda a: a, params)
    p["decoder"]["out_b"] = p["decoder"]["out_b"].at[2].set(end_logit)  # p3: end of sketch
    return serving.ServedModel(name, "test", cfg, facts, p, 0)

  models = {"never": served("never", -50.0), "at_once": served("at_once", 50.0)}
  return serving.Service(models, limits=canvas.Limits(max_count=2))


def test_served_sketches_say_whether_they_ended(tiny_service):
  never = tiny_service.sample({"model": "never", "count": 2, "seed": 0})["results"]
  assert [(r["points"], r["ended"]) for r in never] == [(6, False), (6, False)]
  at_once = tiny_service.sample({"model": "at_once", "count": 1, "seed": 0})["results"]
  assert (at_once[0]["points"], at_once[0]["ended"]) == (0, True)


def test_completion_needs_one_free_row_of_n_max(tiny_service):
  # A zigzag whose 6 corners all survive RDP: 6 points, N_max 6.
  zigzag = [[[40.0 * i, 80.0 * (i % 2)] for i in range(6)]]
  with pytest.raises(canvas.RequestError, match="takes at most 5"):
    tiny_service.complete({"model": "never", "strokes": zigzag, "count": 1, "seed": 0})
  ok = tiny_service.complete({"model": "never", "strokes": [zigzag[0][:5]], "count": 1, "seed": 0})
  assert ok["results"][0]["points"] == 6 and ok["results"][0]["given_strokes"] == 1
