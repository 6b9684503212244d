"""Benchmarks: training-step and sampling throughput against the machine's measured matmul peak.

Configurations (issue 8; the first is the original's default model):
  A  LSTM 256 bidirectional encoder, LSTM 512 decoder, z 128, M 20
  B  the same with layer-norm cells
  C  the paper's large model: HyperLSTM 2048 decoder (hyper 256, embedding 32),
     layer-norm encoder 512 per direction
all with batch 100 and sequences padded to 250 with lengths drawn from 30..250.
"""
from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import config as config_lib
from sketch_vae import flops as flops_lib
from sketch_vae import heap, mdn, model, parallel, sample, train

CONFIGS = {
    "A": dict(enc_model="lstm", dec_model="lstm", enc_rnn_size=256, dec_rnn_size=512),
    "B": dict(enc_model="layer_norm", dec_model="layer_norm", enc_rnn_size=256, dec_rnn_size=512),
    "C": dict(enc_model="layer_norm", dec_model="hyper", enc_rnn_size=512, dec_rnn_size=2048,
              hyper_num_units=256, hyper_embedding_size=32),
}


# Heap reserved before timing, in XLA temporary blocks of one step (heap.py).
HEAP_RESERVE_STEPS = 3


def make_config(name: str, *, batch_size=100, max_seq_len=250, **overrides) -> config_lib.Config:
  if name not in CONFIGS:
    raise ValueError(f"unknown benchmark config {name!r}; choose one of {sorted(CONFIGS)}")
  return config_lib.PRESETS["original"].replace(
      z_size=128, num_mixture=20, batch_size=batch_size, max_seq_len=max_seq_len,
      **{**CONFIGS[name], **overrides})


