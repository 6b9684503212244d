"""Training: pmap == single device, multi-process == single process, resume == uninterrupted,
artefacts, falling loss, non-finite handling, evaluation."""
import dataclasses
import io
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sketch_vae import checkpoint, config as config_lib, data, evaluation, keys, losses, model, parallel, reporting, train
from conftest import BUNDLED, REPO

SHEEP = str(BUNDLED / "aaron_sheep.npz")
TINY = dict(enc_rnn_size=16, dec_rnn_size=24, z_size=8, num_mixture=3, batch_size=8,
            max_seq_len=60, log_every=2, eval_every=3, save_every=2)


def tiny_config(**kw):
  return config_lib.PRESETS["original"].replace(**{**TINY, **kw})


@pytest.fixture(scope="module")
def sheep():
  """Short sheep, so the scans are short; valid/test trimmed to keep evaluation cheap."""
  ds = data.load(SHEEP, max_seq_len=60)
  ds.splits["train"] = ds.splits["train"][:400]
  ds.splits["valid"] = ds.splits["valid"][:20]
  ds.splits["test"] = ds.splits["test"][:20]
  return ds


def host_batch(ds, cfg, step=0):
  b = data.Batcher(ds.splits["train"], data.BatchSpec(cfg.train.batch_size, ds.facts.max_seq_len,
                                                      0.15, 0.1), seed=0)
  x, lengths = b.train_batch(step)
  return {"strokes": x, "lengths": lengths, "rows": np.arange(len(x), dtype=np.int32)}


def test_pmap_on_4_devices_equals_single_device_full_batch(sheep):
  assert jax.local_device_count() >= 4
  cfg = tiny_config()  # recurrent dropout on: per-row keys make it device-count invariant
  state = train.create_state(cfg, jax.random.key(0))
  batch = host_batch(sheep, cfg)
  key = jax.random.key(5)
  single_state, single_metrics = jax.jit(lambda s, b: train.train_step(cfg, s, b, key))(state, batch)
  lay = parallel.layout(cfg.train.batch_size, 4)
  p_step = parallel.pmap(lambda s, b, k: train.train_step(cfg, s, b, k, axis_name=parallel.AXIS), lay,
                         donate_state=False)
  rep_state, rep_metrics = p_step(parallel.replicate(state, lay), parallel.shard(batch, lay), key)
  for a, b in zip(jax.tree.leaves(single_state.params), jax.tree.leaves(rep_state.params)):
    np.testing.assert_allclose(np.asarray(b)[0], np.asarray(b)[3])  # replicas agree
    np.testing.assert_allclose(np.asarray(b)[0], a, rtol=2e-5, atol=2e-7)
  for k in ("loss", "recon_loss", "kl_loss_raw"):
    assert float(rep_metrics[k][0]) == pytest.approx(float(single_metrics[k]), rel=1e-5)
  assert float(single_metrics["nonfinite"]) == 0.0


