"""A recurrence's per-step product with its weight packed once (kernels/packed_matmul_cpu.cc).

`pack(w)` lays a [K, N] weight out once for the CPU engines of
kernels/gemm_cpu.h (AVX-512 float32, or AMX tiles for bfloat16), split in
column slices, one per core; `matmul(a, packed, N)` is then a @ w in float32
accumulation, run one slice per core. split_scan.py uses it on CPU for the big
recurrent product of the layer-norm LSTM and the HyperLSTM, where XLA would
re-lay out the weight every step. `usable` says when it applies;
tests/test_split_scan.py checks it against jnp.dot.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import native


def _parts() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not Linux
    return max(1, os.cpu_count() or 1)


def usable(matmul_dtype, use_kernels: bool = True) -> bool:
  """float32 or bfloat16 operands, kernels built."""
  dtype_ok = matmul_dtype is None or jnp.dtype(matmul_dtype) in (jnp.float32, jnp.bfloat16)
  return use_kernels and dtype_ok and native.cpu_kernels_available()


def _bf16(matmul_dtype) -> bool:
  return matmul_dtype is not None and jnp.dtype(matmul_dtype) == jnp.bfloat16


def pack(w_KxN, matmul_dtype=None):
  """-> uint8 [bytes]: w in the kernels' layout (rounded to bfloat16 for bfloat16)."""
  if not native.cpu_kernels_available():
    raise RuntimeError(f"packed products need the CPU kernels: {native.kernel_status()['reason']}")
  K, N = w_KxN.shape[-2:]
  parts, bf16 = _parts(), _bf16(matmul_dtype)
  nbytes = int(native.library().SketchVaePackedBytes(K, N, bf16, parts))
  # Under vmap the kernels take the batch as groups (one weight each); an
  # unbatched operand arrives with a batch axis of 1 and is shared.
  return jax.ffi.ffi_call("sketch_vae_pack_b", jax.ShapeDtypeStruct((nbytes,), jnp.uint8),
                          vmap_method="expand_dims")(
      w_KxN.astype(jnp.float32), parts=np.int64(parts), bf16=bf16)


def matmul(a_RxK, packed, n: int, matmul_dtype=None):
  """a @ w for the w that `pack` packed -> float32 [..., n]."""
  return jax.ffi.ffi_call("sketch_vae_packed_matmul",
                          jax.ShapeDtypeStruct(a_RxK.shape[:-1] + (n,), jnp.float32),
                          vmap_method="expand_dims")(
      a_RxK.astype(jnp.float32), packed, n_cols=np.int64(n), parts=np.int64(_parts()),
      bf16=_bf16(matmul_dtype))
