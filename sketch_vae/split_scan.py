"""A faster unroll for any cell that splits its step around its recurrent matmul.

For a cell with `recurrent_kernel` and `step_split` (cells.py), one step is
  hh = h_prev @ W   (the big matmul: [B, H] x [H, K])
  carry = step_split(params, carry, xp, hh, key)   (everything else)
Autodiff of a plain scan over such a step keeps every intermediate of every
step and accumulates dW (64 MB for the paper's HyperLSTM 2048) in the loop,
reading and writing it each step. This unroll's custom VJP instead:
  * stores per step only the incoming carry and hh;
  * in the reverse scan, re-runs step_split (cheap: elementwise work and the
    small hyper-network matmuls) under `jax.vjp` to get d hh, turns it into
    d h_prev with W^T (transposed once, outside the loop), and stacks
    d hh per step;
  * forms dW = sum_t h_{t-1}^T d hh_t after the loop as matmuls over chunks
    of time (big K, no per-step read-modify-write of dW).
It computes exactly what `rnn.unroll`'s plain scan computes (tests check
values and gradients for every registered cell that has the split).

Shape letters: T = time, B = rows, I = narrow input, P = projected input,
H = hidden units, K = recurrent matmul width.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sketch_vae import keys as keys_lib
from sketch_vae import packed
from sketch_vae.precision import dot as _dot

CHUNK = 25  # time steps per weight-gradient matmul after the reverse scan


def _held(live, new, old):
  keep = live[..., None]
  return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def _step_keys(dropout_key, T):
  if dropout_key is None:
    return None
  return jax.vmap(lambda t: keys_lib.fold_in(dropout_key, t))(jnp.arange(T))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(cell, matmul_dtype, params, carry0, x, xp_static, live, step_keys):
  return _forward(cell, matmul_dtype, params, carry0, x, xp_static, live, step_keys)[0]


def _product(w, matmul_dtype, use_packed):
  """h -> h @ w per step: on CPU with w packed once (packed.py), else an XLA dot."""
  if use_packed:
    w_packed, n = packed.pack(w, matmul_dtype), w.shape[-1]
    return lambda h: packed.matmul(h, w_packed, n, matmul_dtype)
  return lambda h: _dot(h, w, matmul_dtype)


def _per_platform(impl, cell, matmul_dtype, *args):
  """impl(*args, use_packed=...) with the packed product on CPU when the kernels build
  (and the cell allows them)."""
  if not packed.usable(matmul_dtype, cell.cpu_kernels):
    return impl(*args, use_packed=False)
  return jax.lax.platform_dependent(*args, cpu=functools.partial(impl, use_packed=True),
                                    default=functools.partial(impl, use_packed=False))


def _forward(cell, matmul_dtype, params, carry0, x, xp_static, live, step_keys):
  impl = functools.partial(_forward_impl, cell, matmul_dtype)
  return _per_platform(impl, cell, matmul_dtype, params, carry0, x, xp_static, live, step_keys)


def _forward_impl(cell, matmul_dtype, params, carry0, x, xp_static, live, step_keys, *, use_packed):
  I = x.shape[-1]
  w_x = cell.input_kernel(params)[0][:I]
  recurrent = _product(cell.recurrent_kernel(params), matmul_dtype, use_packed)

  def body(carry, inputs):
    x_t, live_t, key_t = inputs
    xp = _dot(x_t, w_x, matmul_dtype) + xp_static
    hh = recurrent(carry.h)
    new, _ = cell.step_split(params, carry, xp, hh, key_t)
    new = _held(live_t, new, carry)
    return new, (new.h, carry, hh)

  final, (hs, carries, hhs) = jax.lax.scan(body, carry0, (x, live, step_keys))
  return (final, hs), (carries, hhs)


def _recurrence_fwd(cell, matmul_dtype, params, carry0, x, xp_static, live, step_keys):
  out, (carries, hhs) = _forward(cell, matmul_dtype, params, carry0, x, xp_static, live, step_keys)
  return out, (params, x, xp_static, live, step_keys, carries, hhs)


def _recurrence_bwd(cell, matmul_dtype, residuals, cotangents):
  impl = functools.partial(_backward_impl, cell, matmul_dtype)
  return _per_platform(impl, cell, matmul_dtype, residuals, cotangents)


def _backward_impl(cell, matmul_dtype, residuals, cotangents, *, use_packed):
  params, x, xp_static, live, step_keys, carries, hhs = residuals
  d_final, d_hs = cotangents
  T, I = x.shape[0], x.shape[-1]
  w_x = cell.input_kernel(params)[0][:I]
  W = cell.recurrent_kernel(params)
  transposed = _product(W.T, matmul_dtype, use_packed)

  def rest(p, carry, xp, hh, key, live_t):
    new, _ = cell.step_split(p, carry, xp, hh, key)
    return _held(live_t, new, carry)

  w_x_t = w_x.T

  def body(acc, inputs):
    d_carry, d_params, d_wx, d_static = acc
    x_t, live_t, key_t, carry, hh, d_h = inputs
    d_carry = d_carry._replace(h=d_carry.h + d_h)
    xp = _dot(x_t, w_x, matmul_dtype) + xp_static
    _, vjp = jax.vjp(lambda p, c, xp, hh: rest(p, c, xp, hh, key_t, live_t), params, carry, xp, hh)
    dp, d_prev, d_xp, d_hh = vjp(d_carry)
    d_prev = d_prev._replace(h=d_prev.h + transposed(d_hh))
    d_params = jax.tree.map(jnp.add, d_params, dp)
    # The input-side gradients are summed here: stacking d xp over all steps
    # (P = 9216 wide for the paper's HyperLSTM) and reducing after the loop
    # cost seconds per step on 2 CPU cores.
    d_wx = d_wx + _dot(x_t.reshape(-1, I).T, d_xp.reshape(-1, d_xp.shape[-1]), matmul_dtype)
    return (d_prev, d_params, d_wx, d_static + d_xp), (d_hh, _dot(d_xp, w_x_t, matmul_dtype))

  zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
  acc0 = (d_final, zeros(params), jnp.zeros(w_x.shape, jnp.float32),
          jnp.zeros(x.shape[1:-1] + (w_x.shape[-1],), jnp.float32))
  (d_carry0, d_params, d_wx, d_static), (d_hhs, d_x) = jax.lax.scan(
      body, acc0, (x, live, step_keys, carries, hhs, d_hs), reverse=True)
  d_W = _weight_gradient(carries.h, d_hhs, matmul_dtype)
  # Route dW and d w_x back to the parameter leaves they were built from.
  _, kernel_vjp = jax.vjp(cell.recurrent_kernel, params)
  _, input_vjp = jax.vjp(lambda p: cell.input_kernel(p)[0][:I], params)
  d_params = jax.tree.map(lambda a, b, c: a + b + c, d_params, kernel_vjp(d_W.astype(W.dtype))[0],
                          input_vjp(d_wx)[0])
  while d_static.ndim > xp_static.ndim:
    d_static = jnp.sum(d_static, axis=0)
  return d_params, d_carry0, d_x, d_static, None, None


def _weight_gradient(h_prev_TxBxH, d_hh_TxBxK, matmul_dtype):
  """sum_t h_prev_t^T d_hh_t, as one [H, C*B] x [C*B, K] matmul per chunk of C steps."""
  T, H, K = h_prev_TxBxH.shape[0], h_prev_TxBxH.shape[-1], d_hh_TxBxK.shape[-1]
  chunk = min(CHUNK, T)
  n = T // chunk
  h = h_prev_TxBxH.reshape(T, -1, H)
  g = d_hh_TxBxK.reshape(T, -1, K)

  def one(acc, j):
    hj = jax.lax.dynamic_slice_in_dim(h, j * chunk, chunk).reshape(-1, H)
    gj = jax.lax.dynamic_slice_in_dim(g, j * chunk, chunk).reshape(-1, K)
    return acc + _dot(hj.T, gj, matmul_dtype), None

  acc, _ = jax.lax.scan(one, jnp.zeros((H, K), jnp.float32), jnp.arange(n))
  if n * chunk < T:
    acc = acc + _dot(h[n * chunk:].reshape(-1, H).T, g[n * chunk:].reshape(-1, K), matmul_dtype)
  return acc


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def scan(cell, params, carry, x_TxBxI, xp_static, live_TxB, dropout_key, *, matmul_dtype=None):
  """`rnn.unroll`'s contract for a cell with `step_split` -> (final carry, outputs h [T, B, H])."""
  keys_T = _step_keys(dropout_key, x_TxBxI.shape[0])
  final, hs = _recurrence(cell, matmul_dtype, params, carry, x_TxBxI, xp_static, live_TxB, keys_T)
  return final, hs
