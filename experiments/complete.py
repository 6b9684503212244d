r"""Finish an unfinished drawing: `python -m experiments.complete --workdir=DIR --output_dir=OUT
[--index=0 | --input=PATH[:i]] [--prefix_strokes=N | --prefix_points=N] [--z=prior|encode]`.

The given drawing (cut to its first --prefix_strokes strokes or
--prefix_points points; whole by default) is fed to the decoder point by
point, and from the state it leaves, --num (default 6) endings are sampled at
each temperature (default 0.3,0.6), as in the paper's completions. One grid
row per input and temperature: the prefix, then the endings, the prefix in
black and the sampled continuation in red. Writes OUT/complete.{svg,png,npz}.
"""
import numpy as np
from absl import app, flags

from experiments import common
from sketch_vae import sample
from sketch_vae import strokes as strokes_lib
from sketch_vae.render_grid import Highlight

flags.adopt_module_key_flags(common)
flags.DEFINE_integer("prefix_strokes", None, "Keep only the first N strokes of each input.")
flags.DEFINE_integer("prefix_points", None, "Keep only the first N points of each input.")
flags.DEFINE_enum("z", "prior", ["prior", "encode"],
                  "Conditional models only: prior draws each ending's z from N(0, I), so the "
                  "endings vary in what they become; encode uses z of the (cut) prefix itself, "
                  "so they continue the drawing the model thinks it is. Decoder-only models "
                  "have no z.")
FLAGS = flags.FLAGS


def cut(strokes_Nx3: np.ndarray) -> np.ndarray:
  """The first --prefix_strokes strokes (up to their pen lifts) or --prefix_points points."""
  given = [v for v in (FLAGS.prefix_strokes, FLAGS.prefix_points) if v is not None]
  if len(given) == 2 or min(given, default=1) < 1:
    raise ValueError("give one of --prefix_strokes or --prefix_points, at least 1")
  if FLAGS.prefix_points is not None:
    return strokes_Nx3[:FLAGS.prefix_points]
  if FLAGS.prefix_strokes is None:
    return strokes_Nx3
  ends = np.concatenate([[0], np.flatnonzero(strokes_Nx3[:, 2] > 0.5) + 1, [len(strokes_Nx3)]])
  return strokes_Nx3[:ends[min(FLAGS.prefix_strokes, len(ends) - 1)]]


def main(argv):
  del argv
  with common.clean_errors():
    model = common.load_model(needs_encoder="encode the prefix (use --z=prior)"
                              if FLAGS.z == "encode" else None)
    max_len = model.facts.max_seq_len
    inputs = [s._replace(strokes=cut(s.strokes)) for s in
              common.load_inputs(model.facts, default_index=[0])]
    for s in inputs:
      if not 0 < len(s.strokes) < max_len:
        raise ValueError(f"{s.label}: the prefix has {len(s.strokes)} points; it needs at least 1 "
                         f"and fewer than the model's N_max {max_len} to leave room for an ending")
    temps, n = common.temperatures([0.3, 0.6]), common.num(6)
    k_z, k_sample = common.keys(2)
    settings = [(s, t) for s in inputs for t in temps]
    prefix = np.stack([strokes_lib.to_stroke5(s.strokes, max_len)[1:] for s, _ in settings])
    prefix_len = [len(s.strokes) for s, _ in settings]
    if not model.spec.conditional:
      z = None
    elif FLAGS.z == "encode":
      z = np.repeat(common.encode(model, [s for s, _ in settings], k_z), n, axis=0)
    else:
      z = sample.prior_z(model.spec, k_z, len(settings) * n)
    decoded = common.decode(model, k_sample, [t for _, t in settings for _ in range(n)], z,
                            prefix=np.repeat(prefix, n, axis=0),
                            prefix_len=np.repeat(prefix_len, n))
    rows = [[s.strokes] + [Highlight(d, len(s.strokes)) for d in endings]
            for (s, _), endings in zip(settings, common.in_rows(decoded, n))]
    common.save("complete", rows, model.facts,
                row_labels=[f"{s.label} {common.temperature_label(t)}" for s, t in settings],
                col_labels=["given"] + [f"ending {j + 1}" for j in range(n)])


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output_dir"])
  app.run(main)
