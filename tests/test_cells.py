"""Cells: golden tests against float64 NumPy restatements, and a contract over every registered cell."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketch_vae import cells, precision, rnn
from conftest import np_ln, sig

B, I, H = 3, 7, 8
K, E = 6, 4  # hyper units, hyper embedding


def make(name, **kw):
  opts = {"hyper_num_units": K, "hyper_embedding_size": E} if name == "hyper" else {}
  opts.update(kw)
  return cells.CELLS[name](H, **opts)


def random_params(cell, key, scale=0.4):
  """Random values in every leaf (init has zeros and constants that hide mistakes)."""
  params = cell.init(key, I)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def random_carry(cell, key, batch=(B,)):
  leaves, tree = jax.tree.flatten(cell.initial_carry(batch))
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


# ----------------------------------------------------------------------------
# float64 NumPy restatements of the equations (rnn.py of the original).

def np_ln_gates(g, gain, shift):
  blocks = [np_ln(g[:, k * (g.shape[1] // 4):(k + 1) * (g.shape[1] // 4)], 1.0, 0.0) for k in range(4)]
  return np.concatenate(blocks, 1) * gain + shift


def np_lstm(p, c, h, x):
  g = np.concatenate([x, h], 1) @ np.concatenate([p["w_x"], p["w_h"]], 0) + p["b"]
  i, j, f, o = np.split(g, 4, 1)
  c2 = c * sig(f + 1.0) + sig(i) * np.tanh(j)
  return c2, np.tanh(c2) * sig(o)


def np_ln_lstm(p, c, h, x):
  g = np.concatenate([x, h], 1) @ np.concatenate([p["w_x"], p["w_h"]], 0)
  g = np_ln_gates(g, p["ln_gates_gain"], p["ln_gates_shift"])
  i, j, f, o = np.split(g, 4, 1)
  c2 = c * sig(f + 1.0) + sig(i) * np.tanh(j)
  return c2, np.tanh(np_ln(c2, p["ln_c_gain"], p["ln_c_shift"])) * sig(o)


def np_hyper(p, carry, x):
  c, h, hc, hh = carry
  hc2, hh2 = np_ln_lstm(p["hyper"], hc, hh, np.concatenate([x, h], 1))
  xh = np.split(x @ p["w_x"], 4, 1)
  hh_paths = np.split(h @ p["w_h"], 4, 1)
  gates = []
  for g in range(4):  # one hyper_norm per gate and path, as the original's scopes
    ax = (hh2 @ p["x_zw"][g] + p["x_zw_b"][g]) @ p["x_alpha"][g]
    ah = (hh2 @ p["h_zw"][g] + p["h_zw_b"][g]) @ p["h_alpha"][g]
    beta = (hh2 @ p["h_zb"][g]) @ p["h_beta"][g]
    gates.append(ax * xh[g] + ah * hh_paths[g] + beta + np.split(p["b"], 4)[g])
  g = np_ln_gates(np.concatenate(gates, 1), p["ln_gates_gain"], p["ln_gates_shift"])
  i, j, f, o = np.split(g, 4, 1)
  c2 = c * sig(f + 1.0) + sig(i) * np.tanh(j)
  h2 = np.tanh(np_ln(c2, p["ln_c_gain"], p["ln_c_shift"])) * sig(o)
  return c2, h2, hc2, hh2


def f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("name", ["lstm", "layer_norm", "hyper"])
def test_step_matches_numpy_float64(name):
  cell = make(name)
  key = jax.random.key(0)
  params = random_params(cell, key)
  carry = random_carry(cell, jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (B, I))
  new_carry, h = jax.jit(cell.step)(params, carry, x)
  p, cr, xn = f64(params), f64(carry), np.asarray(x, np.float64)
  if name == "lstm":
    ref = np_lstm(p, cr.c, cr.h, xn)
    got = (new_carry.c, new_carry.h)
  elif name == "layer_norm":
    ref = np_ln_lstm(p, cr.c, cr.h, xn)
    got = (new_carry.c, new_carry.h)
  else:
    ref = np_hyper(p, (cr.c, cr.h, cr.hyper.c, cr.hyper.h), xn)
    got = (new_carry.c, new_carry.h, new_carry.hyper.c, new_carry.hyper.h)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(np.asarray(g), r, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(np.asarray(h), ref[1], rtol=2e-5, atol=2e-5)


def test_original_initialisations():
  lstm = make("lstm").init(jax.random.key(0), 133)
  for k in range(4):  # W_hh: each gate block orthogonal
    block = np.asarray(lstm["w_h"][:, k * H:(k + 1) * H], np.float64)
    np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
  limit = np.sqrt(6 / (133 + 4 * H))
  assert np.abs(lstm["w_x"]).max() <= limit and np.abs(lstm["w_x"]).max() > 0.9 * limit
  assert np.all(lstm["b"] == 0)
  hyper = make("hyper").init(jax.random.key(0), I)
  np.testing.assert_array_equal(hyper["x_zw"], 0)
  np.testing.assert_array_equal(hyper["h_zw_b"], 1)
  np.testing.assert_allclose(hyper["x_alpha"], 0.1 / E)
  np.testing.assert_array_equal(hyper["h_beta"], 0)
  assert 0.005 < float(np.std(hyper["h_zb"])) < 0.02
  assert hyper["hyper"]["w_x"].shape == (I + H, 4 * K)


# ----------------------------------------------------------------------------
# The contract, over every registered cell (a fork's new cell is picked up here).

ALL = sorted(cells.CELLS)


@pytest.mark.parametrize("name", ALL)
def test_contract_carry_structure_and_projection_split(name):
  cell = make(name)
  params = random_params(cell, jax.random.key(0))
  carry = random_carry(cell, jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (B, I))
  new, h = cell.step(params, carry, x)
  assert jax.tree.structure(new) == jax.tree.structure(carry)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(carry)))
  np.testing.assert_array_equal(h, new.h)
  w, b = cell.input_kernel(params)
  new2, h2 = cell.step_projected(params, carry, x @ w + b)
  np.testing.assert_allclose(h2, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_contract_batched_equals_vmapped_unbatched(name):
  cell = make(name)
  params = random_params(cell, jax.random.key(0))
  carry = random_carry(cell, jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (B, I))
  batched, _ = cell.step(params, carry, x)
  unbatched, _ = jax.vmap(cell.step, in_axes=(None, 0, 0))(params, carry, x)
  for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(unbatched)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # A single unbatched step works on rank-1 inputs too.
  one, _ = cell.step(params, jax.tree.map(lambda a: a[0], carry), x[0])
  np.testing.assert_allclose(one.h, batched.h[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_contract_scan_equals_python_loop(name):
  cell = make(name)
  params = random_params(cell, jax.random.key(0))
  carry0 = random_carry(cell, jax.random.key(1))
  xs = jax.random.normal(jax.random.key(2), (5, B, I))
  static = jax.random.normal(jax.random.key(3), (B, 2))
  # Input = concat(x_t, static): the cell is built for I inputs, so split I = 5 + 2.
  xs5 = xs[..., :5]
  key = jax.random.key(9)
  final, hs = rnn.unroll(cell, params, carry0, xs5, static_BxJ=static, dropout_key=key)
  carry = carry0
  for t in range(5):
    carry, h = cell.step(params, carry, jnp.concatenate([xs5[t], static], -1),
                         jax.random.fold_in(key, t))
    np.testing.assert_allclose(hs[t], h, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_contract_dropout_deterministic_per_key(name):
  cell = make(name, dropout_keep=0.5)
  params = random_params(cell, jax.random.key(0))
  carry = random_carry(cell, jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (B, I))
  k1, k2 = jax.random.key(10), jax.random.key(11)
  a, _ = cell.step(params, carry, x, k1)
  b, _ = cell.step(params, carry, x, k1)
  c, _ = cell.step(params, carry, x, k2)
  off, _ = cell.step(params, carry, x, None)
  np.testing.assert_array_equal(a.h, b.h)
  assert not np.allclose(a.c, c.c)
  assert not np.allclose(a.c, off.c)


@pytest.mark.parametrize("name", ALL)
def test_contract_gradients_finite_and_nonzero(name):
  cell = make(name)
  params = random_params(cell, jax.random.key(0))
  carry = cell.initial_carry((B,))
  xs = jax.random.normal(jax.random.key(2), (6, B, I))

  def loss(p):
    final, hs = rnn.unroll(cell, p, carry, xs, dropout_key=jax.random.key(5))
    return jnp.sum(hs ** 2) + jnp.sum(final.c)

  grads = jax.grad(loss)(params)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) >= len(leaves) - 1


@pytest.mark.parametrize("name", ALL)
def test_contract_empty_sequence_holds_the_carry(name):
  cell = make(name)
  params = random_params(cell, jax.random.key(0))
  carry = random_carry(cell, jax.random.key(1))
  weight = jax.random.normal(jax.random.key(3), carry.c.shape)

  def loss(p, c):
    final, hs = rnn.unroll(cell, p, c, jnp.zeros((0, B, I)), dropout_key=jax.random.key(5))
    assert hs.shape == (0, B, cell.hidden_size)
    return jnp.sum(final.c * weight)

  d_params, d_carry = jax.grad(loss, argnums=(0, 1))(params, carry)
  np.testing.assert_array_equal(d_carry.c, weight)  # the final carry is the initial one
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(d_params))


@pytest.mark.parametrize("name", ["lstm", "layer_norm", "hyper"])
def test_cpu_kernels_off_means_no_cpp_at_all(name):
  # The reference path users compare against: not even split_scan's packed product.
  options = {"fused": False} if name == "lstm" else {}
  cell = make(name, cpu_kernels=False, **options)
  params = cell.init(jax.random.key(0), 5)
  carry = cell.initial_carry((2,))
  loss = lambda p: jnp.sum(rnn.unroll(cell, p, carry, jnp.ones((3, 2, 5)))[1])
  hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
  assert "sketch_vae_" not in hlo


def test_unknown_cell_name_is_clear():
  with pytest.raises(ValueError, match="unknown cell 'gru'"):
    cells.make("gru", 8)


def test_bfloat16_dot_gradients_use_bfloat16_products():
  """precision.dot with bfloat16 operands: gradients close to float32, and every
  product of the backward pass takes bfloat16 operands (not promoted to float32)."""
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 7, 16))
  w = jax.random.normal(kw, (16, 5))
  g = jax.random.normal(kg, (3, 7, 5))
  f = lambda x, w, dt: jnp.sum(precision.dot(x, w, dt) * g)
  dx, dw = jax.grad(f, argnums=(0, 1))(x, w, jnp.bfloat16)
  rx, rw = jax.grad(f, argnums=(0, 1))(x, w, None)
  assert dx.dtype == jnp.float32 and dw.dtype == jnp.float32
  np.testing.assert_allclose(dx, rx, rtol=0.05, atol=0.05)
  np.testing.assert_allclose(dw, rw, rtol=0.05, atol=0.1)
  assert not np.allclose(dw, rw, rtol=1e-6, atol=1e-6)  # really low precision
  hlo = jax.jit(jax.grad(f, argnums=(0, 1)), static_argnums=2).lower(x, w, jnp.bfloat16).as_text()
  dots = [l for l in hlo.splitlines() if "dot_general" in l]
  assert len(dots) == 2  # dx and dw (the forward product is not needed for a linear loss)
  for line in dots:
    operands = line.split(":")[-1].split("->")[0]
    assert operands.count("bf16") == 2 and "f32" not in operands, line
