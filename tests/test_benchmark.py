"""The benchmark launcher end to end at small sizes (its report is consistent with itself and
with the FLOP counter), and the original-shaped host-loop sampler's temperature.

No timing is asserted: speed is shown by the printed figures (BUILD_NOTES), not by tests.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import hugepages
from sketch_vae import benchmark, flops
from conftest import REPO


def run_benchmark(*args, reuse="off", devices=1) -> dict:
  cmd = [sys.executable, "-m", "experiments.benchmark", "--json", f"--reuse_memory={reuse}",
         f"--num_devices={devices}", *args]
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "GLIBC_TUNABLES", hugepages._MARK)}
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def config_a_gflop(B, T, He=256, Hd=512, Z=128, Y=123, I=5):
  """Config A's matmul GFLOP per training step, by hand -> (total, encoder recurrence).

  Encoder, per direction and step: the product [B, I + He] x [I + He, 4He] forward,
  dh = dg W_h^T and the weight gradient [I + He, B] x [B, 4He] backward. Decoder the same
  with K = I + Hd (z is projected once per sequence). Forward, input- and weight-gradient
  products once each for the z projection, the initial state, mu / sigma and the head.
  """
  enc = 2 * T * 2 * B * 4 * He * (2 * (I + He) + He)
  dec = T * 2 * B * 4 * Hd * (2 * (I + Hd) + Hd)
  once = 3 * 2 * B * (Z * 4 * Hd + Z * 2 * Hd + 2 * 2 * He * Z)
  head = 3 * 2 * B * T * Hd * Y
  return (enc + dec + once + head) / 1e9, enc / 1e9


def test_config_a_count_by_hand():
  assert config_a_gflop(100, 250)[0] == pytest.approx(247.7385728, rel=1e-12)  # BUILD_NOTES


@pytest.mark.parametrize("reuse,devices", [("off", 1), ("on", 1), ("on", 2)])
def test_train_report_is_consistent_and_counts_the_steps_flops(reuse, devices):
  # Two fake CPU devices: the ahead-compiled pmapped step and the reserve work there too.
  r = run_benchmark("--config=A", "--what=train", "--batch_size=4", "--max_seq_len=20",
                    "--repeats=3", "--warmup=1", reuse=reuse, devices=devices)
  config = benchmark.make_config("A", batch_size=4, max_seq_len=20)
  from sketch_vae import train
  state = train.create_state(config, jax.random.key(0))
  batch = benchmark.synthetic_batch(4, 20)
  want = flops.matmul_flops(lambda s, b: train.train_step(config, s, b, jax.random.key(1)),
                            state, batch) / 1e9
  assert r["matmul_gflop"] == pytest.approx(want, rel=1e-9)
  total, encoder = config_a_gflop(4, 20)
  assert r["matmul_gflop"] == pytest.approx(total, rel=1e-9)
  # The CPU kernel runs the encoder's products for live rows only.
  live = batch["lengths"].sum() / (4 * 20)
  assert r["executed_matmul_gflop"] == pytest.approx(total - encoder * (1 - live), rel=1e-9)
  assert r["ratio_executed_to_fp32_peak"] == pytest.approx(
      r["executed_matmul_gflop"] / r["median_s"] / r["fp32_matmul_peak_gflops"])
  assert len(r["times_s"]) == 3 and r["min_s"] == min(r["times_s"])
  assert r["median_s"] == pytest.approx(float(np.median(r["times_s"])))
  assert r["sketches_per_sec"] == pytest.approx(4 / r["median_s"])
  assert r["achieved_gflops"] == pytest.approx(r["matmul_gflop"] / r["median_s"])
  assert r["ratio_to_fp32_peak"] == pytest.approx(r["achieved_gflops"] / r["fp32_matmul_peak_gflops"])
  assert r["fp32_matmul_peak_gflops"] > 1.0 and r["peak_host_memory_mb"] > 100
  assert (r["config"], r["batch_size"], r["max_seq_len"], r["platform"]) == ("A", 4, 20, "cpu")
  tunables = r["glibc_tunables"].split(":")
  assert len(tunables) == len(set(tunables))  # the re-exec adds each setting once
  if reuse == "on" and sys.platform.startswith("linux"):
    assert set(hugepages.REUSE) <= set(tunables)
    assert r["heap_reserved_mb"] > 0  # three of the step's XLA temporary blocks
  else:
    assert r["heap_reserved_mb"] == 0


def test_sample_report_forces_full_length_and_lets_the_trained_model_end():
  r = run_benchmark("--config=A", "--what=sample", "--num=24", "--max_seq_len=250",
                    "--repeats=2", "--temperature=0.5")
  assert r["batch_mean_length"] == 250.0  # the untrained model cannot end: the worst case
  # The bundled cat ends its sketches after about 120 steps at this temperature.
  assert 60 < r["trained_batch_mean_length"] < 200
  for p in ("", "trained_"):
    assert r[p + "batch_sketches_per_sec"] == pytest.approx(24 / r[p + "batch_median_s"])
    assert r[p + "host_loop_sketches_per_sec"] == pytest.approx(1 / r[p + "host_loop_median_s"])
    assert r[p + "batch_vs_host_loop"] == pytest.approx(
        r[p + "batch_sketches_per_sec"] / r[p + "host_loop_sketches_per_sec"])
  assert r["trained_model"] == "cat" and r["temperature"] == 0.5
  assert r["fp32_matmul_peak_gflops"] > 1.0


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0])
def test_host_loop_tempering_is_the_originals_adjust_temp(temperature):
  p = np.array([0.5, 0.3, 0.15, 0.05, 1e-30])
  want = p ** (1 / temperature) / np.sum(p ** (1 / temperature))  # float64, no underflow here
  np.testing.assert_allclose(benchmark._tempered(p, temperature), want, rtol=1e-10, atol=1e-300)
  assert benchmark._tempered(np.array([1.0, 0.0]), 0.5)[1] == 0.0  # log(0) guarded, no NaN
