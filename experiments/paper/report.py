"""The sweep's table: test losses of every (dataset, setting) as results.md and results.json.

Each number comes from `evaluate_workdir`, which is `experiments.evaluate`
without its options: the best-by-validation checkpoint, the run's own data
files normalised with its own scale factor, `sketch_vae.evaluation.evaluate_split`
on the test split, eps of z from seed 0. A model's result is computed when it
finishes and kept in its done.json; the report reuses it while the best
checkpoint is the one that was scored, and scores unfinished models afresh.
"""
from __future__ import annotations

import json
import os

from sketch_vae import checkpoint

COLUMNS = (  # (key, header, format)
    ("recon_loss", "L_R", "{:.4f}"), ("kl_loss_raw", "L_KL raw", "{:.4f}"),
    ("kl_loss", "L_KL floored", "{:.4f}"), ("offset_loss", "L_s (offsets)", "{:.4f}"),
    ("pen_loss", "L_p (pen)", "{:.4f}"), ("loss", "L_R + w_KL L_KL", "{:.4f}"),
    ("offset_nll_per_point_px", "offset NLL / point (px)", "{:.3f}"),
    ("count", "n", "{}"))


def evaluate_workdir(workdir: str, *, batch_size: int = 100, num_devices: int = 0,
                     seed: int = 0, which: str = "best") -> dict:
  """Test-split means of a workdir's model, as `python -m experiments.evaluate --split=test`."""
  from sketch_vae import data, evaluation
  config, facts, params, step = checkpoint.load_model(workdir, which)
  dataset = data.load(evaluation.training_data(workdir), facts=facts)
  result = evaluation.evaluate_split(config, params, dataset, "test", batch_size=batch_size,
                                     num_devices=num_devices, seed=seed)
  result.update(checkpoint_step=int(step), split="test")
  return result


def _best_step(workdir: str):
  ckpts = checkpoint.Checkpoints(workdir, writer=False)
  try:
    return ckpts.best_step() if ckpts.best_step() is not None else ckpts.latest_step()
  finally:
    ckpts.close()


def row(job, sweep) -> dict:
  """One table row; `status` is done, partial (checkpoints but unfinished) or missing."""
  from experiments.paper import sweep as sweep_lib
  out = dict(dataset=job.dataset, setting=job.setting, workdir=job.workdir,
             conditional=job.config.model.conditional,
             kl_weight=job.config.train.kl_weight if job.config.model.conditional else None,
             num_steps=job.config.train.num_steps)
  if not os.path.isdir(os.path.join(job.workdir, "checkpoints")):
    return dict(out, status="missing")
  done = sweep_lib.read_done(job.workdir)
  fresh = (done is None or sweep.reevaluate
           or done["test"].get("checkpoint_step") != _best_step(job.workdir)
           or "offset_nll_per_point_px" not in done["test"])  # scored before that number existed
  test = (evaluate_workdir(job.workdir, batch_size=sweep.eval_batch_size,
                           num_devices=sweep.num_devices) if fresh else done["test"])
  config, facts = checkpoint.load_run_files(job.workdir)
  w = config.train.kl_weight if config.model.conditional else 0.0
  out.update(status="done" if done is not None and sweep_lib.is_done(job) else "partial",
             trained_steps=sweep_lib.latest_step(job.workdir),
             train_seconds=done["train_seconds"] if done else None,
             **{"scale_factor": facts.scale_factor, "max_seq_len": facts.max_seq_len, **test})
  out["loss"] = out["recon_loss"] + w * out["kl_loss"]
  return out


def markdown(rows: list, sweep) -> str:
  first = next((r for r in rows if r["status"] != "missing"), None)
  model = sweep.config("1.00").model
  lines = [
      "# sketch-rnn KL-weight sweep on Quick Draw (cs50 Doodler subsets)", "",
      f"Preset `{sweep.preset}`, overrides `{sweep.hparams or 'none'}`: encoder "
      f"{model.enc_model} {model.enc_rnn_size}, decoder {model.dec_model} {model.dec_rnn_size}, "
      f"N_z {model.z_size}, M {model.num_mixture}; {sweep.config('1.00').train.num_steps} steps "
      f"per model. Test split, best-by-validation checkpoint, means per sketch "
      f"(`experiments.evaluate`). L_R = L_s + L_p, the pen term over all N_max steps; "
      f"offset NLL / point (px) = L_s N_max / mean length + 2 log(scale): the offsets' NLL per "
      f"point in the data's pixels, comparable across scale factors and N_max; "
      f"L_KL floored at KL_min = {sweep.config('1.00').train.kl_tolerance}. Multi-class datasets "
      f"are the concatenation of the per-class files.", "",
      "| dataset | setting | step | " + " | ".join(h for _, h, _ in COLUMNS) + " | scale | N_max |",
      "|" + "---|" * (len(COLUMNS) + 5)]
  for r in rows:
    name = "decoder-only" if r["setting"] == "decoder" else f"w_KL = {float(r['setting']):.2f}"
    if r["status"] == "missing":
      lines.append(f"| {r['dataset']} | {name} | not trained |" + " |" * (len(COLUMNS) + 2))
      continue
    values = ["—" if not r["conditional"] and k.startswith("kl") else f.format(r[k])
              for k, _, f in COLUMNS]
    step = f"{r['checkpoint_step']}/{r['num_steps']}" + ("" if r["status"] == "done" else " *")
    lines.append(f"| {r['dataset']} | {name} | {step} | " + " | ".join(values)
                 + f" | {r['scale_factor']:.2f} | {r['max_seq_len']} |")
  if any(r["status"] == "partial" for r in rows):
    lines += ["", "\\* unfinished: scored at its current best checkpoint."]
  if first is None:
    lines += ["", "No model has been trained yet."]
  return "\n".join(lines) + "\n"


def write(sweep, jobs) -> list:
  """Writes <root>/results.md and results.json; returns the rows."""
  rows = [row(job, sweep) for job in jobs]
  os.makedirs(sweep.root, exist_ok=True)
  checkpoint.write_text_atomic(os.path.join(sweep.root, "results.md"), markdown(rows, sweep))
  payload = dict(preset=sweep.preset, hparams=sweep.hparams, num_steps=sweep.num_steps,
                 config=sweep.config("1.00").to_dict(), rows=rows)
  checkpoint.write_text_atomic(os.path.join(sweep.root, "results.json"),
                               json.dumps(payload, indent=1))
  return rows
