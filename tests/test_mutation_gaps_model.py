"""Gaps found by mutation testing of the model, loss, cell, unroll, training and checkpoint
code: each test here failed with a small change of behaviour that the rest of the suite let
through (the mutation is named in each docstring). References are float64 NumPy
restatements of the formulas or hand-computed values."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketch_vae import cells, checkpoint, config as config_lib, data, evaluation, keys, losses
from sketch_vae import mdn, model, rnn, train
from conftest import np_ln, sig

SMALL = dict(enc_rnn_size=8, dec_rnn_size=12, z_size=6, num_mixture=3,
             hyper_num_units=6, hyper_embedding_size=4)


def tiny_config(**kw):
  base = dict(SMALL, batch_size=4, max_seq_len=7)
  return config_lib.PRESETS["original"].replace(**{**base, **kw})


def random_batch(B=4, N=7, lengths=(7, 4, 2, 5), seed=0):
  """Stroke-5 batch [B, N + 1, 5]: S0, the sketch, then end rows."""
  rng = np.random.default_rng(seed)
  x = np.zeros((B, N + 1, 5), np.float32)
  x[:, 0, 2] = 1.0
  lengths = np.asarray(lengths[:B], np.int32)
  for b, n in enumerate(lengths):
    x[b, 1:n + 1, :2] = rng.normal(size=(n, 2))
    lift = rng.random(n) < 0.3
    x[b, 1:n + 1, 2] = ~lift
    x[b, 1:n + 1, 3] = lift
    x[b, n + 1:, 4] = 1.0
  return {"strokes": x, "lengths": lengths, "rows": np.arange(B, dtype=np.int32)}


def random_params(cell, key, input_size, scale=0.4):
  params = cell.init(key, input_size)
  leaves, tree = jax.tree.flatten(params)
  ks = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, l.shape) for k, l in zip(ks, leaves)])


def np_ln_lstm(p, c, h, x):
  """rnn.py's LayerNormLSTMCell without dropout, float64."""
  g = np.concatenate([x, h], -1) @ np.concatenate([p["w_x"], p["w_h"]], 0)
  Hq = g.shape[-1] // 4
  g = np.concatenate([np_ln(g[..., k * Hq:(k + 1) * Hq], 1.0, 0.0) for k in range(4)], -1)
  g = g * p["ln_gates_gain"] + p["ln_gates_shift"]
  i, j, f, o = np.split(g, 4, -1)
  c2 = c * sig(f + 1.0) + sig(i) * np.tanh(j)
  return c2, np.tanh(np_ln(c2, p["ln_c_gain"], p["ln_c_shift"])) * sig(o)


def f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------------------
# mdn.py / losses.py


def test_sample_point_offsets_have_the_components_covariance_times_tau():
  """Mutant: dy = mu_y + s_y (rho e2 + sqrt(1 - rho^2) e1) (correlation sqrt(1 - rho^2), not rho)."""
  big = -1e4  # component 1 never drawn
  mix = mdn.Mixture(log_pi=jnp.array([0.0, big]), mu_x=jnp.array([0.5, 5.0]),
                    mu_y=jnp.array([-0.3, 5.0]), log_sigma_x=jnp.log(jnp.array([0.7, 1.0])),
                    log_sigma_y=jnp.log(jnp.array([1.3, 1.0])), rho=jnp.array([0.8, 0.0]),
                    pen_logits=jnp.zeros(3))
  tau = 0.5
  ks = jax.random.split(jax.random.key(0), 20000)
  pts = np.asarray(jax.jit(jax.vmap(lambda k: mdn.sample_point(mix, k, tau)))(ks), np.float64)
  xy = pts[:, :2]
  sx, sy, rho = 0.7, 1.3, 0.8
  expected = tau * np.array([[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]])  # paper: var * tau
  np.testing.assert_allclose(xy.mean(0), [0.5, -0.3], atol=0.03)
  np.testing.assert_allclose(np.cov(xy.T), expected, rtol=0.05)
  assert np.corrcoef(xy.T)[0, 1] == pytest.approx(rho, abs=0.02)


