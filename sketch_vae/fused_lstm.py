"""A fast LSTM recurrence: hand-written backward pass, hoisted weight gradient, fused CPU kernels.

`scan` computes exactly what `rnn.unroll` computes with the `lstm` cell's
step (tests/test_fused_lstm.py checks values and gradients), but:
  * its custom VJP stores only (h, c, activations) per step, and the reverse
    scan accumulates the weight gradients in its carry, so no array of gate
    gradients over all steps is ever stored (autodiff of a scan keeps several);
  * the narrow input (5 stroke values) is projected inside each step rather
    than into a [T, R, 4H] array before the scan;
  * on CPU, the per-step elementwise work (gate nonlinearities, dropout mask,
    cell update, and their derivatives) runs in a vectorised C++ kernel
    (kernels/lstm_cpu.cc) through the XLA FFI; elsewhere, or when no C++
    compiler is available, the same equations run as jnp code.
The kernel is compiled once per machine with the system's g++ into a cache
directory; `kernel_status()` says whether it is in use and why not.

Shape letters: T = time, R = rows (batch, any leading axes), H = units, G = 4H.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import keys as keys_lib
from sketch_vae.cells import dot as _dot

_SOURCE = pathlib.Path(__file__).parent / "kernels" / "lstm_cpu.cc"
_STATUS = {"loaded": False, "reason": "not tried"}


def _cache_dir() -> pathlib.Path:
  base = pathlib.Path.home() / ".cache" / "sketch_vae" / "kernels"
  try:
    base.mkdir(parents=True, exist_ok=True)
    return base
  except OSError:
    return pathlib.Path(tempfile.gettempdir()) / "sketch_vae_kernels"


def _build() -> Optional[pathlib.Path]:
  """Compiles the kernel (once per source, jaxlib and Python version) and returns the .so."""
  source = _SOURCE.read_bytes()
  tag = hashlib.sha256(source + jax.__version__.encode() + sys.version.encode()).hexdigest()[:16]
  out = _cache_dir() / f"lstm_cpu_{tag}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(f".{os.getpid()}.tmp")
  cmd = ["g++", "-O3", "-march=native", "-mprefer-vector-width=512", "-fno-trapping-math",
         "-ffp-contract=off", "-shared", "-fPIC",
         "-std=c++20", "-w", f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(tmp)]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    _STATUS["reason"] = f"g++ failed: {result.stderr.strip()[-500:]}"
    return None
  os.replace(tmp, out)
  return out


@functools.lru_cache(maxsize=1)
def cpu_kernels_available() -> bool:
  """Builds and registers the CPU kernels on first call; False (with a reason) if impossible."""
  try:
    path = _build()
    if path is None:
      return False
    lib = ctypes.cdll.LoadLibrary(str(path))
    for name, symbol in (("sketch_vae_lstm_fwd", lib.SketchVaeLstmForward),
                         ("sketch_vae_lstm_bwd", lib.SketchVaeLstmBackward)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
  except (OSError, FileNotFoundError, AttributeError) as e:
    _STATUS["reason"] = f"{type(e).__name__}: {e}"
    return False
  _STATUS.update(loaded=True, reason="compiled with g++ and registered")
  return True


def kernel_status() -> dict:
  return dict(_STATUS)


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
  if not (use_kernels and cpu_kernels_available()):
    return jnp_bound
  ffi_bound = functools.partial(ffi_fn, **static)
  return lambda *arrays: jax.lax.platform_dependent(*arrays, cpu=ffi_bound, default=jnp_bound)


# ----------------------------------------------------------------------------
# The recurrence with its custom VJP.


def _operand(w, matmul_dtype):
  """A weight in its matmul dtype, cast once outside the loop (not once per step)."""
  return w if matmul_dtype is None else w.astype(matmul_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(static, x_TxRxI, w_x, xp_static, w_h, c0, h0, live_TxR, keybits_TxRx2):
  return _forward(static, x_TxRxI, w_x, xp_static, w_h, c0, h0, live_TxR, keybits_TxRx2)[0]


def _forward(static, x, w_x, xp_static, w_h, c0, h0, live, keybits):
  dropout, forget_bias, matmul_dtype, use_kernels = static
  fwd = _pick(_fwd_ffi, _fwd_jnp, use_kernels, dropout=dropout, forget_bias=forget_bias)
  w_x_op, w_h_op = _operand(w_x, matmul_dtype), _operand(w_h, matmul_dtype)

  def body(carry, inputs):
    c, h = carry
    x_t, live_t, keys_t = inputs
    # The input projection is done here, per step: the inputs are narrow (5
    # stroke values), so this is cheaper than writing and reading a projected
    # [T, R, 4H] array, and its gradient needs no transposed copy of one.
    gates = _dot(x_t, w_x_op, matmul_dtype) + xp_static + _dot(h, w_h_op, matmul_dtype)
    c, h, acts = fwd(gates, c, h, live_t, keys_t)
    # h is also kept transposed ([H, R]) so that the backward pass's dW_h
    # matmuls are plain [H, R] x [R, G] products (XLA's fast path on CPU).
    return (c, h), (h, _rows(h).T, c, acts)

  (c, h), (hs, hs_t, cs, acts) = jax.lax.scan(body, (c0, h0), (x, live, keybits))
  return (hs, c, h), (hs_t, cs, acts)


def _rows(a):
  return a.reshape(-1, a.shape[-1])


def _recurrence_fwd(static, x, w_x, xp_static, w_h, c0, h0, live, keybits):
  # symbolic_zeros=True: primals arrive wrapped (value, perturbed).
  x, w_x, xp_static, w_h, c0, h0, live, keybits = (
      a.value for a in (x, w_x, xp_static, w_h, c0, h0, live, keybits))
  out, (hs_t, cs, acts) = _forward(static, x, w_x, xp_static, w_h, c0, h0, live, keybits)
  return out, (x, hs_t, cs, acts, w_x, xp_static, w_h, c0, h0, live, keybits)


def _is_zero(x):
  return isinstance(x, jax.custom_derivatives.SymbolicZero)


def _recurrence_bwd(static, residuals, cotangents):
  """Reverse scan; every weight gradient is accumulated in the loop's carry.

  Accumulating dW_h += h_{t-1}^T dgates_t per step never materialises the
  gate gradients of all T steps (205 MB for the decoder of the original
  configuration) nor the transposed copy XLA makes for one end-of-loop
  matmul. Measured on 2 CPU cores (2026-11-24, config A): 1.55 s per training
  step this way; 1.65-1.73 s accumulating per chunk of 5-25 steps; 2.24 s with
  the [T, R, G] array and one matmul.
  """
  dropout, _, matmul_dtype, use_kernels = static
  x, hs_t, cs, acts, w_x, xp_static, w_h, c0, h0, live, keybits = residuals
  d_hs, d_c_final, d_h_final = cotangents
  T, H, G = hs_t.shape[0], h0.shape[-1], w_h.shape[-1]
  # An encoder uses only the final state: its per-step output gradients are a
  # symbolic zero, so no [T, R, H] array of zeros is made or read.
  zero_out = _is_zero(d_hs)
  d_c_final = jnp.zeros_like(c0) if _is_zero(d_c_final) else d_c_final
  d_h_final = jnp.zeros_like(h0) if _is_zero(d_h_final) else d_h_final
  bwd = _pick(_bwd_ffi, _bwd_jnp, use_kernels, dropout=dropout)
  w_h_t, w_x_t = _operand(w_h.T, matmul_dtype), _operand(w_x.T, matmul_dtype)
  h0_t = _rows(h0).T

  def body(carry, inputs):
    dh, dc, d_wh, d_wx, d_static = carry
    t, x_t, acts_t, c_new, live_t, keys_t = inputs[:6]
    if not zero_out:
      dh = dh + inputs[6]
    prev = lambda stack, first: jnp.where(
        t > 0, jax.lax.dynamic_index_in_dim(stack, jnp.maximum(t - 1, 0), keepdims=False), first)
    dgates, dc, dh_pass = bwd(dh, dc, acts_t, prev(cs, c0), c_new, live_t, keys_t)
    dh = _dot(dgates, w_h_t, matmul_dtype) + dh_pass
    d_wh = d_wh + _dot(prev(hs_t, h0_t), _rows(dgates), matmul_dtype)
    d_wx = d_wx + _dot(_rows(x_t).T, _rows(dgates), matmul_dtype)
    return (dh, dc, d_wh, d_wx, d_static + dgates), _dot(dgates, w_x_t, matmul_dtype)

  carry0 = (d_h_final, d_c_final, jnp.zeros((H, G), jnp.float32),
            jnp.zeros(w_x.shape, jnp.float32), jnp.zeros(c0.shape[:-1] + (G,), jnp.float32))
  xs = (jnp.arange(T), x, acts, cs, live, keybits) + (() if zero_out else (d_hs,))
  (dh0, dc0, d_wh, d_wx, d_static), dx = jax.lax.scan(body, carry0, xs, reverse=True)
  while d_static.ndim > xp_static.ndim:  # xp_static broadcast over rows (no per-row input)
    d_static = jnp.sum(d_static, axis=0)
  return (dx, d_wx.astype(w_x.dtype), d_static, d_wh.astype(w_h.dtype), dc0, dh0, None, None)


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
  hs, c, h = _recurrence(static, x_TxRxI, params["w_x"][:I], xp_static, params["w_h"], carry.c,
                         carry.h, live_TxR, keybits)
  return type(carry)(c=c, h=h), hs
