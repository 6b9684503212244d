"""Growing glibc's heap once, up front, when malloc is told to keep freed memory.

The launchers can re-run themselves with glibc tunables that make malloc serve
large blocks from its heap and never give freed memory back
(experiments/hugepages.py), so that XLA's per-step temporary block (715 MB for
config A) reuses pages that are already mapped. The heap still grows in jumps
of one such block at a time: after a step, a small long-lived allocation can
land at the start of the freed block, the next step's block no longer fits
there, and malloc extends the heap by another block, whose first touch costs
about 1.2 s on the 2-core development VM. Measured (config A, 30 steps,
2026-11-25): the resident size grows 1.4 -> 2.1 -> 2.8 -> 3.5 GB and then
stays, with the growth steps falling anywhere in the first ten or so steps,
including after a benchmark's warm-up.

`reserve` takes that growth up front: it allocates one block of the given size
at the top of the heap, touches it, and frees it, so that malloc hands the
pages out again from then on. With three times the step's temporary size,
reserved after the first step, no later step of those runs grew the heap,
and the resident size ended where it ends without the reserve (3.5 GB).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# The tunable that the reuse mode sets; without it malloc maps large blocks
# separately and returns them, so a reserve would only cost time.
KEEPS_FREED = "glibc.malloc.mmap_max=0"


def malloc_keeps_freed_memory() -> bool:
  """Whether this process runs with the launchers' reuse-memory malloc tunables."""
  tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
  return sys.platform.startswith("linux") and KEEPS_FREED in tunables


def reserve(nbytes: int) -> int:
  """Grows the heap by `nbytes` (touched, then freed back to malloc); returns the bytes
  reserved, 0 where malloc does not keep freed memory or the allocation fails."""
  if nbytes <= 0 or not malloc_keeps_freed_memory():
    return 0
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  block = libc.malloc(nbytes)
  if not block:
    return 0
  ctypes.memset(block, 0, nbytes)
  libc.free(block)
  return nbytes


def step_temp_bytes(compiled) -> int:
  """XLA's temporary allocation of one run of a compiled executable (0 if unknown)."""
  try:
    analysis = compiled.memory_analysis()
    if isinstance(analysis, (list, tuple)):  # one per device on some backends
      analysis = analysis[0]
    return int(analysis.temp_size_in_bytes)
  except (AttributeError, TypeError, NotImplementedError):
    return 0