def test_kl_floor_is_applied_to_the_whole_batch_on_several_devices(sheep):
  # Late in training KL hovers near KL_min: when the devices' shares fall on
  # either side of it, flooring each device's mean gives a KL gradient that one
  # device (and the original) does not.
  cfg = tiny_config(use_recurrent_dropout=False)
  state = train.create_state(cfg, jax.random.key(0))
  params = jax.tree.map(lambda a: a, state.params)
  params["encoder"]["mu_w"] = params["encoder"]["mu_w"] * 300.0  # spread the rows' KL
  state = state._replace(params=params)
  batch = host_batch(sheep, cfg)
  key = jax.random.key(5)
  step_key = jax.random.fold_in(key, 0)
  out = model.forward(cfg.model, params, batch["strokes"], batch["lengths"],
                      keys.row_keys(step_key, batch["rows"]), train=True)
  per_row = np.asarray(losses.kl_per_sketch(out.encoded.mu, out.encoded.presig), np.float64)
  halves = per_row.reshape(2, -1).mean(1)
  assert abs(halves[0] - halves[1]) > 1e-3
  kl_min = float((per_row.mean() + halves.max()) / 2)  # above the batch, below one half
  cfg = cfg.replace(kl_tolerance=kl_min, kl_weight_start=0.5)
  one_state, one = jax.jit(lambda s, b: train.train_step(cfg, s, b, key))(state, batch)
  lay = parallel.layout(cfg.train.batch_size, 2)
  p_step = parallel.pmap(lambda s, b, k: train.train_step(cfg, s, b, k, axis_name=parallel.AXIS), lay,
                         donate_state=False)
  two_state, two = p_step(parallel.replicate(state, lay), parallel.shard(batch, lay), key)
  assert float(one["kl_loss"]) == pytest.approx(kl_min)  # floored: no KL gradient
  assert float(two["kl_loss"][0]) == pytest.approx(kl_min)
  assert float(two["loss"][0]) == pytest.approx(float(one["loss"]), rel=1e-6)
  assert float(two["grad_norm"][0]) == pytest.approx(float(one["grad_norm"]), rel=1e-4)
  np.testing.assert_allclose(np.asarray(two_state.params["encoder"]["presig_w"])[0],
                             one_state.params["encoder"]["presig_w"], rtol=1e-5, atol=1e-8)


def test_batch_size_must_divide_devices():
  with pytest.raises(ValueError, match="does not divide"):
    parallel.layout(6, 4)


def test_nonfinite_step_leaves_state_unchanged(sheep):
  cfg = tiny_config()
  state = train.create_state(cfg, jax.random.key(0))
  batch = host_batch(sheep, cfg)
  batch["strokes"] = batch["strokes"].copy()
  batch["strokes"][3, 2, 0] = np.nan
  new, metrics = jax.jit(lambda s, b: train.train_step(cfg, s, b, jax.random.key(1)))(state, batch)
  assert float(metrics["nonfinite"]) == 1.0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
    np.testing.assert_array_equal(a, b)
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(new.opt_state))


@pytest.mark.parametrize("log_every", [2, 8])  # 8: saves at 4 and 6 fall before the first log
def test_fit_stops_on_nonfinite_naming_the_step(sheep, tmp_path, log_every):
  cfg = tiny_config(num_steps=8, log_every=log_every, save_every=2)
  bad = data.Dataset(splits={k: list(v) for k, v in sheep.splits.items()}, facts=sheep.facts,
                     report=sheep.report, sources=sheep.sources)
  b = data.Batcher(bad.splits["train"], data.BatchSpec(8, sheep.facts.max_seq_len), seed=0)
  victim = int(b.train_indices(3)[0])  # first sketch of step 3's batch
  poisoned = bad.splits["train"][victim].copy()
  poisoned[0, 0] = np.inf
  bad.splits["train"][victim] = poisoned
  with pytest.raises(train.NonFiniteLoss, match="at step 3"):
    train.fit(cfg, bad, str(tmp_path), num_devices=1)
  ck = checkpoint.Checkpoints(str(tmp_path), writer=False)
  assert ck.latest_step() == 2  # saved before the bad step, nothing after it
  _, restored = ck.restore(train.create_state(cfg, jax.random.key(0))._asdict(), "latest")
  assert all(bool(np.all(np.isfinite(l))) for l in jax.tree.leaves(restored))