def synthetic_batch(batch_size: int, max_seq_len: int, seed: int = 0, min_len: int = 30) -> dict:
  """Random sketch-like stroke-5 batch with lengths uniform in [min_len, max_seq_len]."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min(min_len, max_seq_len), max_seq_len + 1, batch_size).astype(np.int32)
  x = np.zeros((batch_size, max_seq_len + 1, 5), np.float32)
  x[:, 0, 2] = 1.0
  for i, n in enumerate(lengths):
    x[i, 1:n + 1, :2] = rng.normal(size=(n, 2))
    lift = rng.random(n) < 0.2
    x[i, 1:n + 1, 2], x[i, 1:n + 1, 3] = ~lift, lift
    x[i, n + 1:, 4] = 1.0
  return {"strokes": x, "lengths": lengths, "rows": np.arange(batch_size, dtype=np.int32)}


def _time(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def matmul_peak(n: int | None = None, dtype=jnp.float32, repeats: int = 10) -> float:
  """Measured GFLOP/s of a large square matmul on the default device (best of `repeats`).

  n = 2048 on CPU (about 50 ms a product on 2 cores), 8192 elsewhere (a GPU does a
  2048^3 product in about 0.1 ms, where launch overhead would dominate). Float32 runs
  at "highest" precision: JAX's default lets NVIDIA GPUs use TF32 for float32 products,
  which is not a float32 peak (the model's own float32 steps do use the default).
  """
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  precision = "highest" if dtype == jnp.float32 else None
  f = jax.jit(lambda a, b: jnp.dot(a, b, precision=precision, preferred_element_type=jnp.float32))
  best = min(_time(lambda: f(a, b), 2, repeats))
  return 2 * n ** 3 / best / 1e9


def peak_host_memory_mb() -> float:
  """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_memory_mb():
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2 ** 20


def encoder_skipped_gflop(config: config_lib.Config, batch: dict) -> float:
  """Counted matmul GFLOP that the CPU kernels do not do: the LSTM encoder's sequence
  kernel skips rows whose sketch has ended (fused_lstm.py), so of its recurrence's
  products (forward and backward) only the fraction sum(lengths) / (B * T) runs,
  up to the rounding of rows to the micro-kernel's block. 0 where nothing is skipped
  (other encoder cells, kernels off, or not on CPU)."""
  from sketch_vae import native, rnn  # late: the kernels are built on first use
  spec = config.model
  if not (spec.enc_model == "lstm" and spec.fused_lstm and jax.default_backend() == "cpu"
          and native.cpu_kernels_available()):
    return 0.0
  params = model.init(spec, jax.random.key(0))["encoder"]["rnn"]
  xs = jnp.swapaxes(jnp.asarray(batch["strokes"])[:, 1:], 0, 1)
  lengths = jnp.asarray(batch["lengths"])
  recurrence = lambda p: jnp.sum(rnn.bidirectional_final(spec.enc_cell, p, xs, lengths,
                                                         matmul_dtype=spec.dtype))
  counted = flops_lib.matmul_flops(jax.grad(recurrence), params) / 1e9
  live = float(np.sum(batch["lengths"])) / (len(batch["lengths"]) * (batch["strokes"].shape[1] - 1))
  return counted * (1.0 - live)


def bench_train(config: config_lib.Config, *, warmup=2, repeats=5, num_devices=1) -> dict:
  """Seconds per pmapped training step on a synthetic batch (donated state, no host sync
  inside the timed region except the final block)."""
  t = config.train
  batch = synthetic_batch(t.batch_size, t.max_seq_len)
  state = train.create_state(config, jax.random.key(0))
  step_fn = lambda s, b: train.train_step(config, s, b, jax.random.key(1))
  gflop = flops_lib.matmul_flops(step_fn, state, batch) / 1e9
  executed = gflop - encoder_skipped_gflop(config, batch)
  lay = parallel.layout(t.batch_size, num_devices)
  p_step = parallel.pmap(lambda s, b, k: train.train_step(config, s, b, k, axis_name=parallel.AXIS), lay)
  box = {"state": parallel.replicate(state, lay)}
  sharded = jax.tree.map(jnp.asarray, parallel.shard(batch, lay))
  key = jax.random.key(1)
  t0 = time.perf_counter()
  p_step = p_step.lower(box["state"], sharded, key).compile()
  box["state"], m = p_step(box["state"], sharded, key)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  # With the reuse-memory malloc tunables, take the heap's growth now rather than
  # in timed steps (see heap.py; a no-op otherwise).
  reserved = heap.reserve(HEAP_RESERVE_STEPS * heap.step_temp_bytes(p_step))

  def one():
    box["state"], metrics = p_step(box["state"], sharded, key)
    return metrics

  times = _time(one, warmup, repeats)
  med = statistics.median(times)
  peak = matmul_peak(dtype=jnp.float32)
  out = {"what": "train", "median_s": med, "min_s": min(times), "times_s": times,
         "compile_s": compile_s, "sketches_per_sec": t.batch_size / med, "matmul_gflop": gflop,
         "achieved_gflops": gflop / med, "fp32_matmul_peak_gflops": peak,
         "ratio_to_fp32_peak": gflop / med / peak, "floor_s_at_fp32_peak": gflop / peak,
         # The same for the products that run (padding the kernels skip left out).
         "executed_matmul_gflop": executed, "achieved_gflops_executed": executed / med,
         "ratio_executed_to_fp32_peak": executed / med / peak,
         "peak_host_memory_mb": peak_host_memory_mb(), "peak_device_memory_mb": device_memory_mb(),
         "heap_reserved_mb": reserved / 2 ** 20}
  if config.model.matmul_dtype == "bfloat16":
    out["bf16_matmul_peak_gflops"] = matmul_peak(dtype=jnp.bfloat16)
  return out


def bench_sample(config: config_lib.Config, *, num=1000, warmup=1, repeats=3,
                 trained_model: str = "cat", temperature: float = 0.5) -> dict:
  """Sketches per second: a batch of `num` sketches, one sketch, and the original's loop.

  Two models. The config's untrained model, with the end of sketch made impossible, so
  every sketch costs max_seq_len steps (the worst case, and the work the original does).
  And `trained_model` (a bundled pretrained decoder, "" for none), whose sketches end
  where they end, as users' do: the batch sampler stops rows at their end and shrinks
  the batch, while the original's sampler still runs max_seq_len steps per sketch.
  """
  spec, L = config.model, config.train.max_seq_len
  params = train.create_state(config, jax.random.key(0)).params
  # Untrained models end early at random; force full length so every sketch costs L steps.
  result = {"what": "sample", "steps_per_sketch": L, "batch": num, "temperature": temperature,
            **_sample_rates(spec, _never_end(params), num, L, temperature, warmup, repeats)}
  if trained_model:
    from sketch_vae import browser, pretrained
    m = browser.read(pretrained.resolve_model(trained_model))
    trained_spec = dataclasses.replace(m.spec, matmul_dtype=spec.matmul_dtype)
    rates = _sample_rates(trained_spec, m.params, num, L, temperature, warmup, repeats)
    result.update({f"trained_{k}": v for k, v in rates.items()}, trained_model=trained_model)
  result.update(fp32_matmul_peak_gflops=matmul_peak(dtype=jnp.float32),
                peak_host_memory_mb=peak_host_memory_mb())
  return result


def _sample_rates(spec, params, num: int, L: int, temperature: float, warmup: int,
                  repeats: int) -> dict:
  z = sample.prior_z(spec, jax.random.key(1), num)
  temps = jnp.full((num,), temperature, jnp.float32)
  batch = lambda: sample.sample_batch(spec, params, jax.random.key(2), temps, z=z, max_len=L)
  t_batch = _time(lambda: batch().strokes, warmup, repeats)
  one = lambda: sample.sample_batch(spec, params, jax.random.key(3), temps[:1],
                                    z=None if z is None else z[:1], max_len=L).strokes
  t_one = _time(one, warmup, max(repeats, 5))
  loop = _host_loop_sampler(spec, params, L, temperature)
  t_loop = _time(lambda: loop(z), 1, 2)
  return {"batch_median_s": statistics.median(t_batch),
          "batch_sketches_per_sec": num / statistics.median(t_batch),
          "batch_mean_length": float(np.mean(np.asarray(batch().length))),
          "one_median_s": statistics.median(t_one), "one_sketches_per_sec": 1 / statistics.median(t_one),
          "host_loop_median_s": statistics.median(t_loop),
          "host_loop_sketches_per_sec": 1 / statistics.median(t_loop),
          "batch_vs_host_loop": statistics.median(t_loop) * num / statistics.median(t_batch)}


def _host_loop_sampler(spec, params, max_len: int, temperature: float):
  """The original's sampler structure (model.py `sample`): one decoder step per host
  call, the mixture sampled in NumPy at the temperature, one sketch at a time, max_len
  steps whether or not the sketch has ended (the original has no early exit). A
  stand-in for the original TensorFlow sampler, which we cannot run here (TF1 with
  tf.contrib)."""
  cell, dec = spec.dec_cell, params["decoder"]

  @jax.jit
  def step(carry, prev, z):
    x = prev if z is None else jnp.concatenate([prev, z])
    carry, h = cell.step(dec["rnn"], carry, x)
    mix = mdn.split(h @ dec["out_w"] + dec["out_b"])
    return carry, jnp.exp(mix.log_pi), mix.mu_x, mix.mu_y, jnp.exp(mix.log_sigma_x), \
        jnp.exp(mix.log_sigma_y), mix.rho, jax.nn.softmax(mix.pen_logits)

  def run(z_all):
    rng = np.random.default_rng(0)
    z = None if z_all is None else z_all[0]
    carry = model.initial_carry(spec, params, z, ())
    prev = np.array([0, 0, 1, 0, 0], np.float32)
    out = np.zeros((max_len, 5), np.float32)
    for t in range(max_len):
      carry, pi, mx, my, sx, sy, rho, pen = jax.device_get(step(carry, prev, z))
      j = rng.choice(len(pi), p=_tempered(pi, temperature))
      sx_j, sy_j = sx[j] * temperature, sy[j] * temperature  # the original's sigma scaling
      cov = [[sx_j ** 2, rho[j] * sx_j * sy_j], [rho[j] * sx_j * sy_j, sy_j ** 2]]
      dx, dy = rng.multivariate_normal([mx[j], my[j]], cov)
      prev = np.zeros(5, np.float32)
      prev[:2] = dx, dy
      prev[2 + rng.choice(3, p=_tempered(pen, temperature))] = 1.0
      out[t] = prev
    return out

  return run


def _tempered(p, temperature: float):
  """The original's adjust_temp: p ** (1 / T), normalised, computed in log space."""
  logp = np.log(np.maximum(p.astype(np.float64), 1e-300)) / temperature
  q = np.exp(logp - logp.max())
  return q / q.sum()


def _never_end(params):
  """Output bias that makes p3 (end of sketch) vanishingly unlikely."""
  params = jax.tree.map(lambda a: a, params)
  b = params["decoder"]["out_b"]
  params["decoder"]["out_b"] = b.at[2].set(-50.0)
  return params