def test_kl_per_sketch_is_per_row_and_weights_select_rows():
  """Mutants: the mean over the latent axis taken over the batch axis instead; the weighted
  batch mean divided by B instead of by the sum of the weights."""
  rng = np.random.default_rng(3)
  mu, presig = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  per = -np.sum(1 + presig - mu ** 2 - np.exp(presig), -1) / (2 * 3)
  got = losses.kl_per_sketch(jnp.asarray(mu, jnp.float32), jnp.asarray(presig, jnp.float32))
  assert got.shape == (5,)
  np.testing.assert_allclose(got, per, rtol=1e-5)
  w = np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32)  # an evaluation batch padded with 2 rows
  weighted = losses.kl(jnp.asarray(mu, jnp.float32), jnp.asarray(presig, jnp.float32), jnp.asarray(w))
  assert float(weighted) == pytest.approx(per[[0, 2, 3]].mean(), rel=1e-5)


# ----------------------------------------------------------------------------
# model.py


def test_encode_draws_z_with_sigma_exp_of_half_sigma_hat():
  """Mutant: z = mu + exp(sigma_hat) eps (the paper: sigma = exp(sigma_hat / 2))."""
  spec = model.ModelSpec(**{**SMALL, "z_size": 64})
  params = model.init(spec, jax.random.key(0))
  enc = dict(params["encoder"])
  c = np.linspace(-1.0, 1.0, 64).astype(np.float32)
  enc.update(mu_w=jnp.zeros_like(enc["mu_w"]), mu_b=jnp.asarray(c),
             presig_w=jnp.zeros_like(enc["presig_w"]))
  batch = random_batch(B=16, lengths=(7, 4, 2, 5) * 4)
  row_keys = keys.row_keys(jax.random.key(3), batch["rows"])

  def z_minus_mu(presig_b):
    p = dict(params, encoder=dict(enc, presig_b=jnp.full((64,), presig_b, jnp.float32)))
    e = model.encode(spec, p, batch["strokes"], batch["lengths"], row_keys)
    np.testing.assert_allclose(e.mu, np.broadcast_to(c, e.mu.shape), atol=1e-6)
    return np.asarray(e.z, np.float64) - c

  eps = z_minus_mu(0.0)  # sigma = 1
  scaled = z_minus_mu(float(np.log(9.0)))  # sigma_hat = log 9: sigma = 3
  np.testing.assert_allclose(scaled, 3.0 * eps, rtol=1e-4, atol=1e-5)
  assert np.std(scaled / 3.0) == pytest.approx(1.0, abs=0.1)  # 1024 standard normals


def test_encoder_reads_rows_1_to_n_not_the_start_token():
  """Mutant: the encoder reading rows 0..n-1 (S0 in, the sketch's last point out); the
  padding-invariance and reversal tests hold for it as well."""
  spec = model.ModelSpec(**SMALL)
  params = model.init(spec, jax.random.key(0))
  params["encoder"]["mu_w"] = params["encoder"]["mu_w"] * 1000
  batch = random_batch()
  enc = lambda x: np.asarray(model.encode(spec, params, x, batch["lengths"], jax.random.key(1)).mu)
  base = enc(batch["strokes"])
  start = batch["strokes"].copy()
  start[:, 0] = [3.0, -2.0, 0.0, 1.0, 0.0]  # another start row
  np.testing.assert_array_equal(enc(start), base)
  last = batch["strokes"].copy()
  for b, n in enumerate(batch["lengths"]):
    last[b, n, :2] += 1.5  # each sketch's last point
  assert np.all(np.abs(enc(last) - base).max(-1) > 1e-4)
  # And it equals the bidirectional RNN over exactly those rows, each sketch alone.
  for b, n in enumerate(batch["lengths"]):
    h = rnn.bidirectional_final(spec.enc_cell, params["encoder"]["rnn"],
                                jnp.asarray(batch["strokes"][b:b + 1, 1:n + 1]).swapaxes(0, 1),
                                jnp.asarray([n]))
    mu = np.asarray(h, np.float64) @ np.asarray(params["encoder"]["mu_w"], np.float64)
    np.testing.assert_allclose(base[b], mu[0] + np.asarray(params["encoder"]["mu_b"]), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "hyper"])
