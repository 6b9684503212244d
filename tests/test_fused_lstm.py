"""The fused LSTM recurrence equals the plain cell step, in values and gradients, with and
without the C++ CPU kernels."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketch_vae import cells, fused_lstm, native, rnn

B, T, I, H = 5, 7, 6, 8


def test_cpu_kernels_build_here():
  # The CI machine and this one have g++: the fast path must really be in use.
  assert native.cpu_kernels_available(), native.kernel_status()


def test_every_kernel_source_is_packaged(repo_root):
  # A wheel or a non-editable install holds only the package-data globs; a header left out
  # would make g++ fail there and every run fall back to XLA.
  import tomllib
  globs = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"][
      "package-data"]["sketch_vae"]
  package = repo_root / "sketch_vae"
  packaged = {f for g in globs for f in package.glob(g)}
  needed = set(native._SOURCES) | set(native._HEADERS)
  assert needed <= packaged, sorted(str(f) for f in needed - packaged)


def test_kernel_cache_key_follows_flags_and_sources(monkeypatch, tmp_path):
  # A library built with other flags or from other sources is not picked up again.
  key = native._cache_key()
  assert native._cache_key() == key
  monkeypatch.setattr(native, "_FLAGS", native._FLAGS + ("-g",))
  assert native._cache_key() != key
  monkeypatch.undo()
  header = tmp_path / "extra.h"
  header.write_text("// another source\n")
  monkeypatch.setattr(native, "_HEADERS", native._HEADERS + (header,))
  assert native._cache_key() != key


def _setup():
  params = cells.lstm(H).init(jax.random.key(0), I)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), params)
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  mask = jnp.arange(T)[:, None] < jnp.array([7, 3, 5, 1, 6])[None, :]
  carry = cells.LSTMCarry(c=jnp.full((B, H), 0.1), h=jnp.full((B, H), -0.2))
  return params, xs, mask, carry


@pytest.mark.parametrize("kernels", [False, True])
@pytest.mark.parametrize("keyed", [None, "one", "per_row"])
def test_fused_equals_plain_step_values_and_gradients(kernels, keyed):
  params, xs, mask, carry = _setup()
  key = {None: None, "one": jax.random.key(4), "per_row": jax.random.split(jax.random.key(4), B)}[keyed]
  static = jax.random.normal(jax.random.key(5), (B, 2))
  fast = cells.lstm(H, dropout_keep=0.7, fused=True, cpu_kernels=kernels)
  plain = cells.lstm(H, dropout_keep=0.7, fused=False)

  def loss(p, xs, static, cell):
    final, hs = rnn.unroll(cell, p, carry, xs[..., :4], static_BxJ=static, dropout_key=key, mask_TxB=mask)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(final.c ** 2) + jnp.sum(final.h), (final, hs)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
  (va, (fa, ha)), ga = grad(params, xs, static, fast)
  (vb, (fb, hb)), gb = grad(params, xs, static, plain)
  np.testing.assert_allclose(ha, hb, rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(fa.c, fb.c, rtol=1e-5, atol=2e-6)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  if keyed is not None:  # dropout really happened (differs from no-key run)
    nokey = rnn.unroll(fast, params, carry, xs[..., :4], static_BxJ=static, mask_TxB=mask)[1]
    assert not np.allclose(nokey, ha)


def test_held_rows_keep_their_carry_and_pass_gradients_through():
  params, xs, mask, carry = _setup()
  fast = cells.lstm(H, fused=True)
  final, hs = rnn.unroll(fast, params, carry, xs, mask_TxB=mask)
  # Row 3 is live for one step only: its final state is its state after step 0.
  np.testing.assert_allclose(final.h[3], hs[0, 3], rtol=1e-6)
  np.testing.assert_allclose(hs[5, 3], hs[0, 3], rtol=1e-6)
  g = jax.grad(lambda x: jnp.sum(rnn.unroll(fast, params, carry, x, mask_TxB=mask)[0].h))(xs)
  assert np.all(np.asarray(g)[1:, 3] == 0.0) and np.any(np.asarray(g)[0, 3] != 0.0)


@pytest.mark.parametrize("dropout", [(0.8, False, False), (0.6, True, False), (0.6, True, True)])
def test_ffi_kernels_equal_jnp_equations(dropout):
  """Elementwise kernels alone, on wide-ranging inputs (gates up to +-40, and rows of +-120:
  past every clamp of the kernels' exp, sigmoid and tanh)."""
  assert native.cpu_kernels_available()
  k = jax.random.split(jax.random.key(0), 8)
  R, Hk = 12, 40
  gates = 8.0 * jax.random.normal(k[0], (R, 4 * Hk))
  gates = gates.at[0].set(40.0).at[1].set(-40.0).at[2].set(120.0).at[3].set(-120.0)
  c_prev = 2.0 * jax.random.normal(k[1], (R, Hk))
  h_prev = jax.random.normal(k[2], (R, Hk))
  live = jax.random.bernoulli(k[3], 0.8, (R,))
  keybits = jax.random.bits(k[4], (R, 2), jnp.uint32)
  a = jax.jit(lambda *x: fused_lstm._fwd_ffi(*x, dropout=dropout, forget_bias=1.0))(
      gates, c_prev, h_prev, live, keybits)
  b = fused_lstm._fwd_jnp(gates, c_prev, h_prev, live, keybits, dropout=dropout, forget_bias=1.0)
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=2e-6, atol=2e-6)
  dh, dc = jax.random.normal(k[5], (R, Hk)), jax.random.normal(k[6], (R, Hk))
  c_new, _, acts = b
  a = jax.jit(lambda *x: fused_lstm._bwd_ffi(*x, dropout=dropout))(dh, dc, acts, c_prev, c_new, live, keybits)
  b = fused_lstm._bwd_jnp(dh, dc, acts, c_prev, c_new, live, keybits, dropout=dropout)
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def test_vmapped_over_directions_like_the_encoder():
  params, xs, mask, carry = _setup()
  stacked = jax.tree.map(lambda a: jnp.stack([a, a * 0.5]), params)
  lengths = jnp.array([7, 3, 5, 1, 6])
  fast = cells.lstm(H, fused=True)
  plain = cells.lstm(H, fused=False)
  keys = jax.random.split(jax.random.key(2), B)

  def enc(p, cell):
    return jnp.sum(rnn.bidirectional_final(cell, p, xs, lengths, dropout_key=keys) ** 2)

  va, ga = jax.value_and_grad(enc)(stacked, fast)
  vb, gb = jax.value_and_grad(enc)(stacked, plain)
  assert float(va) == pytest.approx(float(vb), rel=1e-5)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_matmuls_stay_close_to_float32():
  params, xs, mask, carry = _setup()
  f32 = rnn.unroll(cells.lstm(H), params, carry, xs, mask_TxB=mask)[1]
  bf16 = rnn.unroll(cells.lstm(H, matmul_dtype=jnp.bfloat16), params, carry, xs, mask_TxB=mask,
                    matmul_dtype=jnp.bfloat16)[1]
  err = float(jnp.abs(f32 - bf16).max())
  assert 0 < err < 0.05


