"""What training would see in sketch-rnn `.npz` files: counts, drops, scale factor.

  python -m experiments.inspect_data --data=a.npz,b.npz [--max_seq_len=250] [--json]

Loads exactly as training does (`sketch_vae.data.load`), so the numbers are the
ones a run would use: per split the sketches read, kept and dropped (by reason),
the longest and mean kept length, and the scale factor of the training split.
"""
import json
import sys

from absl import app
from absl import flags

from sketch_vae import data
from sketch_vae import quickdraw

flags.DEFINE_list("data", None, "Comma-separated sketch-rnn .npz files (concatenated).")
flags.DEFINE_integer("max_seq_len", 250, "Sketches longer than this are dropped.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.mark_flag_as_required("data")
FLAGS = flags.FLAGS


def summarize(dataset: data.Dataset, max_seq_len: int) -> dict:
  splits = {}
  for name in data.SPLITS:
    r = dataset.report[name]
    splits[name] = dict(read=r.read, kept=r.kept,
                        dropped=dict(too_long=r.dropped_too_long, empty=r.dropped_empty),
                        longest=r.longest, mean_length=r.mean_length)
  return dict(sources=dataset.sources, max_seq_len_limit=max_seq_len,
              scale_factor=dataset.facts.scale_factor, max_seq_len=dataset.facts.max_seq_len,
              splits=splits)


def table(summary: dict) -> str:
  rows = [f"sources: {', '.join(summary['sources'])}",
          f"scale factor {summary['scale_factor']:.4f}, N_max {summary['max_seq_len']} "
          f"(limit {summary['max_seq_len_limit']})",
          f"{'split':<6} {'read':>7} {'kept':>7} {'too_long':>9} {'empty':>6} "
          f"{'longest':>8} {'mean':>8}"]
  for name, s in summary["splits"].items():
    rows.append(f"{name:<6} {s['read']:>7} {s['kept']:>7} {s['dropped']['too_long']:>9} "
                f"{s['dropped']['empty']:>6} {s['longest']:>8} {s['mean_length']:>8.2f}")
  return "\n".join(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    dataset = data.load(FLAGS.data, max_seq_len=FLAGS.max_seq_len)
  except (data.DataError, quickdraw.QuickDrawError) as e:
    print(f"inspect_data: error: {e}", file=sys.stderr)
    return 1
  summary = summarize(dataset, FLAGS.max_seq_len)
  print(json.dumps(summary) if FLAGS.json else table(summary))
  return 0


if __name__ == "__main__":
  app.run(main)
