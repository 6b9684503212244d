"""heap.reserve grows glibc's heap up front so later blocks reuse its pages; the
launchers' tunables are merged without duplicates."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from sketch_vae import heap
from experiments import hugepages

REUSE = ":".join(hugepages.REUSE)

# Allocates and touches a block of `block` MB (and frees it), after an optional reserve of
# `reserve` MB; prints the MB reserved and the resident-size growth of each part.
_PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, sys
    from sketch_vae import heap
    reserve_mb, block_mb = int(sys.argv[1]), int(sys.argv[2])
    import os
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page_mb  # resident now
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    r0 = rss()
    got = heap.reserve(reserve_mb << 20)
    r1 = rss()
    p = libc.malloc(block_mb << 20)
    ctypes.memset(p, 1, block_mb << 20)
    libc.free(p)
    print(got >> 20, r1 - r0, rss() - r1)
""")


def probe(reserve_mb, block_mb, tunables):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
  if tunables:
    env["GLIBC_TUNABLES"] = tunables
  out = subprocess.run([sys.executable, "-c", _PROBE, str(reserve_mb), str(block_mb)],
                       capture_output=True, text=True, env=env, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-2000:]
  return [float(v) for v in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tunables")
def test_reserved_heap_pages_are_reused_by_a_later_block():
  got, grew_reserve, grew_block = probe(300, 200, REUSE)
  assert got == 300 and grew_reserve > 280  # the reserve was touched
  assert grew_block < 20  # the 200 MB block came out of the reserved pages
  # Without a reserve the same block is new memory.
  got, grew_reserve, grew_block = probe(0, 200, REUSE)
  assert got == 0 and grew_block > 180


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tunables")
def test_reserve_does_nothing_when_malloc_hands_memory_back():
  got, grew_reserve, _ = probe(300, 10, "")
  assert got == 0 and grew_reserve < 20


def test_keeps_freed_memory_reads_the_tunables(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  assert not heap.malloc_keeps_freed_memory()
  assert heap.reserve(1 << 20) == 0
  monkeypatch.setenv("GLIBC_TUNABLES", REUSE)
  assert heap.malloc_keeps_freed_memory() == sys.platform.startswith("linux")


def test_step_temp_bytes_sees_a_materialised_intermediate():
  n = 1024
  a = jnp.ones((n, n), jnp.float32)
  # y = a @ a must be stored (4 MB) before y.T @ y reads it.
  chained = jax.jit(lambda a: (lambda y: y.T @ y)(a @ a)).lower(a).compile()
  assert heap.step_temp_bytes(chained) >= n * n * 4
  assert heap.step_temp_bytes(jax.jit(lambda a: a + 1).lower(a).compile()) < n * n * 4
  assert heap.step_temp_bytes(object()) == 0


def test_merged_tunables_adds_only_what_is_missing():
  wanted = hugepages.REUSE + hugepages.HUGE_PAGES
  assert hugepages.merged_tunables("", wanted) == ":".join(wanted)
  # Already set (by hand, or by a parent that re-ran): unchanged, so no re-exec.
  assert hugepages.merged_tunables(":".join(wanted), wanted) == ":".join(wanted)
  assert hugepages.merged_tunables("glibc.malloc.hugetlb=1", hugepages.REUSE) == (
      "glibc.malloc.hugetlb=1:" + ":".join(hugepages.REUSE))
  assert hugepages.merged_tunables("glibc.malloc.arena_max=1:", hugepages.HUGE_PAGES) == (
      "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1")
