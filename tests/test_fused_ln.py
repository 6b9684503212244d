"""The layer-norm LSTM update kernel (fused_ln) equals the jnp equations of cells.py, in
values and gradients, and the layer-norm and HyperLSTM cells unroll to the same numbers
with and without it."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_outputs_and_grads

from sketch_vae import cells, fused_ln, native, rnn

H = 24
G = 4 * H


def _inputs(rows_shape, scaled, seed=0):
  k = jax.random.split(jax.random.key(seed), 12)
  n = lambda i, shape, s=1.0: s * jax.random.normal(k[i], shape, jnp.float32)
  wide = tuple(rows_shape) + (G,)
  gates = (4,) + tuple(rows_shape) + (H,)  # the scalings are gate-major
  scaling = (1.0 + n(2, gates, 0.3), 1.0 + n(3, gates, 0.3), n(4, gates, 0.2)) if scaled else None
  return dict(xh=n(0, wide), hh=n(1, wide), scaling=scaling, bias=n(5, (G,), 0.2),
              gain=1.0 + n(6, (G,), 0.3), shift=n(7, (G,), 0.2), c_gain=1.0 + n(8, (H,), 0.3),
              c_shift=n(9, (H,), 0.2), c_prev=n(10, tuple(rows_shape) + (H,)))


def _key(kind, rows_shape):
  return {None: None, "one": jax.random.key(7),
          "per_row": jax.random.split(jax.random.key(7), int(np.prod(rows_shape))).reshape(rows_shape)}[kind]


def _run(fn, inp, key):
  return fn(inp["xh"], inp["hh"], inp["scaling"], inp["bias"], inp["gain"], inp["shift"],
            inp["c_gain"], inp["c_shift"], inp["c_prev"], key, keep=0.8, forget_bias=1.0)


def test_kernels_registered():
  assert native.cpu_kernels_available(), native.kernel_status()
  assert cells._ln_update(True) is fused_ln.update
  assert cells._ln_update(False) is cells.ln_lstm_update


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("keyed", [None, "one", "per_row"])
@pytest.mark.parametrize("rows_shape", [(5,), (2, 3)])
def test_update_values_and_gradients_equal_the_equations(scaled, keyed, rows_shape):
  inp = _inputs(rows_shape, scaled)
  key = _key(keyed, rows_shape)
  w = jax.random.normal(jax.random.key(11), (2,) + inp["c_prev"].shape)

  def loss(inp, fn):
    c, h = _run(fn, inp, key)
    return jnp.sum(w[0] * c) + jnp.sum(jnp.sin(3.0 * h) * w[1]), (c, h)

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, (ca, ha)), ga = grad(inp, fused_ln.update)
  (_, (cb, hb)), gb = grad(inp, cells.ln_lstm_update)
  np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ha, hb, rtol=1e-5, atol=1e-6)
  for path, a in jax.tree_util.tree_leaves_with_path(ga):
    b = dict(jax.tree_util.tree_leaves_with_path(gb))[path]
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
  if keyed is not None:  # the mask really dropped units: differs from the run without a key
    assert not np.allclose(_run(fused_ln.update, inp, None)[0], ca)


def test_gate_major_scaling_scales_gate_q_unit_k_of_column_q_H_plus_k():
  # The layout, pinned with NumPy: scaling (sx, sh, beta) [4, rows, H] acts on
  # the [rows, 4H] gate columns exactly as these row-major arrays would.
  inp = _inputs((3,), True)
  to_columns = lambda s: np.transpose(np.asarray(s), (1, 0, 2)).reshape(3, G)
  sx, sh, beta = (to_columns(s) for s in inp["scaling"])
  pre = sx * np.asarray(inp["xh"]) + sh * np.asarray(inp["hh"]) + beta
  unscaled = dict(inp, xh=jnp.asarray(pre), hh=jnp.zeros_like(inp["hh"]), scaling=None)
  for fn in (fused_ln.update, cells.ln_lstm_update):
    for a, b in zip(_run(fn, inp, None), _run(cells.ln_lstm_update, unscaled, None)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scaled", [False, True])
def test_update_under_vmap_with_batched_parameters(scaled):
  # The encoder's two directions: parameters stacked on a vmapped axis (and, scaled,
  # the HyperLSTM sampled one sketch per vmapped row).
  inp2 = [_inputs((4,), scaled, seed=s) for s in (0, 1)]
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), *inp2)
  keys = jax.random.split(jax.random.key(3), 2)

  def loss(inp, fn):
    c, h = jax.vmap(lambda i, k: _run(fn, i, k))(inp, keys)
    return jnp.sum(jnp.cos(c)) + jnp.sum(h * h)

  ga = jax.jit(jax.grad(loss), static_argnums=1)(stacked, fused_ln.update)
  gb = jax.jit(jax.grad(loss), static_argnums=1)(stacked, cells.ln_lstm_update)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["layer_norm", "hyper"])
def test_cells_unroll_the_same_with_and_without_the_kernel(name):
  B, T, I, Hc = 4, 6, 5, 16
  options = dict(hyper_num_units=8, hyper_embedding_size=4) if name == "hyper" else {}
  fast = cells.make(name, Hc, dropout_keep=0.8, **options)
  plain = cells.make(name, Hc, dropout_keep=0.8, cpu_kernels=False, **options)
  params = fast.init(jax.random.key(0), I + 3)
  params = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(jax.random.key(1), a.shape), params)
  xs = jax.random.normal(jax.random.key(2), (T, B, I))
  static = jax.random.normal(jax.random.key(3), (B, 3))
  mask = jnp.arange(T)[:, None] < jnp.array([6, 2, 4, 5])[None, :]
  key = jax.random.split(jax.random.key(4), B)

  def loss(p, cell):
    final, hs = rnn.unroll(cell, p, cell.initial_carry((B,)), xs, static_BxJ=static,
                           dropout_key=key, mask_TxB=mask)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(final.c ** 2), hs

  assert_same_outputs_and_grads(loss, params, fast, plain, out_tol=(1e-5, 2e-6), grad_tol=(3e-4, 3e-5))


def test_update_works_as_the_first_kernel_call_of_a_process():
  # fused_ln.update builds and registers the kernels itself (it used to rely on a
  # cell having called native.cpu_kernels_available() first).
  code = """
import jax.numpy as jnp, numpy as np
from sketch_vae import cells, fused_ln
H, R = 4, 2
rng = np.random.default_rng(0)
xh, hh = (jnp.asarray(rng.normal(size=(R, 4 * H)), jnp.float32) for _ in range(2))
c = jnp.asarray(rng.normal(size=(R, H)), jnp.float32)
args = (xh, hh, None, jnp.zeros(4 * H), jnp.ones(4 * H), jnp.zeros(4 * H), jnp.ones(H),
        jnp.zeros(H), c, None)
got = fused_ln.update(*args, keep=1.0, forget_bias=1.0)
want = cells.ln_lstm_update(*args, keep=1.0, forget_bias=1.0)
for a, b in zip(got, want):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("same")
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]