def test_fit_skips_a_nonfinite_step_and_says_so(sheep, tmp_path):
  cfg = tiny_config(num_steps=4, log_every=4, save_every=4, eval_every=100,
                    on_nonfinite="skip")
  bad = data.Dataset(splits={k: list(v) for k, v in sheep.splits.items()}, facts=sheep.facts,
                     report=sheep.report, sources=sheep.sources)
  b = data.Batcher(bad.splits["train"], data.BatchSpec(8, sheep.facts.max_seq_len), seed=0)
  victim = int(b.train_indices(2)[0])
  poisoned = bad.splits["train"][victim].copy()
  poisoned[1, 1] = np.nan
  bad.splits["train"][victim] = poisoned
  console = io.StringIO()
  train.fit(cfg, bad, str(tmp_path), num_devices=1,
            reporter=reporting.Reporter(str(tmp_path), console=console))
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  line = [e for e in logged if e["split"] == "train"][-1]
  assert line["step"] == 4 and line["skipped_steps"] == 1.0
  assert np.isfinite(line["loss"])  # the mean of the three applied steps
  assert "skipped 1 non-finite step(s)" in console.getvalue()
  ck = checkpoint.Checkpoints(str(tmp_path), writer=False)
  _, restored = ck.restore(train.create_state(cfg, jax.random.key(0))._asdict(), "latest")
  assert int(restored["step"]) == 4
  assert int(restored["opt_state"][1].count) == 3  # three updates applied
  assert all(bool(np.all(np.isfinite(l))) for l in jax.tree.leaves(restored))


def test_learning_rate_follows_the_step_not_the_optimizer_count(sheep):
  # With --on_nonfinite=skip, a skipped update leaves Adam's count behind the
  # step; the rate applied (and logged) must still be lr(step). Adam's first
  # update is g / (|g| + eps), so each parameter moves by lr(step) (or 0).
  cfg = tiny_config(decay_rate=0.999, min_learning_rate=1e-5)
  batch = host_batch(sheep, cfg)
  fresh = train.create_state(cfg, jax.random.key(0))
  step_fn = jax.jit(lambda s, b: train.train_step(cfg, s, b, jax.random.key(1)))
  for step in (0, 3000):
    state = fresh._replace(step=jnp.asarray(step, jnp.int32))
    new, metrics = step_fn(state, batch)
    want = (1e-3 - 1e-5) * 0.999 ** step + 1e-5  # sketch_rnn_train.py's schedule
    assert float(metrics["lr"]) == pytest.approx(want, rel=1e-5)
    moved = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in
                            zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params))])
    moved = moved[moved > 0]
    assert len(moved) > 1000
    assert np.median(moved) == pytest.approx(want, rel=1e-3)
    assert moved.max() <= want * 1.001


def test_failed_start_leaves_no_run_files(sheep, tmp_path):
  # A batch larger than the training split fails before anything is written, so
  # a later run in the same workdir is not a resume of it.
  cfg = tiny_config(batch_size=1000)
  with pytest.raises(data.DataError, match="fewer than the batch size 1000"):
    train.fit(cfg, sheep, str(tmp_path), num_devices=1)
  assert not (tmp_path / "data_facts.json").exists()
  assert not (tmp_path / "config.json").exists()


def test_checkpoints_with_the_earlier_optimizer_layout_still_load(sheep, tmp_path):
  # Until 2026-11-25 the optimizer state ended with an optax schedule count.
  cfg = tiny_config(num_steps=2, eval_every=100)
  train.fit(cfg, sheep, str(tmp_path), num_devices=1)
  template = train.create_state(cfg, jax.random.key(0))._asdict()
  ck = checkpoint.Checkpoints(str(tmp_path))
  _, state = ck.restore(template, "latest")
  earlier = {**state, "opt_state": (*state["opt_state"],
                                    optax.ScaleByScheduleState(count=jnp.asarray(2, jnp.int32)))}
  ck.save_latest(3, earlier)
  _, upgraded = ck.restore(template, "3")
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(upgraded)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(upgraded) == jax.tree.structure(template)
  broken = {**state, "params": {**state["params"], "extra": np.zeros(3, np.float32)}}
  ck.save_latest(4, broken)
  with pytest.raises(ValueError, match="step 4 does not match this model"):
    ck.restore(template, "4")
  ck.close()
  _, _, params, step = checkpoint.load_model(str(tmp_path), "3")
  assert step == 3
  np.testing.assert_array_equal(params["decoder"]["out_w"], state["params"]["decoder"]["out_w"])


