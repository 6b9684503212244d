r"""Export a workdir as a sketch-rnn-js / magenta-js model: `python -m experiments.export_js
--workdir=DIR --output=model.json [--checkpoint=best]`.

LSTM models only (the format has no layer-norm or hyper cells). Weights must
fit int16's +-10: larger ones are an error unless --clip, which clips and
counts them. info gets mode, version, name, max_seq_len, scale_factor, and
r_loss / kl_loss from the workdir's logged evaluation at that checkpoint (or
from the source file's info, for an imported model not trained since).
"""
import json
import sys
import warnings

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training (or imported) workdir.")
flags.DEFINE_string("output", None, "The model file to write (e.g. cat.gen.json).")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
flags.DEFINE_string("name", None, "info.name (default: the imported model's, or the workdir's name).")
flags.DEFINE_bool("clip", False, "Clip weights beyond +-10 (counted) instead of refusing.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores
  from sketch_vae import pretrained
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      result = pretrained.export_workdir(FLAGS.workdir, FLAGS.output, checkpoint=FLAGS.checkpoint,
                                         name=FLAGS.name, clip=FLAGS.clip)
  except (ValueError, OSError) as e:
    sys.exit(f"export_js: error: {e}")
  for w in caught:
    print(f"export_js: warning: {w.message}", file=sys.stderr)
  print(f"wrote {result.path} from step {result.step}: {json.dumps(result.info)}"
        + (f"; clipped {result.clipped} weight(s)" if result.clipped else ""))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output"])
  app.run(main)
