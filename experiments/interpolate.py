r"""Walk the latent space between two sketches: `python -m experiments.interpolate
--workdir=DIR --output_dir=OUT [--index=0,1 | --input=A --input=B] [--method=slerp] [--steps=8]`.

Encodes the two inputs and decodes --steps latents from z(a) to z(b)
inclusive, by slerp (under a Gaussian prior its points keep a typical norm; White
2016, "Sampling generative networks") and/or lerp. One grid row per method and temperature (default
0.1, low so that the path reads; or --greedy): input a, the decoded path,
input b. Every cell samples with the same key, so neighbours differ only by z.
Needs a VAE. Writes OUT/interpolate.{svg,png,npz}.
"""
import numpy as np
from absl import app, flags

from experiments import common
from sketch_vae import sample

flags.adopt_module_key_flags(common)
flags.DEFINE_list("method", ["slerp"], "slerp, lerp, or both (one row each).")
flags.DEFINE_integer("steps", 8, "Latents on the path, both ends included (at least 2).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  with common.clean_errors():
    if FLAGS.steps < 2 or not set(FLAGS.method) <= {"lerp", "slerp"} or not FLAGS.method:
      raise ValueError(f"need --steps >= 2 and --method in lerp, slerp; got {FLAGS.steps}, "
                       f"{FLAGS.method}")
    model = common.load_model(needs_encoder="interpolate between sketches")
    a, b = common.load_inputs(model.facts, default_index=[0, 1], count=2)
    temps = common.temperatures([0.1])
    k_z, k_sample = common.keys(2)
    z_a, z_b = common.encode(model, [a, b], k_z)
    settings = [(m, t) for m in FLAGS.method for t in temps]
    paths = [sample.interpolate(z_a, z_b, FLAGS.steps, m) for m, _ in settings]
    decoded = common.decode(model, k_sample, [t for _, t in settings for _ in range(FLAGS.steps)],
                            np.concatenate(paths), shared_key=True)
    rows = [[a.strokes] + path + [b.strokes] for path in common.in_rows(decoded, FLAGS.steps)]
    fractions = [f"{i / (FLAGS.steps - 1):.2g}" for i in range(FLAGS.steps)]
    common.save("interpolate", rows, model.facts,
                row_labels=[f"{m} {common.temperature_label(t)}" for m, t in settings],
                col_labels=[a.label] + fractions + [b.label])


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output_dir"])
  app.run(main)