def test_initial_carry_saturates_like_tanh(cell):
  """Mutant: the initial state W z + b without tanh. At the N(0, 0.001) init W z is ~0.003,
  where tanh(u) = u to 3e-6 (test_model's check passes the mutant), so W is scaled up here."""
  spec = model.ModelSpec(dec_model=cell, **SMALL)
  params = model.init(spec, jax.random.key(0))
  dec = dict(params["decoder"], init_w=params["decoder"]["init_w"] * 1000,
             init_b=jnp.linspace(-1.0, 1.0, params["decoder"]["init_b"].shape[0]))
  params = dict(params, decoder=dec)
  z = np.random.default_rng(0).normal(size=(3, spec.z_size)).astype(np.float32)
  carry = model.initial_carry(spec, params, jnp.asarray(z), (3,))
  flat = np.concatenate([np.asarray(leaf) for leaf in jax.tree.leaves(carry)], -1)
  u = z.astype(np.float64) @ np.asarray(dec["init_w"], np.float64) + np.asarray(dec["init_b"], np.float64)
  assert np.abs(u).max() > 1.5  # far into tanh's curve
  np.testing.assert_allclose(flat, np.tanh(u), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dropout", [True, False])
def test_no_dropout_at_evaluation_or_when_switched_off(dropout):
  """Mutants: forward(train=False) passing the dropout key to the decoder or the encoder;
  the encoder's or the decoder's recurrent dropout on although use_recurrent_dropout=False."""
  spec = model.ModelSpec(**SMALL, use_recurrent_dropout=dropout, recurrent_dropout_prob=0.5)
  plain = dataclasses.replace(spec, use_recurrent_dropout=False)
  params = model.init(spec, jax.random.key(0))
  params["encoder"]["mu_w"] = params["encoder"]["mu_w"] * 1000  # z depends visibly on h
  batch = random_batch()
  rk = keys.row_keys(jax.random.key(5), batch["rows"])
  run = lambda s, train_: model.forward(s, params, batch["strokes"], batch["lengths"], rk,
                                        train=train_)
  reference = run(plain, False)
  got = run(spec, not dropout)  # evaluation with dropout configured, or training without it
  np.testing.assert_array_equal(got.encoded.mu, reference.encoded.mu)
  for a, b in zip(got.mixture, reference.mixture):
    np.testing.assert_array_equal(a, b)
  if dropout:  # and training with it does drop units (so the comparison above means something)
    trained = run(spec, True)
    assert not np.allclose(trained.encoded.mu, reference.encoded.mu)
    assert not np.allclose(trained.mixture.mu_x, reference.mixture.mu_x)


def test_eval_step_runs_without_dropout():
  """Mutant: eval_step calling compute_losses with train=True (dropout in evaluation)."""
  cfg = tiny_config(recurrent_dropout_prob=0.5)
  plain = cfg.replace(use_recurrent_dropout=False)
  params = model.init(cfg.model, jax.random.key(0))
  params["encoder"]["mu_w"] = params["encoder"]["mu_w"] * 1000
  batch = dict(random_batch(), weights=np.array([1, 1, 1, 0], np.float32))
  got = train.eval_step(cfg, params, batch, jax.random.key(2))
  ref = train.eval_step(plain, params, batch, jax.random.key(2))
  for k in ("recon_loss", "offset_loss", "pen_loss", "kl_loss_raw"):
    assert float(got[k]) == pytest.approx(float(ref[k]), rel=1e-6), k
  assert float(got["count"]) == 3.0


def test_decoder_step_t_reads_rows_up_to_t_only():
  """Mutant: forward() decoding rows 1..N instead of 0..N-1 (the target fed as input)."""
  spec = model.ModelSpec(**SMALL, conditional=False)
  params = model.init(spec, jax.random.key(0))
  batch = random_batch()
  t = 3

  def out_at_t(x):
    mix = model.forward(spec, params, x, batch["lengths"], jax.random.key(0), train=False).mixture
    return jnp.sum(mix.mu_x[:, t] ** 2) + jnp.sum(mix.pen_logits[:, t] ** 2)

  g = np.abs(np.asarray(jax.grad(out_at_t)(jnp.asarray(batch["strokes"])))).sum(-1)
  assert np.all(g[:, t + 1:] == 0.0)  # row t + 1 is what step t predicts
  assert np.all(g[:, :t + 1] > 0.0)  # S0 included
  # Step 0 is predicted from S0 and the zero state alone: any sketch gives the same mixture.
  other = batch["strokes"].copy()
  other[:, 1:] = np.random.default_rng(1).normal(size=other[:, 1:].shape)
  run = lambda x: model.forward(spec, params, x, batch["lengths"], jax.random.key(0), train=False)
  for a, b in zip(run(batch["strokes"]).mixture, run(other).mixture):
    np.testing.assert_array_equal(a[:, 0], b[:, 0])


def test_input_dropout_keep_one_is_identity_and_dropout_is_inverted():
  """Mutants: input dropout concatenating (z, S) instead of (S, z); dropout without 1/keep."""
  spec = model.ModelSpec(**SMALL, use_input_dropout=True, input_dropout_prob=1.0,
                         use_recurrent_dropout=False)
  params = model.init(spec, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (2, spec.z_size))
  inputs = jax.random.normal(jax.random.key(2), (2, 5, 5))
  y_drop, _ = model.decode(spec, params, z, inputs, dropout_key=jax.random.key(3))
  y_plain, _ = model.decode(spec, params, z, inputs)
  np.testing.assert_allclose(y_drop, y_plain, rtol=1e-5, atol=1e-6)
  ones = jnp.ones((4, 50, 40))
  dropped = np.asarray(model._dropout(ones, jax.random.split(jax.random.key(0), 4), 0.8))
  assert set(np.unique(dropped)) <= {0.0, np.float32(1 / 0.8)}
  assert dropped.mean() == pytest.approx(1.0, abs=0.02)  # inverted dropout keeps the mean


# ----------------------------------------------------------------------------
# cells.py / rnn.py


def test_hyper_and_layer_norm_initialisations():
  """Mutants: h_alpha = 1 / E (x_alpha alone was checked), a static bias of 1, LN gain 0."""
  H, K, E = 8, 6, 4
  hyper = cells.make("hyper", H, hyper_num_units=K, hyper_embedding_size=E).init(jax.random.key(0), 5)
  np.testing.assert_allclose(hyper["x_alpha"], np.full((4, E, H), 0.1 / E), rtol=1e-7)
  np.testing.assert_allclose(hyper["h_alpha"], np.full((4, E, H), 0.1 / E), rtol=1e-7)
  np.testing.assert_array_equal(hyper["b"], np.zeros(4 * H))
  np.testing.assert_array_equal(hyper["h_zw"], np.zeros((4, K, E)))
  np.testing.assert_array_equal(hyper["x_zw_b"], np.ones((4, E)))
  ln = cells.make("layer_norm", H).init(jax.random.key(0), 5)
  for p, n in ((ln, H), (hyper, H), (hyper["hyper"], K)):
    np.testing.assert_array_equal(p["ln_gates_gain"], np.ones(4 * n))
    np.testing.assert_array_equal(p["ln_gates_shift"], np.zeros(4 * n))
    np.testing.assert_array_equal(p["ln_c_gain"], np.ones(n))
    np.testing.assert_array_equal(p["ln_c_shift"], np.zeros(n))


def test_hyper_cell_recurrent_dropout_leaves_the_hyper_network_alone():
  """Mutant: the hyper network's own LN-LSTM also gets recurrent dropout (the original's
  HyperLSTMCell has hyper_use_recurrent_dropout=False)."""
  cell = cells.make("hyper", 8, hyper_num_units=6, hyper_embedding_size=4, dropout_keep=0.5)
  params = random_params(cell, jax.random.key(0), 5)
  leaves, tree = jax.tree.flatten(cell.initial_carry((3,)))
  carry = jax.tree.unflatten(tree, [jax.random.normal(jax.random.fold_in(jax.random.key(1), i), l.shape)
                                    for i, l in enumerate(leaves)])
  x = jax.random.normal(jax.random.key(2), (3, 5))
  new, _ = cell.step(params, carry, x, jax.random.key(9))
  p, cr = f64(params), f64(carry)
  hc, hh = np_ln_lstm(p["hyper"], cr.hyper.c, cr.hyper.h, np.concatenate([np.asarray(x, np.float64), cr.h], -1))
  np.testing.assert_allclose(new.hyper.c, hc, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(new.hyper.h, hh, rtol=2e-5, atol=2e-5)
  off, _ = cell.step(params, carry, x, None)
  assert not np.allclose(new.c, off.c)  # the main cell's candidate is dropped


@pytest.mark.parametrize("name", ["lstm", "layer_norm", "hyper"])
def test_remat_unroll_equals_a_python_loop_with_holds_and_dropout(name):
  """Mutants (the remat scan body, which no other test runs): masked steps not held; every
  step's dropout key fold_in(key, 0) instead of fold_in(key, t)."""
  opts = {"hyper_num_units": 6, "hyper_embedding_size": 4} if name == "hyper" else {}
  cell = cells.make(name, 8, dropout_keep=0.7, **opts)
  params = random_params(cell, jax.random.key(0), 7)
  carry0 = cell.initial_carry((3,))
  xs = jax.random.normal(jax.random.key(2), (6, 3, 5))
  static = jax.random.normal(jax.random.key(3), (3, 2))
  mask = np.array([[1, 1, 1], [1, 0, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0], [1, 0, 1]], bool)
  key = jax.random.key(4)
  carry, ref_hs = carry0, []
  for t in range(6):
    new, _ = cell.step(params, carry, jnp.concatenate([xs[t], static], -1), jax.random.fold_in(key, t))
    carry = jax.tree.map(lambda n, o: jnp.where(mask[t][:, None], n, o), new, carry)
    ref_hs.append(carry.h)
  for remat in (True, False):
    final, hs = rnn.unroll(cell, params, carry0, xs, static_BxJ=static, dropout_key=key,
                           mask_TxB=jnp.asarray(mask), remat=remat)
    np.testing.assert_allclose(hs, np.stack(ref_hs), rtol=1e-5, atol=1e-5, err_msg=f"remat={remat}")
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bidirectional_output_is_forward_half_then_backward_half():
  """Mutant: concat(backward, forward) (the halves' order matters for imported encoders:
  the browser format stores the forward cell first and mu_w's rows follow it)."""
  cell = cells.make("lstm", 8)
  params_2 = jax.tree.map(lambda a, b: jnp.stack([a, b]),
                          random_params(cell, jax.random.key(0), 5), random_params(cell, jax.random.key(1), 5))
  xs = np.asarray(jax.random.normal(jax.random.key(2), (6, 2, 5)))
  lengths = np.array([6, 4])
  h = np.asarray(rnn.bidirectional_final(cell, params_2, jnp.asarray(xs), jnp.asarray(lengths)))
  p = f64(params_2)
  for b, n in enumerate(lengths):
    for d, rows in ((0, xs[:n, b]), (1, xs[:n, b][::-1])):
      w = {k: v[d] for k, v in p.items()}
      c = hh = np.zeros(8)
      for x in rows:  # rnn.py LSTMCell, float64
        g = np.concatenate([x, hh]) @ np.concatenate([w["w_x"], w["w_h"]], 0) + w["b"]
        i, j, f, o = np.split(g, 4)
        c = c * sig(f + 1.0) + sig(i) * np.tanh(j)
        hh = np.tanh(c) * sig(o)
      np.testing.assert_allclose(h[b, d * 8:(d + 1) * 8], hh, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------
# train.py


def test_compute_losses_scores_rows_1_to_n_max_against_numpy():
  """Mutant: the targets taken as rows 0..N-1 (the decoder's inputs) instead of 1..N."""
  cfg = tiny_config(conditional=False)
  params = model.init(cfg.model, jax.random.key(0))
  batch = random_batch()
  _, m = train.compute_losses(cfg, params, batch, jax.random.key(1), 0, train=False)
  mix = f64(model.forward(cfg.model, params, batch["strokes"], batch["lengths"], jax.random.key(1),
                          train=False).mixture)
  tgt = np.asarray(batch["strokes"][:, 1:], np.float64)
  N = tgt.shape[1]
  zx = (tgt[..., :1] - mix.mu_x) / np.exp(mix.log_sigma_x)
  zy = (tgt[..., 1:2] - mix.mu_y) / np.exp(mix.log_sigma_y)
  r = mix.rho
  dens = np.exp(-(zx ** 2 + zy ** 2 - 2 * r * zx * zy) / (2 * (1 - r ** 2))) / (
      2 * np.pi * np.exp(mix.log_sigma_x + mix.log_sigma_y) * np.sqrt(1 - r ** 2))
  ll = np.log(np.sum(np.exp(mix.log_pi) * dens, -1))
  inside = np.arange(N)[None, :] < batch["lengths"][:, None]
  q = np.exp(mix.pen_logits) / np.exp(mix.pen_logits).sum(-1, keepdims=True)
  pen = -np.sum(tgt[..., 2:] * np.log(q), -1)
  assert float(m["offset_loss"]) == pytest.approx(np.mean(-np.sum(ll * inside, 1) / N), rel=1e-5)
  assert float(m["pen_loss"]) == pytest.approx(np.mean(pen.sum(1) / N), rel=1e-5)


@pytest.fixture(scope="module")
def stepped():
  """One train step of a tiny VAE from step 20000, and what it needs to be checked."""
  cfg = tiny_config()
  state = train.create_state(cfg, jax.random.key(0))
  params = state.params
  params["encoder"]["mu_w"] = params["encoder"]["mu_w"] * 3000  # KL above the floor
  state = state._replace(params=params, step=jnp.asarray(20000, jnp.int32))
  batch = random_batch()
  key = jax.random.key(1)
  new, metrics = jax.jit(lambda s, b: train.train_step(cfg, s, b, key))(state, batch)
  return cfg, state, batch, key, new, metrics


def test_train_step_loss_uses_the_step_key_and_annealed_kl_weight(stepped):
  """Mutants: the step's key not folded with the step; the KL weight at step 0, or with
  w_KL and w_start swapped."""
  cfg, state, batch, key, _, metrics = stepped
  s = 20000
  w = 0.5 - (0.5 - 0.01) * 0.99995 ** s  # eta_step of the paper, sketch_rnn_train.py's defaults
  assert float(metrics["kl_weight"]) == pytest.approx(w, rel=1e-5)
  assert float(metrics["kl_loss_raw"]) > 0.2
  assert float(metrics["loss"]) == pytest.approx(
      float(metrics["recon_loss"]) + w * max(float(metrics["kl_loss_raw"]), 0.2), rel=1e-5)
  want, _ = train.compute_losses(cfg, state.params, batch, jax.random.fold_in(key, s), s, train=True)
  assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-6)
  other, _ = train.compute_losses(cfg, state.params, batch, key, s, train=True)
  assert float(other) != pytest.approx(float(want), rel=1e-6)  # the key matters (eps, dropout)


def test_loss_uses_the_floored_kl_below_kl_min():
  """Mutant: loss = L_R + w_KL * L_KL raw (the floor only in the reported metric). At the
  N(0, 0.001) init the KL is ~1e-6, far below KL_min = 0.2; no KL gradient reaches sigma_hat's
  weights then, only the reconstruction's (via z)."""
  cfg = tiny_config(use_recurrent_dropout=False)
  params = model.init(cfg.model, jax.random.key(0))
  batch = random_batch()
  loss, m = train.compute_losses(cfg, params, batch, jax.random.key(1), 0, train=True)
  assert float(m["kl_loss_raw"]) < 1e-3
  assert float(loss) == pytest.approx(float(m["recon_loss"]) + 0.01 * 0.2, rel=1e-6)
  kl_only = lambda p: train.compute_losses(cfg, p, batch, jax.random.key(1), 0, train=True)[0] - \
      train.compute_losses(cfg, p, batch, jax.random.key(1), 0, train=True)[1]["recon_loss"]
  g = jax.grad(kl_only)(params)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))


