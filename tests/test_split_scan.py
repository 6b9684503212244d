"""split_scan (custom VJP around the recurrent matmul) equals the plain scan of the cell's step,
in values and gradients, for every registered cell that splits its step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_outputs_and_grads

from sketch_vae import cells, rnn

B, T, I, H = 5, 9, 6, 8
SPLIT = [name for name in sorted(cells.CELLS) if cells.CELLS[name](H).step_split is not None]


def test_every_paper_cell_has_the_split():
  assert {"lstm", "layer_norm", "hyper"} <= set(SPLIT)


@pytest.mark.parametrize("name", SPLIT)
@pytest.mark.parametrize("keyed", [None, "one", "per_row"])
def test_split_scan_equals_plain_scan(name, keyed):
  opts = {"hyper_num_units": 6, "hyper_embedding_size": 4} if name == "hyper" else {}
  if name == "lstm":
    opts["fused"] = False  # the LSTM's own fused scan is tested in test_fused_lstm.py
  cell = cells.CELLS[name](H, dropout_keep=0.7, **opts)
  plain = cell._replace(step_split=None)
  params = cell.init(jax.random.key(0), I)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), params)
  xs = jax.random.normal(jax.random.key(1), (T, B, 4))
  static = jax.random.normal(jax.random.key(5), (B, 2))
  mask = jnp.arange(T)[:, None] < jnp.array([9, 3, 5, 1, 6])[None, :]
  carry = jax.tree.map(lambda a: a + 0.1, cell.initial_carry((B,)))
  key = {None: None, "one": jax.random.key(4), "per_row": jax.random.split(jax.random.key(4), B)}[keyed]

  def loss(p, xs, st, which):
    final, hs = rnn.unroll(which, p, carry, xs, static_BxJ=st, dropout_key=key, mask_TxB=mask)
    return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(l ** 2) for l in jax.tree.leaves(final))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  va, ga = grad(params, xs, static, cell)
  vb, gb = grad(params, xs, static, plain)
  assert float(va) == pytest.approx(float(vb), rel=1e-5)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
# K = 300 runs as one K slice, K = 517 as two; the last two take the float32 engine's
# panel-outer order (a C slice over 512 KB; K >= 4096).
@pytest.mark.parametrize("shape", [(5, 8, 40), (100, 70, 300), (3, 33, 17), (20, 300, 50),
                                   (12, 517, 40), (100, 40, 6000), (3, 4100, 17)])
def test_packed_product_equals_dot(dtype, shape):
  from sketch_vae import packed
  assert packed.usable(dtype)
  R, K, N = shape
  a = jax.random.normal(jax.random.key(0), (R, K))
  w = jax.random.normal(jax.random.key(1), (K, N))
  got = jax.jit(lambda a, w: packed.matmul(a, packed.pack(w, dtype), N, dtype))(a, w)
  if dtype is None:
    want = np.asarray(a, np.float64) @ np.asarray(w, np.float64)
  else:  # operands rounded to bfloat16, products summed in (at least) float32
    rounded = lambda x: np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    want = rounded(a) @ rounded(w)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(K))


def test_packed_product_under_vmap():
  # The encoder's two directions: one weight per direction.
  from sketch_vae import packed
  a = jax.random.normal(jax.random.key(0), (2, 6, 24))
  w = jax.random.normal(jax.random.key(1), (2, 24, 64))
  got = jax.jit(jax.vmap(lambda a, w: packed.matmul(a, packed.pack(w), 64)))(a, w)
  np.testing.assert_allclose(got, np.einsum("brk,bkn->brn", a, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["layer_norm", "hyper"])
def test_split_scan_bfloat16_matches_the_plain_bfloat16_scan(name):
  opts = {"hyper_num_units": 6, "hyper_embedding_size": 4} if name == "hyper" else {}
  cell = cells.CELLS[name](H, matmul_dtype=jnp.bfloat16, **opts)
  plain = cell._replace(step_split=None)
  params = cell.init(jax.random.key(0), I)
  xs = jax.random.normal(jax.random.key(1), (T, B, 4))
  static = jax.random.normal(jax.random.key(5), (B, 2))
  carry = cell.initial_carry((B,))

  def loss(p, which):
    _, hs = rnn.unroll(which, p, carry, xs, static_BxJ=static, matmul_dtype=jnp.bfloat16)
    return jnp.sum(jnp.sin(hs)), hs

  assert_same_outputs_and_grads(loss, params, cell, plain, out_tol=(1e-3, 1e-3), grad_tol=(2e-2, 2e-3))


def test_packed_product_under_vmap_with_one_side_shared():
  from sketch_vae import packed
  a2 = jax.random.normal(jax.random.key(0), (3, 6, 24))
  w2 = jax.random.normal(jax.random.key(1), (3, 24, 40))
  a, w = a2[0], w2[0]
  one_weight = jax.jit(jax.vmap(lambda a: packed.matmul(a, packed.pack(w), 40)))(a2)
  np.testing.assert_allclose(one_weight, np.einsum("brk,kn->brn", a2, w), rtol=1e-5, atol=1e-4)
  one_input = jax.jit(jax.vmap(lambda w: packed.matmul(a, packed.pack(w), 40)))(w2)
  np.testing.assert_allclose(one_input, np.einsum("rk,bkn->brn", a, w2), rtol=1e-5, atol=1e-4)