@pytest.mark.parametrize("flag, match", [
    ("--decay_rate=0", r"decay_rate must be in \(0, 1\], not 0.0"),
    ("--recurrent_dropout_prob=0", r"recurrent_dropout_prob must be in \(0, 1\]"),
    ("--num_mixture=0", "num_mixture must be at least 1, not 0"),
    ("--dec_rnn_size=0", "dec_rnn_size must be at least 1"),
    ("--num_devices=64", "asked for 64 devices but this host has"),
    ("--batch_size=8000", "fewer than the batch size 8000"),
])
def test_launcher_bad_settings_are_one_line_errors(tmp_path, flag, match):
  out = subprocess.run([sys.executable, "-m", "experiments.train", f"--data={SHEEP}",
                        f"--workdir={tmp_path / 'run'}", "--preset=small", "--num_steps=1", flag],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and re.search(match, last), out.stderr[-1000:]
  assert not (tmp_path / "run" / "data_facts.json").exists()


def test_resuming_on_other_data_is_refused(tmp_path):
  # The saved scale factor and N_max belong to the data the run was trained on.
  other = tmp_path / "other.npz"
  other.write_bytes(pathlib.Path(SHEEP).read_bytes())
  def train_on(path, steps):
    return subprocess.run([sys.executable, "-m", "experiments.train", f"--data={path}",
                           f"--workdir={tmp_path / 'run'}", "--preset=small",
                           f"--num_steps={steps}", "--save_every=1", "--eval_every=100",
                           "--batch_size=8", "--enc_rnn_size=8", "--dec_rnn_size=8",
                           "--z_size=4", "--num_mixture=2", "--max_seq_len=60"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert train_on(SHEEP, 1).returncode == 0
  refused = train_on(other, 2)
  assert refused.returncode == 1 and "Traceback" not in refused.stderr
  assert f"holds a run trained on {SHEEP}, not {other}" in refused.stderr
  resumed = train_on(SHEEP, 2)
  assert resumed.returncode == 0 and "resuming from step 1" in resumed.stdout


def test_launcher_writes_all_artefacts_and_loss_falls(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.train", f"--data={SHEEP}", f"--workdir={workdir}",
         "--enc_rnn_size=16", "--dec_rnn_size=32", "--z_size=8", "--num_mixture=5",
         "--batch_size=20", "--num_steps=40", "--max_seq_len=80", "--log_every=10",
         "--eval_every=20", "--save_every=20", "--num_devices=1", "--learning_rate=0.005",
         "--kl_decay_rate=0.99", "--decay_rate=0.999"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "train step 40/40" in out.stdout
  for name in ("config.json", "data_facts.json", "dataset.json", "metrics.jsonl"):
    assert (workdir / name).exists(), name
  # TensorBoard holds the same scalars as metrics.jsonl.
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(workdir / "tb"))
  acc.Reload()
  tb_recon = [(e.step, e.value) for e in acc.Scalars("train/recon_loss")]
  assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == ["20", "40"]
  assert os.listdir(workdir / "checkpoints" / "best")
  events = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  trains = [e for e in events if e["split"] == "train"]
  needed = {"step", "split", "recon_loss", "offset_loss", "pen_loss", "kl_loss", "kl_loss_raw",
            "loss", "lr", "kl_weight", "sketches_per_sec", "wall_time"}
  assert needed <= set(trains[0])
  assert {"valid"} <= {e["split"] for e in events}
  assert [e["step"] for e in trains] == [10, 20, 30, 40]
  assert [s for s, _ in tb_recon] == [10, 20, 30, 40]
  np.testing.assert_allclose([v for _, v in tb_recon], [e["recon_loss"] for e in trains], rtol=1e-6)
  assert "valid/recon_loss" in acc.Tags()["scalars"]
  assert trains[-1]["recon_loss"] < trains[0]["recon_loss"] - 0.1  # it learns
  facts = json.loads((workdir / "data_facts.json").read_text())
  assert facts["max_seq_len"] <= 80 and facts["scale_factor"] > 1
  cfg = json.loads((workdir / "config.json").read_text())
  assert cfg["model"]["dec_rnn_size"] == 32 and cfg["train"]["learning_rate"] == 0.005
  # evaluate: one JSON object over the whole split.
  ev = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
                       "--split=valid", "--batch_size=20", "--num_devices=1"],
                      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-2000:]
  result = json.loads(ev.stdout.strip().splitlines()[-1])
  assert result["count"] + result["dropped_too_long"] == 300
  assert {"recon_loss", "offset_loss", "pen_loss", "kl_loss", "kl_loss_raw"} <= set(result)
  assert result["recon_loss"] == pytest.approx(result["offset_loss"] + result["pen_loss"], rel=1e-5)


def test_evaluation_is_independent_of_batch_size_and_devices(sheep):
  cfg = tiny_config()
  params = train.create_state(cfg, jax.random.key(0)).params
  a = evaluation.evaluate_split(cfg, params, sheep, "test", batch_size=4, num_devices=1, seed=3)
  b = evaluation.evaluate_split(cfg, params, sheep, "test", batch_size=8, num_devices=4, seed=3)
  c = evaluation.evaluate_split(cfg, params, sheep, "test", batch_size=8, num_devices=4, seed=4)
  assert a["count"] == b["count"] == 20
  for k in ("recon_loss", "offset_loss", "pen_loss", "kl_loss_raw"):
    assert a[k] == pytest.approx(b[k], rel=1e-5)
  assert a["kl_loss_raw"] != c["kl_loss_raw"] or a["recon_loss"] != c["recon_loss"]


def test_per_point_losses_do_not_depend_on_n_max_or_pixel_scale(sheep):
  """Per-point NLLs: a longer N_max pads more (L_s shrinks, per point stays); drawings
  twice as large give a model with twice the scale factor the same normalised offsets,
  and the density per pixel falls by exactly 4 (2 log 2 nats per point)."""
  cfg = tiny_config()
  params = train.create_state(cfg, jax.random.key(0)).params
  def score(facts, factor=1.0):
    ds = dataclasses.replace(sheep, facts=facts)
    return evaluation.evaluate_split(cfg, params, ds, "test", batch_size=4, num_devices=1)
  base = score(sheep.facts)
  longer = score(data.DataFacts(sheep.facts.scale_factor, sheep.facts.max_seq_len + 40))
  n = sheep.facts.max_seq_len
  assert longer["offset_loss"] == pytest.approx(base["offset_loss"] * n / (n + 40), rel=1e-4)
  for k in ("offset_nll_per_point", "offset_nll_per_point_px", "pen_nll_per_point"):
    assert longer[k] == pytest.approx(base[k], rel=1e-4)
  lengths = [len(s) for s in sheep.splits["test"]]
  assert base["mean_length"] == pytest.approx(np.mean(lengths))
  assert base["offset_nll_per_point"] == pytest.approx(base["offset_loss"] * n / np.mean(lengths))
  doubled = score(data.DataFacts(2 * sheep.facts.scale_factor, n))  # same normalised offsets
  assert doubled["offset_nll_per_point_px"] - base["offset_nll_per_point_px"] == pytest.approx(
      2 * np.log(2), rel=1e-4)
  # --rescale r: the model sees pixels * r / scale, so pixel NLL = unit NLL + 2 log(scale / r).
  r = evaluation.per_point(base, sheep.facts, base["mean_length"], rescale=2.0)
  assert r["offset_nll_per_point_px"] == pytest.approx(base["offset_nll_per_point_px"] - 2 * np.log(2))


# ----------------------------------------------------------------------------
# Resume and multi-process: real subprocesses.

RUNNER = """
import os, sys, pickle
sys.path.insert(0, {repo!r})
from absl import logging
logging.set_verbosity(logging.ERROR)
import jax
from sketch_vae import config as config_lib, data, train, parallel
mode, workdir, out = sys.argv[1], sys.argv[2], sys.argv[3]
if mode.startswith("dist"):
  parallel.initialize_distributed("127.0.0.1:" + sys.argv[4], 2, int(mode[-1]))
if mode == "crash":
  # Die in the middle of the step-4 save: after Orbax wrote the temporary
  # directory, before the rename that finalises it.
  import os as _os
  real_rename = _os.rename
  def rename(src, dst, *a, **k):
    if str(src).endswith("4.orbax-checkpoint-tmp"):
      _os._exit(9)
    return real_rename(src, dst, *a, **k)
  _os.rename = rename
  import pathlib
  real_prename = pathlib.Path.rename
  def prename(self, target):
    if str(self).endswith("4.orbax-checkpoint-tmp"):
      _os._exit(9)
    return real_prename(self, target)
  pathlib.Path.rename = prename
cfg = config_lib.PRESETS["original"].replace(enc_rnn_size=16, dec_rnn_size=24, z_size=8,
    num_mixture=3, batch_size=8, max_seq_len=60, num_steps=6, log_every=2, eval_every=3, save_every=2)
ds = data.load({sheep!r}, max_seq_len=60)
ds.splits["train"] = ds.splits["train"][:400]
ds.splits["valid"] = ds.splits["valid"][:16]
train.fit(cfg, ds, workdir, num_devices=1)
if jax.process_index() == 0:
  from sketch_vae import checkpoint
  _, _, params, step = checkpoint.load_model(workdir, "latest")
  with open(out, "wb") as f:
    pickle.dump((step, jax.device_get(params)), f)
"""


def _run(tmp_path, *args, env_devices=1, timeout=600):
  script = tmp_path / "runner.py"
  script.write_text(RUNNER.format(repo=str(REPO), sheep=SHEEP))
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={env_devices}")
  return subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load(path):
  import pickle
  with open(path, "rb") as f:
    return pickle.load(f)


def _assert_same_params(a, b, exact=False):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if exact:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-7)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("plain")
  p = _run(tmp, "plain", tmp / "wd", tmp / "out.pkl")
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-2000:]
  return _load(tmp / "out.pkl")


