"""Evaluation over whole splits: the pmapped eval step, means, and the best-checkpoint criterion."""
from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np

from sketch_vae import data as data_lib
from sketch_vae import parallel
from sketch_vae import config as config_lib
from sketch_vae.config import Config


def pmap_eval(config: Config, lay: parallel.Layout):
  from sketch_vae import train  # late: train imports this module
  return jax.pmap(functools.partial(train.eval_step, config, axis_name=parallel.AXIS),
                  axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=parallel.pmap_devices(lay))


def evaluate(config: Config, params_rep, sketches, facts: data_lib.DataFacts, lay: parallel.Layout,
             p_eval, seed: int) -> dict:
  """Means over every sketch of a split (deterministic for `seed`).

  Each sketch's z draws its eps from its index in the split, so the numbers do
  not depend on the batch size or the number of devices.
  """
  if not sketches:
    raise ValueError("the split is empty: nothing to evaluate")
  totals = None
  base = jax.random.key(seed)
  for i, (x, lengths, weights) in enumerate(
      data_lib.eval_batches(sketches, lay.global_batch, facts.max_seq_len)):
    rows = np.arange(i * lay.global_batch, (i + 1) * lay.global_batch, dtype=np.int32)
    batch = {"strokes": x, "lengths": lengths, "rows": rows, "weights": weights}
    batch = jax.tree.map(lambda a: a[lay.host_rows], batch)
    sums = jax.device_get(jax.tree.map(lambda a: a[0], p_eval(params_rep, parallel.shard(batch, lay), base)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  n = float(totals["count"])
  out = {k: float(v) / n for k, v in totals.items() if k != "count"}
  out["kl_loss"] = max(out["kl_loss_raw"], config.train.kl_tolerance) if config.model.conditional else 0.0
  out["count"] = int(n)
  return out


def selection_loss(config: Config, m: dict) -> float:
  """Best-checkpoint criterion: L_R + w_KL * max(L_KL, KL_min) at the final w_KL
  (not the annealed one, which would make early and late numbers incomparable)."""
  return m["recon_loss"] + config.train.kl_weight * m["kl_loss"]


def evaluate_split(config: Config, params, dataset: data_lib.Dataset, split: str, *,
                   batch_size: int = 100, num_devices: int = 0, seed: int = 0,
                   rescale: float = 1.0) -> dict:
  """Host-side entry: params (unreplicated) over every sketch of `split`.

  `rescale` is the factor the caller multiplied the normalised offsets by (see
  `experiments.evaluate --rescale`); it only enters the pixel-space number.
  """
  lay = parallel.layout(batch_size, num_devices)
  sketches = dataset.splits[split]
  result = evaluate(config, parallel.replicate(params, lay), sketches, dataset.facts,
                    lay, pmap_eval(config, lay), seed)
  r = dataset.report[split]
  result.update(dropped_too_long=r.dropped_too_long, dropped_empty=r.dropped_empty)
  result.update(per_point(result, dataset.facts, float(np.mean([len(s) for s in sketches])), rescale))
  return result


def per_point(result: dict, facts: data_lib.DataFacts, mean_length: float, rescale: float = 1.0) -> dict:
  """Losses per drawn point, free of N_max and of the model's scale factor.

  L_s and the masked pen term are sums over each sketch's points divided by
  N_max; times N_max over the mean length they are per point. A model sees
  offsets u = pixels * rescale / scale_factor, so the offsets' density in the
  data's own pixels is p(u) (rescale / scale_factor)^2 and the NLL per point in
  pixels adds 2 log(scale_factor / rescale). Models trained with different
  scale factors or N_max compare on these numbers, not on L_R.
  """
  n_max = facts.max_seq_len
  offset = result["offset_loss"] * n_max / mean_length
  return {"mean_length": mean_length, "max_seq_len": n_max, "scale_factor": facts.scale_factor,
          "offset_nll_per_point": offset,
          "offset_nll_per_point_px": offset + 2.0 * float(np.log(facts.scale_factor / rescale)),
          "pen_nll_per_point": result["pen_loss_masked"] * n_max / mean_length}


def rescale_offsets(dataset: data_lib.Dataset, split: str, rescale: str | float = 1.0) -> float:
  """Multiplies every split's (normalised) offsets in place by `rescale`; returns it.

  `"auto"` picks the factor that gives the offsets unit spread over the train
  split (or over `split` if the data have no train split): for models whose
  training drawings lived at another pixel scale than these data.
  """
  if rescale == "auto":
    name = "train" if dataset.splits["train"] else split
    ref = dataset.splits[name]
    if not ref:
      # Both can be empty after loading, e.g. every sketch longer than the model's N_max.
      r, where = dataset.report[name], "train" if name == "train" else f"train or {name}"
      raise ValueError(f"rescale 'auto' has no offsets to measure: no sketches in the {where} "
                       f"split ({name}: {r.dropped_too_long} longer than the model's N_max "
                       f"{dataset.facts.max_seq_len}, {r.dropped_empty} empty); pass a number")
    spread = float(np.std(np.concatenate([s[:, 0:2].reshape(-1) for s in ref])))
    if not spread > 0:
      raise ValueError(f"rescale 'auto': the offsets of split '{name}' do not vary (spread "
                       f"{spread}); pass a number instead")
    factor = 1.0 / spread
  else:
    # 0 would divide by zero in per_point's log; negative and non-finite factors would put
    # NaN into the results instead of failing.
    factor = config_lib.positive_number(rescale, "rescale")
  for sketches in dataset.splits.values():
    for s in sketches:
      s[:, 0:2] *= factor
  return factor


def training_data(workdir: str) -> str:
  """The data files a workdir's run was trained on (as recorded by checkpoint.save_run_files)."""
  path = os.path.join(workdir, "dataset.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} does not record its training data; pass --data")
  with open(path) as f:
    return ",".join(json.load(f)["sources"])
