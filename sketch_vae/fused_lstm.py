"""A fast LSTM recurrence: hand-written backward pass and whole-sequence CPU kernels.

`scan` computes exactly what `rnn.unroll` computes with the `lstm` cell's
step (tests/test_fused_lstm.py checks values and gradients), but:
  * its custom VJP stores only (h, c, activations) per step (autodiff of a
    scan keeps several arrays per step);
  * the narrow input (5 stroke values) is projected inside each step rather
    than into a [T, R, 4H] array before the scan;
  * on CPU, when the C++ kernels build, the whole sequence runs in one FFI call
    each way (kernels/lstm_seq_cpu.cc): the recurrent weight is packed once,
    each core owns a slice of hidden units for all T steps, the per-step
    products run in a register-blocked AVX-512 micro-kernel (float32) or on
    AMX tiles (bfloat16, where the CPU has them), and the backward pass forms
    dW_h, dW_x and the bias gradient inside the same loop, a few steps per
    product. `threads` are one per core, or SEQ_THREADS;
  * elsewhere (GPU/TPU, or kernels disabled) a `lax.scan` runs the step with
    XLA dots; on CPU its elementwise part still uses the per-step C++ kernels
    of kernels/lstm_cpu.cc, and the backward pass stores the gate gradients
    [T, R, 4H] for one weight-gradient matmul at the end.
native.py builds and registers the kernels; `native.kernel_status()` says
whether they are in use and why not.

Shape letters: T = time, R = rows (batch, any leading axes), H = units, G = 4H.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import keys as keys_lib
from sketch_vae import native
from sketch_vae.precision import dot as _dot

# ----------------------------------------------------------------------------
# The per-step elementwise work: jnp reference and FFI calls, same semantics.


def _drop_scale(keybits_Rx2, shape, dropout):
  """mask / keep for each element (keys.keep_mask's hash, from raw key bits)."""
  keep, use, flat = dropout
  if not use:
    return jnp.ones((), jnp.float32)
  R, H = int(np.prod(shape[:-1])), shape[-1]
  k0 = keybits_Rx2[..., 0].reshape(R, 1)
  k1 = keybits_Rx2[..., 1].reshape(R, 1)
  unit = jnp.arange(H, dtype=jnp.uint32)[None, :]
  index = unit + (jnp.arange(R, dtype=jnp.uint32)[:, None] * np.uint32(H) if flat else np.uint32(0))
  x = keys_lib._fmix32(index * np.uint32(0x9E3779B9) ^ k0)
  x = keys_lib._fmix32(x ^ k1)
  mask = (x < _threshold(keep)).reshape(shape)
  return jnp.where(mask, 1.0 / keep, 0.0)


def _threshold(keep):
  return np.uint32(min(int(keep * 2.0 ** 32), 2 ** 32 - 1))


def _fwd_jnp(gates, c_prev, h_prev, live, keybits, *, dropout, forget_bias):
  i, j, f, o = jnp.split(gates, 4, axis=-1)
  i, jt, f, o = jax.nn.sigmoid(i), jnp.tanh(j), jax.nn.sigmoid(f + forget_bias), jax.nn.sigmoid(o)
  c = c_prev * f + i * jt * _drop_scale(keybits, c_prev.shape, dropout)
  h = jnp.tanh(c) * o
  hold = live[..., None]
  return (jnp.where(hold, c, c_prev), jnp.where(hold, h, h_prev),
          jnp.where(hold, jnp.concatenate([i, jt, f, o], -1), 0.0))


def _bwd_jnp(dh, dc, acts, c_prev, c_new, live, keybits, *, dropout):
  i, jt, f, o = jnp.split(acts, 4, axis=-1)
  s = _drop_scale(keybits, c_prev.shape, dropout)
  tc = jnp.tanh(c_new)
  dct = dc + dh * o * (1.0 - tc * tc)
  dgates = jnp.concatenate([dct * jt * s * i * (1.0 - i), dct * i * s * (1.0 - jt * jt),
                            dct * c_prev * f * (1.0 - f), dh * tc * o * (1.0 - o)], -1)
  hold = live[..., None]
  return (jnp.where(hold, dgates, 0.0), jnp.where(hold, dct * f, dc), jnp.where(hold, 0.0, dh))


def _attrs(dropout):
  keep, use, flat = dropout
  return dict(keep=np.float32(keep), threshold=np.int64(_threshold(keep)), use_dropout=bool(use),
              flat_index=bool(flat))


def _fwd_ffi(gates, c_prev, h_prev, live, keybits, *, dropout, forget_bias):
  out = jax.ShapeDtypeStruct(c_prev.shape, jnp.float32)
  return jax.ffi.ffi_call("sketch_vae_lstm_fwd", (out, out, jax.ShapeDtypeStruct(gates.shape, jnp.float32)),
                          vmap_method="broadcast_all")(
      gates, c_prev, h_prev, live, keybits, forget_bias=np.float32(forget_bias), **_attrs(dropout))


def _bwd_ffi(dh, dc, acts, c_prev, c_new, live, keybits, *, dropout):
  out = jax.ShapeDtypeStruct(c_prev.shape, jnp.float32)
  return jax.ffi.ffi_call("sketch_vae_lstm_bwd", (jax.ShapeDtypeStruct(acts.shape, jnp.float32), out, out),
                          vmap_method="broadcast_all")(
      dh, dc, acts, c_prev, c_new, live, keybits, **_attrs(dropout))


def _pick(ffi_fn, jnp_fn, use_kernels: bool, **static):
  """The FFI kernel on CPU (when built), the jnp equations elsewhere; statics bound."""
  jnp_bound = functools.partial(jnp_fn, **static)
  if not (use_kernels and native.cpu_kernels_available()):
    return jnp_bound
  ffi_bound = functools.partial(ffi_fn, **static)
  return lambda *arrays: jax.lax.platform_dependent(*arrays, cpu=ffi_bound, default=jnp_bound)


# ----------------------------------------------------------------------------
# Whole-sequence CPU kernels (kernels/lstm_seq_cpu.cc): all T steps, matmuls
# included, in one call each way.

# Worker threads for the sequence kernels; 0 = one per core (tests force splits).
SEQ_THREADS = 0


def _seq_usable(I: int, matmul_dtype, use_kernels: bool) -> bool:
  """The sequence kernels take narrow inputs (stroke values, stacked under h in
  the step's product) and float32 or bfloat16 matmuls."""
  dtype_ok = matmul_dtype is None or jnp.dtype(matmul_dtype) in (jnp.float32, jnp.bfloat16)
  return use_kernels and I <= 32 and dtype_ok and native.cpu_kernels_available()


def _seq_attrs(dropout, matmul_dtype, static_rows):
  return dict(_attrs(dropout), static_rows=bool(static_rows), threads=np.int64(SEQ_THREADS),
              bf16=matmul_dtype is not None and jnp.dtype(matmul_dtype) == jnp.bfloat16)


def _seq_fwd_ffi(x, w_x, xp_static, w_h, c0, h0, live, keybits, *, dropout, forget_bias,
                 matmul_dtype):
  T, R, I = x.shape
  H, G = w_h.shape
  rows = xp_static.ndim > 1
  static = xp_static if rows else xp_static.reshape(1, G)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.ffi.ffi_call(
      "sketch_vae_lstm_seq_fwd", (f32(T, R, H), f32(T, R, H), f32(T, R, G), f32(R, H), f32(R, H)),
      vmap_method="broadcast_all")(
          x, w_x, static, w_h, c0, h0, live, keybits, forget_bias=np.float32(forget_bias),
          **_seq_attrs(dropout, matmul_dtype, rows))


def _seq_bwd_ffi(d_hs, dh, dc, acts, hs, cs, h0, c0, live, keybits, w_h, w_x, x, *, dropout,
                 matmul_dtype, static_rows, need_dx):
  """-> dc0, dh0, dW_h, dW_x, d_static ([R, G] or [1, G]), dx ([T, R, I] or a dummy)."""
  T, R, I = x.shape
  H, G = w_h.shape
  has_dhs = d_hs is not None
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.ffi.ffi_call(
      "sketch_vae_lstm_seq_bwd",
      (f32(R, H), f32(R, H), f32(H, G), f32(I, G), f32(R if static_rows else 1, G),
       f32(T, R, I) if need_dx else f32(1)),
      vmap_method="broadcast_all")(
          d_hs if has_dhs else jnp.zeros((1,), jnp.float32), dh, dc, acts, hs, cs, h0, c0, live,
          keybits, w_h, w_x, x, has_dhs=has_dhs, need_dx=bool(need_dx),
          **_seq_attrs(dropout, matmul_dtype, static_rows))


# ----------------------------------------------------------------------------
# The recurrence with its custom VJP. Arrays here have rows flattened: x
# [T, R, I], live [T, R], keybits [T, R, 2], states [R, H]; xp_static [G] or
# [R, G].


def _operand(w, matmul_dtype):
  """A weight in its matmul dtype, cast once outside the loop (not once per step)."""
  return w if matmul_dtype is None else w.astype(matmul_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(static, x_TxRxI, w_x, xp_static, w_h, c0, h0, live_TxR, keybits_TxRx2):
  return _forward(static, x_TxRxI, w_x, xp_static, w_h, c0, h0, live_TxR, keybits_TxRx2)[0]


def _forward(static, x, w_x, xp_static, w_h, c0, h0, live, keybits):
  """-> (hs, c, h), residuals (hs, cs, acts): the sequence kernel on CPU when usable."""
  dropout, forget_bias, matmul_dtype, use_kernels = static
  scan_path = functools.partial(_forward_scan, static)
  if not _seq_usable(x.shape[-1], matmul_dtype, use_kernels):
    return scan_path(x, w_x, xp_static, w_h, c0, h0, live, keybits)

  def seq_path(x, w_x, xp_static, w_h, c0, h0, live, keybits):
    hs, cs, acts, c, h = _seq_fwd_ffi(x, w_x, xp_static, w_h, c0, h0, live, keybits,
                                      dropout=dropout, forget_bias=forget_bias,
                                      matmul_dtype=matmul_dtype)
    return (hs, c, h), (hs, cs, acts)

  return jax.lax.platform_dependent(x, w_x, xp_static, w_h, c0, h0, live, keybits,
                                    cpu=seq_path, default=scan_path)


def _forward_scan(static, x, w_x, xp_static, w_h, c0, h0, live, keybits):
  dropout, forget_bias, matmul_dtype, use_kernels = static
  fwd = _pick(_fwd_ffi, _fwd_jnp, use_kernels, dropout=dropout, forget_bias=forget_bias)
  w_x_op, w_h_op = _operand(w_x, matmul_dtype), _operand(w_h, matmul_dtype)

  def body(carry, inputs):
    c, h = carry
    x_t, live_t, keys_t = inputs
    # The input projection is done here, per step: the inputs are narrow (5
    # stroke values), so this is cheaper than writing and reading a projected
    # [T, R, 4H] array.
    gates = _dot(x_t, w_x_op, matmul_dtype) + xp_static + _dot(h, w_h_op, matmul_dtype)
    c, h, acts = fwd(gates, c, h, live_t, keys_t)
    return (c, h), (h, c, acts)

  (c, h), (hs, cs, acts) = jax.lax.scan(body, (c0, h0), (x, live, keybits))
  return (hs, c, h), (hs, cs, acts)


def _recurrence_fwd(static, x, w_x, xp_static, w_h, c0, h0, live, keybits):
  # symbolic_zeros=True: primals arrive wrapped (value, perturbed); the input's
  # gradient is computed only when the input is not data (its `perturbed` flag).
  need_dx = x.perturbed
  x, w_x, xp_static, w_h, c0, h0, live, keybits = (
      a.value for a in (x, w_x, xp_static, w_h, c0, h0, live, keybits))
  out, (hs, cs, acts) = _forward(static, x, w_x, xp_static, w_h, c0, h0, live, keybits)
  return out, ((x, hs, cs, acts, w_x, xp_static, w_h, c0, h0, live, keybits),
               jnp.zeros((0,)) if need_dx else None)


def _is_zero(x):
  return isinstance(x, jax.custom_derivatives.SymbolicZero)


def _recurrence_bwd(static, residuals, cotangents):
  """The sequence kernel on CPU (dW_h accumulated per step inside it), else a
  reverse scan that stores the gate gradients of every step and then forms
  dW_h = sum_t h_{t-1}^T dg_t as one [H, T*R] x [T*R, G] matmul."""
  dropout, _, matmul_dtype, use_kernels = static
  (x, hs, cs, acts, w_x, xp_static, w_h, c0, h0, live, keybits), dx_marker = residuals
  need_dx = dx_marker is not None
  d_hs, d_c_final, d_h_final = cotangents
  # An encoder uses only the final state: its per-step output gradients are a
  # symbolic zero, so no [T, R, H] array of zeros is made or read.
  d_hs = None if _is_zero(d_hs) else d_hs
  d_c_final = jnp.zeros_like(c0) if _is_zero(d_c_final) else d_c_final
  d_h_final = jnp.zeros_like(h0) if _is_zero(d_h_final) else d_h_final
  args = (d_hs, d_h_final, d_c_final, acts, hs, cs, h0, c0, live, keybits, w_h, w_x, x, xp_static)
  scan_path = functools.partial(_backward_scan, static, need_dx)
  if _seq_usable(x.shape[-1], matmul_dtype, use_kernels):
    def seq_path(d_hs, dh, dc, acts, hs, cs, h0, c0, live, keybits, w_h, w_x, x, xp_static):
      rows = xp_static.ndim > 1
      dc0, dh0, d_wh, d_wx, d_static, dx = _seq_bwd_ffi(
          d_hs, dh, dc, acts, hs, cs, h0, c0, live, keybits, w_h, w_x, x, dropout=dropout,
          matmul_dtype=matmul_dtype, static_rows=rows, need_dx=need_dx)
      return dc0, dh0, d_wh, d_wx, d_static if rows else d_static[0], dx if need_dx else None

    grads = jax.lax.platform_dependent(*args, cpu=seq_path, default=scan_path)
  else:
    grads = scan_path(*args)
  dc0, dh0, d_wh, d_wx, d_static, dx = grads
  return (dx, d_wx.astype(w_x.dtype), d_static, d_wh.astype(w_h.dtype), dc0, dh0, None, None)


def _backward_scan(static, need_dx, d_hs, dh, dc, acts, hs, cs, h0, c0, live, keybits, w_h, w_x,
                   x, xp_static):
  """-> (dc0, dh0, dW_h, dW_x, d_static, dx or None): a reverse scan of the elementwise
  backward (FFI on CPU when built) with one XLA dot per step, then the weight
  gradients from the stored gate gradients [T, R, G]."""
  dropout, _, matmul_dtype, use_kernels = static
  bwd = _pick(_bwd_ffi, _bwd_jnp, use_kernels, dropout=dropout)
  w_h_t = _operand(w_h.T, matmul_dtype)
  T = x.shape[0]

  def body(carry, inputs):
    dh, dc = carry
    t, acts_t, c_new, live_t, keys_t = inputs[:5]
    if d_hs is not None:
      dh = dh + inputs[5]
    c_prev = jnp.where(t > 0, cs[jnp.maximum(t - 1, 0)], c0)
    dgates, dc, dh_pass = bwd(dh, dc, acts_t, c_prev, c_new, live_t, keys_t)
    dh = _dot(dgates, w_h_t, matmul_dtype) + dh_pass
    return (dh, dc), dgates

  xs = (jnp.arange(T), acts, cs, live, keybits) + (() if d_hs is None else (d_hs,))
  (dh0, dc0), dgates = jax.lax.scan(body, (dh, dc), xs, reverse=True)
  contract = lambda spec, a, b: jnp.einsum(spec, _operand(a, matmul_dtype), _operand(b, matmul_dtype),
                                           preferred_element_type=jnp.float32)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  d_wh = contract("trh,trg->hg", h_prev, dgates)
  d_wx = contract("tri,trg->ig", x, dgates)
  d_static = jnp.sum(dgates, axis=0 if xp_static.ndim > 1 else (0, 1))
  dx = _dot(dgates, _operand(w_x.T, matmul_dtype), matmul_dtype) if need_dx else None
  return dc0, dh0, d_wh, d_wx, d_static, dx


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd, symbolic_zeros=True)


def step_key_bits(dropout_key, T: int, rows_shape):
  """[T, *rows, 2] uint32 bits of fold_in(dropout_key, t) (one key, or one per row)."""
  if dropout_key is None:
    return jnp.zeros((T,) + tuple(rows_shape) + (2,), jnp.uint32), False
  keys_T = jax.vmap(lambda t: keys_lib.fold_in(dropout_key, t))(jnp.arange(T))
  bits = jax.random.key_data(keys_T)
  flat = dropout_key.shape == ()
  bits = jnp.broadcast_to(bits.reshape((T,) + (1,) * len(rows_shape) + (2,)) if flat else bits,
                          (T,) + tuple(rows_shape) + (2,))
  return bits.astype(jnp.uint32), flat


def scan(params, carry, x_TxRxI, xp_static, live_TxR, dropout_key, *, keep: float,
         forget_bias: float, matmul_dtype=None, use_kernels: bool = True):
  """The `lstm` cell unrolled over T steps -> (final (c, h), outputs h [T, R, H]).

  Same contract as `rnn.unroll`: step t reads x[t] @ W_x[:I] + xp_static (the
  projected static input plus bias), rows with live[t] False hold their
  carry, dropout keys are fold_in(key, t).
  """
  T, rows_shape, I = x_TxRxI.shape[0], x_TxRxI.shape[1:-1], x_TxRxI.shape[-1]
  keybits, flat = step_key_bits(dropout_key, T, rows_shape)
  dropout = (float(keep), dropout_key is not None and keep < 1.0, flat)
  static = (dropout, float(forget_bias), matmul_dtype, bool(use_kernels))
  R, H, G = int(np.prod(rows_shape)), params["w_h"].shape[0], params["w_h"].shape[1]
  # Rows flattened; a per-row static input broadcast to [R, G] (autodiff sums
  # its gradient back to the shape given).
  if xp_static.ndim > 1:
    xp_static = jnp.broadcast_to(xp_static, tuple(rows_shape) + (G,)).reshape(R, G)
  hs, c, h = _recurrence(static, x_TxRxI.reshape(T, R, I), params["w_x"][:I], xp_static,
                         params["w_h"], carry.c.reshape(R, H), carry.h.reshape(R, H),
                         live_TxR.reshape(T, R), keybits.reshape(T, R, 2))
  rows = lambda a: a.reshape(tuple(rows_shape) + (H,))
  return type(carry)(c=rows(c), h=rows(h)), hs.reshape((T,) + tuple(rows_shape) + (H,))
