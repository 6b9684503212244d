"""Matrix products with optional low-precision operands and float32 accumulation.

`dot(x, w, matmul_dtype)` is the one product every cell, the encoder's hoisted
input projection and the mixture head use, so the `--matmul_dtype` flag changes
the operands' precision everywhere at once while state, accumulation and the
parameters stay float32 (issue 8's bfloat16 option; BUILD_NOTES "bfloat16").
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def dot(x, w, matmul_dtype=None):
  """x @ w with optional low-precision operands and float32 accumulation.

  With low-precision operands the backward products use them too (the output
  gradient is rounded to the same dtype, as in mixed-precision training);
  plain autodiff would promote the float32 cotangent and run both gradient
  products in float32 (measured: 9% of a bfloat16 config-A step on 2 cores).
  """
  if matmul_dtype is not None and jnp.dtype(matmul_dtype) != jnp.float32:
    return _low_precision_dot(x, w, jnp.dtype(matmul_dtype))
  return jnp.dot(x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_dot(x, w, dtype):
  return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _low_precision_dot_fwd(x, w, dtype):
  x_lp, w_lp = x.astype(dtype), w.astype(dtype)
  out = jnp.dot(x_lp, w_lp, preferred_element_type=jnp.float32)
  # Zero-size arrays carry the primals' dtypes to the backward pass.
  return out, (x_lp, w_lp, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _low_precision_dot_bwd(dtype, residuals, g):
  x_lp, w_lp, x_kind, w_kind = residuals
  g_lp = g.astype(dtype)
  dx = jnp.dot(g_lp, w_lp.T, preferred_element_type=jnp.float32)
  lead = tuple(range(x_lp.ndim - 1))
  dw = jnp.tensordot(x_lp, g_lp, axes=(lead, lead), preferred_element_type=jnp.float32)
  return dx.astype(x_kind.dtype), dw.astype(w_kind.dtype)


_low_precision_dot.defvjp(_low_precision_dot_fwd, _low_precision_dot_bwd)
