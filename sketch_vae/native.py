"""Builds, caches, loads and registers the C++ CPU kernels (sketch_vae/kernels/).

The kernels are compiled once per machine with the system's g++ into a cache
directory (~/.cache/sketch_vae/kernels, or the temp directory if that cannot be
made), named by a hash of their sources, the g++ flags, the CPU, jax and Python,
so any change of those rebuilds. `cpu_kernels_available()` builds and registers
them with XLA on first call; `kernel_status()` says whether they are in use and
why not. The modules that call them: fused_lstm.py (LSTM recurrence),
fused_ln.py (layer-norm cell update), packed.py (packed per-step products).
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

_KERNELS = pathlib.Path(__file__).parent / "kernels"
_SOURCES = (_KERNELS / "lstm_cpu.cc", _KERNELS / "lstm_seq_cpu.cc", _KERNELS / "ln_lstm_cpu.cc",
            _KERNELS / "packed_matmul_cpu.cc")
_HEADERS = (_KERNELS / "lstm_math.h", _KERNELS / "gemm_cpu.h", _KERNELS / "ffi_rows.h")
# g++ flags; part of the cache key, so a change of flags rebuilds.
_FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-trapping-math",
          "-ffp-contract=off", "-shared", "-fPIC", "-pthread", "-std=c++20", "-w")
_STATUS = {"loaded": False, "reason": "not tried"}
_LIB: list = []  # the loaded kernel library, once built


def _cache_dir() -> pathlib.Path:
  base = pathlib.Path.home() / ".cache" / "sketch_vae" / "kernels"
  try:
    base.mkdir(parents=True, exist_ok=True)
    return base
  except OSError:
    return pathlib.Path(tempfile.gettempdir()) / "sketch_vae_kernels"


def _cpu_tag() -> bytes:
  """The CPU's model and flags: the kernels are compiled with -march=native."""
  try:
    with open("/proc/cpuinfo", "rb") as f:
      return b"".join(l for l in f.read().splitlines() if l.startswith((b"model name", b"flags")))[:4096]
  except OSError:
    return b""


def _cache_key() -> str:
  """Names the built library by what it is built from: sources, flags, CPU, jax, Python."""
  source = b"".join(p.read_bytes() for p in _SOURCES + _HEADERS)
  return hashlib.sha256(source + " ".join(_FLAGS).encode() + jax.__version__.encode() +
                        sys.version.encode() + _cpu_tag()).hexdigest()[:16]


def _build() -> Optional[pathlib.Path]:
  """Compiles the kernels (once per source, CPU, jaxlib and Python version); returns the .so."""
  out = _cache_dir() / f"lstm_cpu_{_cache_key()}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(f".{os.getpid()}.tmp")
  cmd = ["g++", *_FLAGS, f"-I{jax.ffi.include_dir()}", *map(str, _SOURCES), "-o", str(tmp)]
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
                         ("sketch_vae_lstm_bwd", lib.SketchVaeLstmBackward),
                         ("sketch_vae_lstm_seq_fwd", lib.SketchVaeLstmSeqForward),
                         ("sketch_vae_lstm_seq_bwd", lib.SketchVaeLstmSeqBackward),
                         ("sketch_vae_ln_lstm_fwd", lib.SketchVaeLnLstmForward),
                         ("sketch_vae_ln_lstm_bwd", lib.SketchVaeLnLstmBackward),
                         ("sketch_vae_pack_b", lib.SketchVaePackB),
                         ("sketch_vae_packed_matmul", lib.SketchVaePackedMatmul)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
  except (OSError, FileNotFoundError, AttributeError) as e:
    _STATUS["reason"] = f"{type(e).__name__}: {e}"
    return False
  lib.SketchVaeAmxReady.restype = ctypes.c_bool
  lib.SketchVaePackedBytes.restype = ctypes.c_int64
  lib.SketchVaePackedBytes.argtypes = (ctypes.c_int64, ctypes.c_int64, ctypes.c_bool, ctypes.c_int64)
  _LIB.append(lib)
  _STATUS.update(loaded=True, reason="compiled with g++ and registered",
                 amx_bf16=bool(lib.SketchVaeAmxReady()))
  return True


def kernel_status() -> dict:
  return dict(_STATUS)


def library() -> ctypes.CDLL:
  """The loaded kernel library (call `cpu_kernels_available()` first)."""
  if not cpu_kernels_available():
    raise RuntimeError(f"the CPU kernels are not available: {_STATUS['reason']}")
  return _LIB[0]
