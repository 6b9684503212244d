"""The benchmark's matrix-product FLOP count against counts worked out by hand."""
import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import flops


def _count(fn, *shapes):
  return flops.matmul_flops(fn, *(jnp.zeros(s, jnp.float32) for s in shapes))


def test_plain_and_batched_products():
  assert _count(jnp.dot, (3, 5), (5, 7)) == 2 * 3 * 5 * 7
  assert _count(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), (4, 3, 5), (4, 5, 7)) == 2 * 4 * 3 * 5 * 7


def test_scan_body_counts_once_per_step():
  def fn(h, w):
    return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), h, None, length=11)[0]

  assert _count(fn, (2, 6), (6, 6)) == 11 * 2 * 2 * 6 * 6


def test_gradient_counts_the_backward_products():
  # d/dA sum(A B) and d/dB: two more products of the same size.
  fn = jax.grad(lambda a, b: jnp.sum(a @ b), argnums=(0, 1))
  assert _count(fn, (3, 5), (5, 7)) == 3 * 2 * 3 * 5 * 7


def test_cond_counts_one_branch_not_both():
  # Only one branch runs: the count is the costlier branch, as for
  # platform_dependent, whose CPU branch may hide a product in a kernel call.
  def fn(p, a, b):
    return jax.lax.cond(p > 0, lambda a, b: (a @ b) @ b.T @ b, lambda a, b: a @ b, a, b)

  n = _count(fn, (), (4, 8), (8, 8))
  assert n == 3 * 2 * 4 * 8 * 8

  def per_platform(a, b):
    return jax.lax.platform_dependent(a, b, cpu=lambda a, b: a @ b, default=lambda a, b: a @ b)

  assert _count(per_platform, (4, 8), (8, 8)) == 2 * 4 * 8 * 8
  np.testing.assert_allclose(per_platform(jnp.eye(4, 8), jnp.eye(8)), jnp.eye(4, 8))