def test_resume_after_kill_mid_save_equals_uninterrupted(tmp_path, uninterrupted):
  wd = tmp_path / "wd"
  p = _run(tmp_path, "crash", wd, tmp_path / "never.pkl")
  p.communicate(timeout=600)
  assert p.returncode == 9  # killed inside the step-4 save
  latest = wd / "checkpoints" / "latest"
  assert sorted(os.listdir(latest)) == ["2", "4.orbax-checkpoint-tmp"]
  p = _run(tmp_path, "resume", wd, tmp_path / "out.pkl")
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-2000:]
  assert "resuming from step 2" in out
  step, params = _load(tmp_path / "out.pkl")
  assert step == uninterrupted[0] == 6
  _assert_same_params(params, uninterrupted[1], exact=True)
  assert sorted(os.listdir(latest)) == ["4", "6"]  # the half-written save was cleaned up
  metrics = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  train_steps = [m["step"] for m in metrics if m["split"] == "train"]
  assert train_steps == [2, 4, 6]  # nothing logged twice


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_the_same_as_one(tmp_path, uninterrupted):
  port = _free_port()
  wd = tmp_path / "wd"
  procs = [_run(tmp_path, f"dist{i}", wd, tmp_path / f"out{i}.pkl", port) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  step, params = _load(tmp_path / "out0.pkl")
  assert step == 6
  _assert_same_params(params, uninterrupted[1])
  assert not (tmp_path / "out1.pkl").exists()  # only process 0 writes