# ----------------------------------------------------------------------------
# Whole-sequence kernels (kernels/lstm_seq_cpu.cc): matmuls in C++, work split
# over threads by hidden units. Compared against the scan path (XLA dots).


def _sequence_case(R=23, T=9, I=5, Hs=40, S=3, random_mask=False):
  params = cells.lstm(Hs).init(jax.random.key(0), I + S)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), params)
  xs = jax.random.normal(jax.random.key(1), (T, R, I)).at[:, :, 3].set(0.0)  # a pen-state-like zero
  lengths = jax.random.randint(jax.random.key(7), (R,), 1, T + 1)
  mask = jnp.arange(T)[:, None] < lengths[None, :]
  if random_mask:  # rows that pause and resume: ended rows are not always last
    mask = jax.random.bernoulli(jax.random.key(8), 0.6, (T, R))
  carry = cells.LSTMCarry(c=jnp.full((R, Hs), 0.1), h=jnp.full((R, Hs), -0.2))
  static = jax.random.normal(jax.random.key(5), (R, S))
  return params, xs, mask, carry, static


def _sequence_grads(kernels, dtype, threads, per_row_static, monkeypatch, random_mask=False,
                    Hs=40):
  monkeypatch.setattr(fused_lstm, "SEQ_THREADS", threads)
  params, xs, mask, carry, static = _sequence_case(random_mask=random_mask, Hs=Hs)
  cell = cells.lstm(Hs, dropout_keep=0.7, fused=True, cpu_kernels=kernels, matmul_dtype=dtype)
  key = jax.random.key(4)

  def loss(p, xs, static):
    final, hs = rnn.unroll(cell, p, carry, xs, static_BxJ=static if per_row_static else None,
                           dropout_key=key, mask_TxB=mask, matmul_dtype=dtype)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(final.c ** 2) + jnp.sum(final.h), hs

  if not per_row_static:
    params = dict(params, w_x=params["w_x"][:5])
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  hlo = fn.lower(params, xs, static).as_text()
  return fn(params, xs, static), hlo


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("per_row_static,random_mask,Hs", [(True, False, 40), (False, False, 40),
                                                           (True, True, 40), (True, False, 64)])
