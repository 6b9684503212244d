r"""Speed: `python -m experiments.benchmark --config=A|B|C --what=train|sample [--json]`.

Prints, after warm-up and over several repeats, median and min seconds per
training step, sketches per second, the step's matrix-product FLOPs, the
achieved GFLOP/s, this run's measured float32 matmul peak and the ratio (also for
the products that run: the CPU kernels skip the encoder's ended rows); for
sampling, sketches per second for a batch, for one sketch and for a host loop shaped
like the original's sampler, on the config's untrained model forced to full length and
on a bundled pretrained decoder whose sketches end at their own lengths.
"""
import json
import os
import platform

from absl import app, flags, logging

from experiments import hugepages

FLAGS = flags.FLAGS
flags.DEFINE_enum("reuse_memory", "auto", ["auto", "on", "off"],
                  "Re-run once with glibc malloc tunables that keep and reuse the step's large "
                  "blocks (see experiments/hugepages.py). auto: on for config A, where it measured "
                  "faster; off for B and C (C measured slower with it: 30.5 s against 27.8 s).")
flags.DEFINE_boolean("huge_pages", True, "Ask malloc for transparent huge pages "
                     "(GLIBC_TUNABLES glibc.malloc.hugetlb=1).")
flags.DEFINE_enum("config", "A", ["A", "B", "C"], "A: LSTM (original default); B: layer norm; C: paper's large.")
flags.DEFINE_enum("what", "train", ["train", "sample"], "Training step or sampling.")
flags.DEFINE_boolean("json", False, "Print one JSON object.")
flags.DEFINE_enum("matmul_dtype", "float32", ["float32", "bfloat16"], "Matmul operand dtype.")
flags.DEFINE_integer("batch_size", 100, "Batch.")
flags.DEFINE_integer("max_seq_len", 250, "Padded length (steps per sequence).")
flags.DEFINE_boolean("remat", False, "Rematerialise the scans in the backward pass.")
flags.DEFINE_boolean("recurrent_dropout", True, "Recurrent dropout on (the original's default).")
flags.DEFINE_integer("repeats", 5, "Timed repeats.")
flags.DEFINE_integer("warmup", 2, "Untimed runs after compilation.")
flags.DEFINE_integer("num", 1000, "Sampling: sketches in the batch.")
flags.DEFINE_string("trained_model", "cat", "Sampling: also time this bundled pretrained decoder "
                    "(its sketches end at their own lengths); '' to skip.")
flags.DEFINE_float("temperature", 0.5, "Sampling temperature.")
flags.DEFINE_integer("num_devices", 1, "Devices for the training step.")


def main(argv):
  del argv
  reuse = FLAGS.reuse_memory == "on" or (FLAGS.reuse_memory == "auto" and FLAGS.config == "A")
  hugepages.reexec_with_malloc_tunables(reuse, FLAGS.huge_pages)
  logging.set_verbosity(logging.ERROR)
  import jax
  from sketch_vae import benchmark
  config = benchmark.make_config(FLAGS.config, batch_size=FLAGS.batch_size,
                                 max_seq_len=FLAGS.max_seq_len, matmul_dtype=FLAGS.matmul_dtype,
                                 remat=FLAGS.remat, use_recurrent_dropout=FLAGS.recurrent_dropout)
  if FLAGS.what == "train":
    result = benchmark.bench_train(config, warmup=FLAGS.warmup, repeats=FLAGS.repeats,
                                   num_devices=FLAGS.num_devices)
  else:
    result = benchmark.bench_sample(config, num=FLAGS.num, repeats=max(1, FLAGS.repeats // 2),
                                    trained_model=FLAGS.trained_model,
                                    temperature=FLAGS.temperature)
  if FLAGS.what == "train":  # sampling reports its own batch ("batch", --num)
    result.update(batch_size=FLAGS.batch_size, remat=FLAGS.remat)
  result.update(config=FLAGS.config, matmul_dtype=FLAGS.matmul_dtype, max_seq_len=FLAGS.max_seq_len,
                device=str(jax.devices()[0].device_kind), platform=jax.default_backend(),
                jax=jax.__version__, machine=platform.processor() or platform.machine(),
                glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
  if result["platform"] == "cpu":  # a failed kernel build falls back to XLA: say so
    from sketch_vae import native
    status = native.kernel_status()
    result.update(cpu_kernels=status["loaded"], cpu_kernels_reason=status["reason"][-200:])
  if FLAGS.json:
    print(json.dumps(result))
    return
  width = max(map(len, result))
  for k, v in result.items():
    if isinstance(v, float):
      v = f"{v:.4g}"
    elif isinstance(v, list):
      v = ", ".join(f"{x:.3f}" for x in v)
    print(f"{k:>{width}}: {v}")


if __name__ == "__main__":
  app.run(main)
