"""Re-run the launcher once with glibc's malloc asked to use transparent huge pages.

XLA:CPU allocates each training step's temporaries (several hundred MB for the
original configuration) afresh, and the kernel faults them in 4 KB at a time:
194 000 page faults per config-A step on our 2-core machine. With
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 malloc marks large blocks for 2 MB pages
and the count drops to about 900 (measured 2026-11-24: 1.05 s -> 1.00 s per
bf16 step). glibc reads the setting only at process start, hence the re-exec;
on other systems, or when the variable is already set, nothing happens.
"""
import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def reexec_with_huge_pages(enabled: bool = True) -> None:
  current = os.environ.get("GLIBC_TUNABLES", "")
  if not enabled or not sys.platform.startswith("linux") or "glibc.malloc.hugetlb" in current:
    return
  env = dict(os.environ, GLIBC_TUNABLES=f"{current}:{TUNABLE}" if current else TUNABLE)
  sys.stdout.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
