"""Runs the benchmark configurations one after another in one process (saves device start-up
time on a lent GPU) and prints one JSON object per line. See experiments/benchmark.py.

Peak memory only rises within a process, so only the first run's peaks are its own: later
runs report them as `peak_host_memory_mb_so_far` / `peak_device_memory_mb_so_far` (the
largest of all runs up to it); run `experiments.benchmark` alone for one config's peak."""
import json
import sys
import time

import jax

from sketch_vae import benchmark

RUNS = [("A", "train", "float32"), ("A", "train", "bfloat16"), ("A", "sample", "float32"),
        ("C", "train", "float32"), ("C", "train", "bfloat16"), ("B", "train", "float32")]
for index, (name, what, dtype) in enumerate(RUNS[:int(sys.argv[1]) if len(sys.argv) > 1 else None]):
  t0 = time.time()
  config = benchmark.make_config(name, matmul_dtype=dtype)
  try:
    r = (benchmark.bench_train(config, warmup=2, repeats=5) if what == "train"
         else benchmark.bench_sample(config, num=1000, repeats=3))
  except Exception as e:  # keep going: one failure must not cost the rest of the lease
    r = {"error": repr(e)[:500]}
  if index > 0:
    for key in ("peak_host_memory_mb", "peak_device_memory_mb"):
      if key in r:
        r[key + "_so_far"] = r.pop(key)
  r.update(config=name, what=what, matmul_dtype=dtype, device=jax.devices()[0].device_kind,
           jax=jax.__version__, wall_s=round(time.time() - t0, 1))
  print(json.dumps(r), flush=True)