def test_train_step_moves_each_parameter_down_by_lr_of_the_step(stepped):
  """Mutants: ascent (+lr); lr(step + 1). Adam's first update is g / (|g| + 1e-8)."""
  cfg, state, batch, key, new, metrics = stepped
  s = 20000
  lr = (1e-3 - 1e-5) * 0.9999 ** s + 1e-5
  g = jax.grad(lambda p: train.compute_losses(cfg, p, batch, jax.random.fold_in(key, s), s,
                                              train=True)[0])(state.params)
  for gl, old, nw in zip(jax.tree.leaves(g), jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
    gl = np.clip(np.asarray(gl, np.float64), -1.0, 1.0)
    sure = np.abs(gl) > 1e-4  # the sign of smaller gradients may differ in the last bits
    moved = np.asarray(nw, np.float64) - np.asarray(old, np.float64)
    np.testing.assert_allclose(moved[sure], -lr * np.sign(gl[sure]), rtol=2e-3)


def test_nonfinite_gradient_with_a_finite_loss_is_not_applied(monkeypatch):
  """Mutant: the step's finiteness checked on the loss alone. The reconstruction loss gets
  a term whose value is exactly 0 and whose gradient is NaN (the unselected branch of a
  where), so only the gradient check can catch it."""
  real = losses.reconstruction

  def poisoned(mix, *args, **kwargs):
    out = real(mix, *args, **kwargs)
    nan_grad = jnp.where(False, jnp.sqrt(jnp.sum(mix.mu_x) - 1e9), 0.0)
    return out._replace(offset=out.offset + nan_grad)

  monkeypatch.setattr(losses, "reconstruction", poisoned)
  cfg = tiny_config()
  state = train.create_state(cfg, jax.random.key(0))
  new, metrics = jax.jit(lambda s, b: train.train_step(cfg, s, b, jax.random.key(1)))(
      state, random_batch())
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["nonfinite"]) == 1.0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("options", [{}, {"fused_lstm": False}, {"enc_model": "layer_norm"},
                                     {"dec_model": "hyper"}])
