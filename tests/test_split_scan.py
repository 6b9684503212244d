"""split_scan (custom VJP around the recurrent matmul) equals the plain scan of the cell's step,
in values and gradients, for every registered cell that splits its step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
