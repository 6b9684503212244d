"""Re-run the launcher once with glibc's malloc told to keep and reuse large blocks.

XLA:CPU allocates each training step's temporaries (several hundred MB for the
original configuration) afresh. glibc serves blocks that large with mmap and
returns them with munmap, so every step the kernel faults the pages in again
and zeroes them (`clear_page` was 16% of a bfloat16 config-A step's CPU time).
With
    glibc.malloc.mmap_max=0               (large blocks come from the heap),
    glibc.malloc.trim_threshold=64 GiB    (freed heap is kept),
    glibc.malloc.arena_max=1              (one heap, so a freed block is found again)
the step reuses the previous step's pages: page faults over 5 bfloat16 steps
17 958 -> 1 541, and config A 1.16 -> 1.06 s (float32), 0.53 -> 0.47 s (bfloat16),
at the price of a higher peak resident size (1.6 -> 2.8 GB for config A), since
memory is not handed back to the system (measured 2026-11-25, 2-core CPU). It
does not pay everywhere: config C (HyperLSTM 2048) measured 27.8 s per step
without it and 30.5 s with it (9.3 GB), so the launchers turn it on per config.
`huge_pages` adds glibc.malloc.hugetlb=1 (transparent huge pages for malloc;
measured 1.05 -> 1.00 s per bf16 config-A step on the 2026-11-24 code).
glibc reads GLIBC_TUNABLES only at process start, hence the re-exec; on other
systems, or when the launcher already ran with them, nothing happens.
"""
import os
import sys

REUSE = ("glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=68719476736",
         "glibc.malloc.arena_max=1")
HUGE_PAGES = ("glibc.malloc.hugetlb=1",)
_MARK = "SKETCH_VAE_MALLOC_TUNED"


def merged_tunables(current: str, wanted) -> str:
  """`current` (a GLIBC_TUNABLES value) with the `wanted` settings appended, those it
  already has left out; a name set to another value there keeps the later (wanted) one."""
  have = [t for t in current.split(":") if t]
  return ":".join(have + [t for t in wanted if t not in have])


def reexec_with_malloc_tunables(reuse: bool = False, huge_pages: bool = True) -> None:
  wanted = (REUSE if reuse else ()) + (HUGE_PAGES if huge_pages else ())
  if not wanted or not sys.platform.startswith("linux") or os.environ.get(_MARK):
    return
  tunables = merged_tunables(os.environ.get("GLIBC_TUNABLES", ""), wanted)
  if tunables == os.environ.get("GLIBC_TUNABLES", ""):
    return  # already running with them (set by hand): no re-exec
  env = dict(os.environ, GLIBC_TUNABLES=tunables, **{_MARK: "1"})
  sys.stdout.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
