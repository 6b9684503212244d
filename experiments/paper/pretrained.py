r"""Released browser models on our held-out drawings: `python -m experiments.paper.pretrained`.

  python -m experiments.paper.pretrained --datasets=cat,pig,cat+pig --root=runs/paper_cpu \
      [--pretrained_dir=../shared/data/pretrained]

For each dataset, the released decoder-only sketch-rnn-js model of the same
name (`cat.gen.json`, `pig.gen.json`, `catpig.gen.json`; a bundled model when
no file is found) is imported into `<root>/pretrained/<name>` and scored on the
dataset's test split, the same drawings the sweep's models are scored on, with
the code of `experiments.evaluate`: once as the data are (`rescale 1`), once
with `--rescale=auto` (the browser models were trained on drawings about 2.5x
larger than the 0..255 Quick Draw files). L_R depends on each model's scale
factor and N_max, so the table also gives the offsets' NLL per point in the
data's own pixels and the pen NLL per point, which compare across models
(`sketch_vae.evaluation.per_point`). Rows of the sweep's `results.json`, if
present, are listed beside them. Writes `<root>/pretrained.md` and `.json`.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from experiments.paper import make_datasets

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["cat", "pig", "cat+pig"], "Classes, or classes joined by +.")
flags.DEFINE_string("root", "runs/paper", "The sweep's root: results go here.")
flags.DEFINE_string("data_dir", str(make_datasets.DEFAULT_OUTPUT), "Per-class <class>.npz files.")
flags.DEFINE_string("pretrained_dir", str(make_datasets.REPO.parent / "shared" / "data" / "pretrained"),
                    "Directory of released <name>.gen.json files.")
flags.DEFINE_integer("batch_size", 100, "Evaluation batch.")

COLUMNS = (("recon_loss", "L_R (own units)", "{:.4f}"),
           ("offset_nll_per_point_px", "offset NLL / point (px)", "{:.3f}"),
           ("pen_nll_per_point", "pen NLL / point", "{:.4f}"), ("scale_factor", "scale", "{:.2f}"),
           ("max_seq_len", "N_max", "{}"), ("count", "n", "{}"))


def model_file(dataset: str, pretrained_dir: str) -> str:
  """The released model for a dataset: `<classes joined>.gen.json`, else a bundled one."""
  from sketch_vae import pretrained
  name = dataset.replace("+", "")
  path = os.path.join(pretrained_dir, f"{name}.gen.json")
  if os.path.exists(path):
    return path
  if name in pretrained.bundled_models():
    return name
  raise FileNotFoundError(f"no released model for {dataset!r}: {path} does not exist and "
                          f"{name!r} is not bundled")


def score(workdir: str, data_paths: str, rescale, batch_size: int) -> dict:
  from sketch_vae import checkpoint, data, evaluation
  config, facts, params, step = checkpoint.load_model(workdir, "best")
  dataset = data.load(data_paths, facts=facts)
  factor = evaluation.rescale_offsets(dataset, "test", rescale)
  result = evaluation.evaluate_split(config, params, dataset, "test", batch_size=batch_size,
                                     num_devices=1, rescale=factor)
  return dict(result, rescale=factor)


def sweep_rows(root: str) -> dict:
  path = os.path.join(root, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    rows = json.load(f)["rows"]
  return {(r["dataset"], r["setting"]): r for r in rows if r.get("status") != "missing"}


def markdown(rows: list) -> str:
  lines = ["| dataset | model | rescale | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
           "|" + "---|" * (len(COLUMNS) + 3)]
  for r in rows:
    values = [f.format(r[k]) for k, _, f in COLUMNS]
    lines.append(f"| {r['dataset']} | {r['model']} | {r['rescale']:.3g} | " + " | ".join(values) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  from sketch_vae import checkpoint, pretrained
  ours = sweep_rows(FLAGS.root)
  rows = []
  try:
    for dataset in FLAGS.datasets:
      paths = ",".join(os.path.join(FLAGS.data_dir, f"{c}.npz") for c in dataset.split("+"))
      source = model_file(dataset, FLAGS.pretrained_dir)
      workdir = os.path.join(FLAGS.root, "pretrained", dataset.replace("+", ""))
      if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        pretrained.import_to_workdir(source, workdir)
      for rescale in ("1", "auto"):
        result = score(workdir, paths, rescale, FLAGS.batch_size)
        rows.append(dict(result, dataset=dataset, model=f"released {os.path.basename(source)}"))
        print(f"{dataset}: released model, rescale {result['rescale']:.3g}: L_R {result['recon_loss']:.4f}, "
              f"offset NLL/point {result['offset_nll_per_point_px']:.3f} px", flush=True)
      for setting in ("decoder", "1.00", "0.50", "0.25"):
        r = ours.get((dataset, setting))
        if r is not None and "offset_nll_per_point_px" in r:
          name = "ours, decoder-only" if setting == "decoder" else f"ours, w_KL = {setting}"
          rows.append(dict(r, model=name, rescale=1.0))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"pretrained: error: {e}")
  text = ("# Released browser models vs the sweep's models, test split\n\n"
          "offset NLL / point (px): the offsets' negative log-likelihood per drawn point in the "
          "data's own pixels (lower is better), comparable across scale factors and N_max. "
          "L_R is in each model's own units and is not comparable across rows with different "
          "scale factors.\n\n" + markdown(rows))
  checkpoint.write_text_atomic(os.path.join(FLAGS.root, "pretrained.md"), text)
  checkpoint.write_text_atomic(os.path.join(FLAGS.root, "pretrained.json"), json.dumps(rows, indent=1))
  print(text)


if __name__ == "__main__":
  app.run(main)