def test_nan_in_padding_reaches_neither_the_loss_nor_the_gradients(options):
  """A NaN or inf in a padded row (never a decoder input, masked in L_s and the encoder)
  leaves the loss and every gradient finite, and equal to those of the zero-padded batch,
  with the CPU sequence kernel and with XLA's scan (which still multiplies padding by 0)."""
  cfg = tiny_config(**options)
  state = train.create_state(cfg, jax.random.key(0))
  batch = random_batch()
  assert batch["lengths"][2] < batch["strokes"].shape[1] - 1  # sketch 2's last row is padding
  poisoned = dict(batch, strokes=batch["strokes"].copy())
  poisoned["strokes"][2, -1, 0] = np.nan
  poisoned["strokes"][2, -1, 1] = np.inf
  grad = jax.jit(jax.grad(lambda p, b: train.compute_losses(
      cfg, p, b, jax.random.key(1), 0, train=True)[0]))
  clean, dirty = grad(state.params, batch), grad(state.params, poisoned)
  for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(dirty)):
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["value", "global_norm"])
def test_optimizer_clips_then_adam_against_numpy(mode):
  """Mutant: clip_by_global_norm in 'value' mode (invisible in Adam's first, sign-only step)."""
  tx = train.make_optimizer(tiny_config(clip_mode=mode).train)
  params = {"w": jnp.zeros(4)}
  grads = [np.array([3.0, -0.5, -7.0, 0.2]), np.array([0.5, 4.0, -2.0, 0.1])]
  opt = tx.init(params)
  m = v = np.zeros(4)
  for t, g in enumerate(grads, start=1):
    d, opt = tx.update({"w": jnp.asarray(g, jnp.float32)}, opt, params)
    c = np.clip(g, -1, 1) if mode == "value" else g * min(1.0, 1.0 / np.linalg.norm(g))
    m, v = 0.9 * m + 0.1 * c, 0.999 * v + 0.001 * c * c
    want = (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(d["w"], want, rtol=1e-4)  # optax: float32 bias correction


def test_fit_keeps_the_checkpoint_with_the_lowest_validation_loss(tmp_path, monkeypatch):
  """Mutant: `valid["loss"] > best` (the worst checkpoint kept as best)."""
  rng = np.random.default_rng(0)
  sketches = [np.c_[rng.normal(size=(5, 2)), np.r_[0, 0, 1, 0, 1]].astype(np.float32)
              for _ in range(8)]
  ds = data.Dataset(splits={"train": sketches, "valid": sketches[:4], "test": []},
                    facts=data.DataFacts(scale_factor=1.0, max_seq_len=5), report={}, sources=[])
  scripted = iter([3.0, 1.0, 2.0])
  monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: {"recon_loss": next(scripted),
                                                               "kl_loss": 0.0})
  cfg = tiny_config(max_seq_len=5, num_steps=3, eval_every=1, save_every=1, log_every=1)
  train.fit(cfg, ds, str(tmp_path), num_devices=1)
  ck = checkpoint.Checkpoints(str(tmp_path), writer=False)
  try:
    assert ck.best_step() == 2
    assert ck.best_metric() == pytest.approx(1.0)
  finally:
    ck.close()


# ----------------------------------------------------------------------------
# checkpoint.py


def test_best_metric_reads_back_and_best_falls_back_to_latest(tmp_path):
  """Mutants: best_metric() always None (a resumed run forgets its best loss); 'best' with
  no best checkpoint yet is an error instead of the latest state; 'latest' and 'best' swapped."""
  cfg = tiny_config()
  state = jax.device_get(train.create_state(cfg, jax.random.key(0)))._asdict()
  ck = checkpoint.Checkpoints(str(tmp_path / "a"))
  ck.save_latest(1, state)
  step, restored = ck.restore(state, "best")  # a run too short to have validated
  assert step == 1
  np.testing.assert_array_equal(restored["params"]["decoder"]["out_w"], state["params"]["decoder"]["out_w"])
  assert ck.best_metric() is None
  ck.save_best(1, state, 0.75)
  ck.save_latest(2, state)
  ck.close()
  reader = checkpoint.Checkpoints(str(tmp_path / "a"), writer=False)
  try:
    assert reader.best_metric() == pytest.approx(0.75)
    assert reader.restore(state, "latest")[0] == 2 and reader.restore(state, "best")[0] == 1
  finally:
    reader.close()
