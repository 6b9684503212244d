"""The layer-norm LSTM cell update as one CPU kernel each way (kernels/ln_lstm_cpu.cc).

`update` computes exactly what `cells.ln_lstm_update` computes (the jnp
equations, which stay the definition and run on GPU/TPU or without the
kernels), with a custom VJP: on CPU the forward pass and its gradient are one
FFI call each per step, the gradient recomputing the row's forward values
instead of storing them. Used by the layer-norm LSTM and both cells of the
HyperLSTM; tests/test_fused_ln.py checks values and gradients against the jnp
equations.

Shape letters: R = rows (any leading axes), H = units, G = 4H.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import cells as cells_lib
from sketch_vae import fused_lstm, native


def _dropout_bits(dropout_key, rows_shape):
  """-> (key bits per row [*rows, 2] uint32, one key for all rows?)."""
  if dropout_key is None:
    return jnp.zeros(tuple(rows_shape) + (2,), jnp.uint32), False
  bits = jax.random.key_data(dropout_key).astype(jnp.uint32)
  flat = dropout_key.shape == ()
  return jnp.broadcast_to(bits, tuple(rows_shape) + (2,)), flat


def _reference(static, xh, hh, sx, sh, beta, bias, gain, shift, c_gain, c_shift, c_prev, keybits):
  keep, use_dropout, flat, forget_bias, scaled = static
  key = None
  if use_dropout:
    key = jax.random.wrap_key_data(keybits[0] if flat else keybits)
  scaling = (sx, sh, beta) if scaled else None
  return cells_lib.ln_lstm_update(xh, hh, scaling, bias, gain, shift, c_gain, c_shift, c_prev, key,
                                  keep=keep, forget_bias=forget_bias)


def _attrs(static):
  keep, use_dropout, flat, forget_bias, scaled = static
  return dict(keep=np.float32(keep), forget_bias=np.float32(forget_bias),
              threshold=np.int64(fused_lstm._threshold(keep)), use_dropout=bool(use_dropout),
              flat_index=bool(flat), scaled=bool(scaled))


def _fwd_ffi(static, *args):
  c_prev = args[10]
  out = jax.ShapeDtypeStruct(c_prev.shape, jnp.float32)
  return tuple(jax.ffi.ffi_call("sketch_vae_ln_lstm_fwd", (out, out), vmap_method="broadcast_all")(
      *args, **_attrs(static)))


def _bwd_ffi(static, args, dc, dh):
  xh, sx, gain, c_gain, c_prev = args[0], args[2], args[6], args[8], args[10]
  f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  scaled = static[4]
  # d_pre is d_beta when scaled (gate-major, like sx), else the row-major d_xh = d_hh.
  wide = f32(xh.shape) if scaled else f32((1,))
  gates = f32(sx.shape) if scaled else f32((1,))
  outs = (f32(sx.shape) if scaled else f32(xh.shape), wide, wide, gates, gates, f32(gain.shape),
          f32(gain.shape), f32(gain.shape), f32(c_gain.shape), f32(c_gain.shape), f32(c_prev.shape))
  return jax.ffi.ffi_call("sketch_vae_ln_lstm_bwd", outs, vmap_method="broadcast_all")(
      *args, dc, dh, **_attrs(static))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _update(static, xh, hh, sx, sh, beta, bias, gain, shift, c_gain, c_shift, c_prev, keybits):
  args = (xh, hh, sx, sh, beta, bias, gain, shift, c_gain, c_shift, c_prev, keybits)
  return jax.lax.platform_dependent(*args, cpu=functools.partial(_fwd_ffi, static),
                                    default=functools.partial(_reference, static))


def _update_fwd(static, *args):
  return _update(static, *args), args


def _update_bwd(static, args, cotangents):
  dc, dh = cotangents
  scaled = static[4]

  def kernel(args, dc, dh):
    d_pre, d_xh, d_hh, d_sx, d_sh, d_bias, d_gain, d_shift, d_cg, d_cs, dc_prev = _bwd_ffi(
        static, args, dc, dh)
    if not scaled:
      d_xh = d_hh = d_pre
      d_sx, d_sh, d_beta = (jnp.zeros_like(a) for a in args[2:5])
    else:
      d_beta = d_pre
    return d_xh, d_hh, d_sx, d_sh, d_beta, d_bias, d_gain, d_shift, d_cg, d_cs, dc_prev

  def reference(args, dc, dh):
    _, vjp = jax.vjp(lambda *a: _reference(static, *a, args[-1]), *args[:-1])
    return vjp((dc, dh))

  grads = jax.lax.platform_dependent(args, dc, dh, cpu=kernel, default=reference)
  return tuple(grads) + (None,)


_update.defvjp(_update_fwd, _update_bwd)


def update(xh, hh, scaling, bias, gain, shift, c_gain, c_shift, c_prev, dropout_key, *, keep: float,
           forget_bias: float):
  """`cells.ln_lstm_update`'s contract, one FFI call each way on CPU -> (c, h).

  Rows are flattened for the kernel; `scaling` is None or (sx, sh, beta), each
  gate-major [4, *rows, H] (see `cells.ln_lstm_update`).
  """
  if not native.cpu_kernels_available():  # builds and registers the kernels on first use
    return cells_lib.ln_lstm_update(xh, hh, scaling, bias, gain, shift, c_gain, c_shift, c_prev,
                                    dropout_key, keep=keep, forget_bias=forget_bias)
  rows_shape, H = c_prev.shape[:-1], c_prev.shape[-1]
  R = int(np.prod(rows_shape))
  keybits, flat = _dropout_bits(dropout_key, rows_shape)
  use_dropout = dropout_key is not None and keep < 1.0
  static = (float(keep), bool(use_dropout), bool(flat), float(forget_bias), scaling is not None)
  rows = lambda a: jnp.broadcast_to(a, tuple(rows_shape) + a.shape[-1:]).reshape(R, a.shape[-1])
  dummy = jnp.zeros((1,), jnp.float32)
  gate_rows = lambda a: jnp.broadcast_to(a, (4,) + tuple(rows_shape) + (H,)).reshape(4, R, H)
  sx, sh, beta = (gate_rows(a) for a in scaling) if scaling is not None else (dummy,) * 3
  c, h = _update(static, rows(xh), rows(hh), sx, sh, beta, bias, gain, shift, c_gain, c_shift,
                 c_prev.reshape(R, H), keybits.reshape(R, 2))
  return c.reshape(c_prev.shape), h.reshape(c_prev.shape)