def test_sequence_kernel_equals_scan_path(dtype, threads, per_row_static, random_mask, Hs,
                                          monkeypatch):
  # Hs 64: each worker's units are whole 16-float vectors at 64-byte offsets, so held
  # (ended) rows take the streaming-store path; Hs 40 mixes it with the scalar one.
  args = (dtype, threads, per_row_static, monkeypatch, random_mask, Hs)
  ((va, ha), ga), hlo_a = _sequence_grads(True, *args)
  ((vb, hb), gb), hlo_b = _sequence_grads(False, *args)
  assert "sketch_vae_lstm_seq_fwd" in hlo_a and "sketch_vae_lstm_seq_bwd" in hlo_a
  assert "sketch_vae_lstm_seq" not in hlo_b
  # bfloat16: both round the same operands; only the float32 summation order differs.
  tol = dict(rtol=1e-4, atol=1e-5) if dtype is None else dict(rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(ha, hb, **tol)
  names = ["params", "xs", "static"]
  for name, a, b in zip(names, ga, gb):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      scale = float(jnp.max(jnp.abs(y))) + 1e-6
      assert float(jnp.max(jnp.abs(x - y))) / scale < (1e-5 if dtype is None else 2e-3), name


def test_sequence_kernel_skips_the_input_gradient_for_data(monkeypatch):
  """With the strokes as data (no gradient asked), the kernel is told not to form dx."""
  params, xs, mask, carry, _ = _sequence_case()
  cell = cells.lstm(40, fused=True)
  loss = lambda p, x: jnp.sum(rnn.unroll(cell, p, carry, x, mask_TxB=mask)[1])
  p5 = dict(params, w_x=params["w_x"][:5])
  data_only = jax.jit(jax.grad(loss)).lower(p5, xs).as_text()
  with_dx = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(p5, xs).as_text()
  assert "need_dx = false" in data_only and "need_dx = true" in with_dx


def test_bfloat16_products_use_amx_where_the_cpu_has_it():
  # On CPUs with AMX-BF16 (this project's machine kind) the bfloat16 sequence
  # kernel runs on tiles, so the bfloat16 cases above test that path.
  assert native.cpu_kernels_available()
  with open("/proc/cpuinfo") as f:
    has_amx = " amx_bf16 " in f.read().replace("\n", " ")
  assert native.kernel_status()["amx_bf16"] == has_amx


def test_sequence_kernel_workers_flush_denormals_as_xla_does():
  """Denormal arithmetic is several times slower on x86 (numpy's x * 0.5 + x: 5.8x on this
  machine, BUILD_NOTES). XLA:CPU runs with flush-to-zero / denormals-are-zero; the sequence
  kernel's worker threads must run in the same mode, not in the default one of a fresh
  process. A cell state of 3e-39 (denormal) carried by a closed input gate and an open forget
  gate stays 3e-39 in IEEE arithmetic (NumPy here) and becomes 0 when flushed."""
  assert native.cpu_kernels_available()
  tiny = np.float32(3e-39)
  assert tiny * np.float32(1.0) + np.float32(0.0) == tiny  # NumPy: IEEE, no flush
  xla_flushes = float(jax.jit(lambda a: a * 0.5)(jnp.float32(2e-38))) == 0.0
  T, R, I, H = 2, 100, 5, 512  # R x 4H products large enough to split over two workers
  G = 4 * H
  static = np.zeros((G,), np.float32)
  static[:H], static[2 * H:] = -100.0, 100.0  # i closed; f and o open
  z = lambda *s: jnp.zeros(s, jnp.float32)
  for dtype in (None, jnp.bfloat16):
    fwd = jax.jit(lambda *a: fused_lstm._seq_fwd_ffi(
        *a, dropout=(1.0, False, False), forget_bias=0.0, matmul_dtype=dtype))
    _, cs, _, _, _ = fwd(z(T, R, I), z(I, G), jnp.asarray(static), z(H, G),
                         jnp.full((R, H), tiny), z(R, H), jnp.ones((T, R), bool),
                         jnp.zeros((T, R, 2), jnp.uint32))
    expected = 0.0 if xla_flushes else tiny
    assert np.all(np.asarray(cs) == expected), (dtype, np.unique(np.asarray(cs)))
