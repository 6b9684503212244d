"""Quick Draw ndjson / JSON-list files -> a sketch-rnn `.npz` plus a JSON report.

  python -m experiments.prepare_data --input=cat.ndjson --output=/tmp/cat.npz

Split sizes are counts ("--valid=2500") or fractions ("--valid=0.05", any value
with a dot). Without them the official proportions 70000 : 2500 : 2500 are
used, with train taking whatever valid and test leave. The report, with counts
per drop reason and the sha256 of every input, is written as OUT.json.
"""
import sys

from absl import app
from absl import flags

from sketch_vae import quickdraw, quickdraw_dataset

flags.DEFINE_list("input", None, "Comma-separated .ndjson (simplified or raw) or .json files.")
flags.DEFINE_string("output", None, "Output .npz; the report goes beside it as .json.")
flags.DEFINE_float("epsilon", 2.0, "RDP epsilon per stroke (0..255 grid units).")
flags.DEFINE_bool("resample", True, "Raw drawings: resample at 1 pixel spacing before RDP.")
flags.DEFINE_float("raw_size", 255.0, "Raw drawings: scale the larger side to this; 0 keeps "
                   "the raw pixels (as hardmaru's raw-ndjson-to-npz notebook).")
flags.DEFINE_bool("start_at_origin", False, "Set each sketch's first offset to (0, 0) "
                  "(the notebook's choice); by default it is the start point.")
flags.DEFINE_string("train", None, "Train size: a count, or a fraction (default: the rest).")
flags.DEFINE_string("valid", None, "Valid size: a count or a fraction (default 2500/75000).")
flags.DEFINE_string("test", None, "Test size: a count or a fraction (default 2500/75000).")
flags.DEFINE_integer("seed", 0, "Seed of the train / valid / test permutation.")
flags.DEFINE_bool("recognized_only", False, "Keep only drawings with recognized=true.")
flags.DEFINE_bool("dedup", True, "Drop duplicates (same key_id, or same strokes).")
flags.DEFINE_bool("strict", False, "Stop at the first bad drawing instead of skipping it.")
flags.DEFINE_integer("max_drawings", None, "Keep at most this many drawings per input file.")
flags.mark_flags_as_required(["input", "output"])
FLAGS = flags.FLAGS


def _size(text):
  if text is None:
    return None
  return float(text) if any(c in text for c in ".eE") else int(text)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    sizes = dict(train=_size(FLAGS.train), valid=_size(FLAGS.valid), test=_size(FLAGS.test))
  except ValueError as e:
    print(f"prepare_data: error: bad split size ({e})", file=sys.stderr)
    return 1
  try:
    report = quickdraw_dataset.prepare(
        FLAGS.input, FLAGS.output, epsilon=FLAGS.epsilon, resample=FLAGS.resample,
        raw_size=FLAGS.raw_size or None, start_at_origin=FLAGS.start_at_origin,
        recognized_only=FLAGS.recognized_only, deduplicate=FLAGS.dedup, strict=FLAGS.strict,
        max_drawings=FLAGS.max_drawings, seed=FLAGS.seed, **sizes)
  except (quickdraw.QuickDrawError, OSError) as e:
    print(f"prepare_data: error: {e}", file=sys.stderr)
    return 1
  formats = report.formats
  print(f"read {report.read} drawings from {len(report.sources)} file(s); kept {report.kept} "
        f"({formats['simplified']} simplified, {formats['raw']} raw); "
        f"dropped {sum(report.dropped.values())}")
  for reason, count in sorted(report.dropped.items()):
    print(f"  dropped {count} {reason}, e.g. {report.examples[reason][0]}")
  split = report.split
  print(f"split (seed {FLAGS.seed}): train {split['train']} / valid {split['valid']} / "
        f"test {split['test']}, unused {report.unused}")
  print(f"wrote {FLAGS.output} and {FLAGS.output[:-len('.npz')]}.json")
  return 0


if __name__ == "__main__":
  app.run(main)
