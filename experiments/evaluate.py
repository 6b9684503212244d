r"""Evaluate a trained model: `python -m experiments.evaluate --workdir=DIR [--data=PATH] --split=test`.

Prints one JSON object with the means over the whole split of recon_loss,
offset_loss, pen_loss (over all N_max steps, the paper's and the training
definition), pen_loss_masked (over the sketch only), kl_loss (floored),
kl_loss_raw, and the number of sketches. The data are normalised with the
model's own scale factor and padded to its N_max; longer sketches are dropped
and counted. Deterministic for a seed (z is sampled, as in the original).

`--rescale` multiplies the data's offsets before scoring: for pretrained
models whose drawings lived in another pixel space than the data (the browser
models' scale factors, 61 to 94, are about 2.5x the offset spread of 0..255
Quick Draw files). `auto` picks the factor that makes the offsets' spread over
the data's train split (or the scored split, if train is empty) equal the
model's scale factor.
"""
import json
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training (or imported) workdir.")
flags.DEFINE_string("data", None, "Dataset(s) to evaluate on; default: the run's own --data.")
flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Which split.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
flags.DEFINE_integer("batch_size", 100, "Evaluation batch (must divide over the devices).")
flags.DEFINE_integer("num_devices", 0, "Local devices to use (0 = all).")
flags.DEFINE_integer("seed", 0, "Seed for z's eps.")
flags.DEFINE_string("rescale", "1", "Multiply the data's offsets by this (finite, > 0), or "
                    "'auto' (see above).")


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores
  from sketch_vae import checkpoint, data, evaluation
  try:
    config, facts, params, step = checkpoint.load_model(FLAGS.workdir, FLAGS.checkpoint)
    paths = FLAGS.data or evaluation.training_data(FLAGS.workdir)
    dataset = data.load(paths, facts=facts)
    rescale = evaluation.rescale_offsets(dataset, FLAGS.split, FLAGS.rescale)
    result = evaluation.evaluate_split(config, params, dataset, FLAGS.split,
                                       batch_size=FLAGS.batch_size, num_devices=FLAGS.num_devices,
                                       seed=FLAGS.seed, rescale=rescale)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  result.update(checkpoint_step=step, split=FLAGS.split, data=paths, rescale=rescale)
  print(json.dumps(result))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
