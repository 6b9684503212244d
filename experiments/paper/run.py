r"""The paper's KL-weight sweep on real Quick Draw classes: train, evaluate, tabulate, draw.

  python -m experiments.paper.run --datasets=cat,pig,cat+pig --preset=small \
      --num_steps=3000 --root=runs/paper [--parallel=N] [--only_report]

For every dataset (a class, or classes joined by "+", trained on the
concatenation of their files, as `sketch_vae.data.load` does) and every
setting (w_KL = 1.00, 0.50, 0.25 and the decoder-only model, the rows of the
paper's table 1), one model is trained in its own workdir
`<root>/<dataset>/<setting>` with `sketch_vae.train.fit`, then scored on its
test split exactly as `experiments.evaluate` does (`sketch_vae.evaluation`,
best-by-validation checkpoint, seed 0). `<root>/results.md` and
`results.json` hold the table, `<root>/figures/` the pictures (report.py,
figures.py).

Interrupted sweeps resume: running the same command again skips every model
with a `done.json` (written after its test evaluation) and resumes the others
from their latest checkpoint. A larger `--num_steps` continues finished
models. `--parallel=N` trains N models at once, each in a subprocess of this
launcher (`--worker`), with its console output in `<workdir>/train.log`; on
one GPU each gets 1/N of its memory. Sizes: `--preset` then `--hparams`
(e.g. `--hparams=dec_rnn_size=1024,kl_decay_rate=0.9995`).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

from sketch_vae.config import PRESETS

from experiments.paper import make_datasets
from experiments.paper.sweep import SETTINGS, Sweep, run, train_job

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["cat", "pig", "cat+pig"], "Classes, or classes joined by +.")
flags.DEFINE_list("settings", list(SETTINGS), "KL weights w_KL, and/or 'decoder' (decoder-only).")
flags.DEFINE_string("root", "runs/paper", "One workdir per model below this; results here.")
flags.DEFINE_string("data_dir", str(make_datasets.DEFAULT_OUTPUT), "Per-class <class>.npz files "
                    "(missing ones are made with experiments.paper.make_datasets).")
flags.DEFINE_enum("preset", "small", sorted(PRESETS), "Starting configuration.")
flags.DEFINE_integer("num_steps", None, "Training steps per model (default: the preset's).")
flags.DEFINE_string("hparams", "", "Overrides name=value,... (any Config field).")
flags.DEFINE_integer("parallel", 1, "Models trained at once (1: in this process).")
flags.DEFINE_integer("num_devices", 0, "Local devices per model (0 = all).")
flags.DEFINE_integer("eval_batch_size", 100, "Evaluation batch (as experiments.evaluate).")
flags.DEFINE_bool("only_report", False, "Train nothing: table and figures from the workdirs.")
flags.DEFINE_bool("figures", True, "Draw the figures after the table.")
flags.DEFINE_bool("reevaluate", False, "Score every model again (not the result in done.json).")
flags.DEFINE_string("worker", None, "Internal: train only DATASET:SETTING (for --parallel).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # Orbax warns at every read-only restore
  sweep = Sweep(datasets=tuple(FLAGS.datasets), settings=tuple(FLAGS.settings), root=FLAGS.root,
                data_dir=FLAGS.data_dir, preset=FLAGS.preset, num_steps=FLAGS.num_steps,
                hparams=FLAGS.hparams, parallel=FLAGS.parallel, num_devices=FLAGS.num_devices,
                eval_batch_size=FLAGS.eval_batch_size, figures=FLAGS.figures,
                reevaluate=FLAGS.reevaluate)
  try:
    if FLAGS.worker:
      from sketch_vae.train import NonFiniteLoss
      matches = [j for j in sweep.jobs() if f"{j.dataset}:{j.setting}" == FLAGS.worker]
      if not matches:
        raise ValueError(f"--worker={FLAGS.worker} is not a DATASET:SETTING of this sweep")
      try:
        train_job(matches[0], sweep)
      except NonFiniteLoss as e:
        raise ValueError(str(e)) from None
      return 0
    return run(sweep, only_report=FLAGS.only_report)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  app.run(main)
