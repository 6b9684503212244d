"""The sweep's pictures, after the paper's figures, drawn with the library alone.

Written to <root>/figures/ as grid PNG + SVG (+ the strokes as .npz, see
`render_grid.save_sketches`); every sketch is in the model's normalised units.
  reconstruct_<dataset>_<setting>  paper fig. 3-4: test inputs (and, marked
      "other", drawings of a class the model never saw) encoded to their
      posterior mean and decoded at rising temperature.
  interpolate_<dataset>  paper fig. 6: from the first class's first test
      sketch to the second class's, one row per w_KL (multi-class models).
  analogy_<dataset>  paper fig. 7, class-level: z(sketch) - mean z(its class)
      + mean z(the other class), "this cat as a pig" (multi-class models).
  complete_<dataset>  paper fig. 8: the decoder-only model continues the
      first half (whole strokes) of test sketches, several endings each.
Inputs are the first test sketches of each class file, so the pictures of
different settings show the same drawings. Sampling keys are fixed per figure;
interpolations and analogies use one key for every cell, so columns differ
only through z.
"""
from __future__ import annotations

import functools
import os

import jax
import numpy as np

from sketch_vae import checkpoint, data, render_grid, sample
from sketch_vae import strokes as strokes_lib

RECON_TEMPERATURES = (0.01, 0.2, 0.4, 0.6, 0.8, 1.0)
INTERP_STEPS, LATENT_TEMPERATURE = 7, 0.1
COMPLETE_TEMPERATURE, COMPLETIONS = 0.5, 5
CELL = 96
LABEL_WIDTH = 120


@functools.lru_cache(maxsize=64)
def _model(workdir: str):
  return checkpoint.load_model(workdir, "best")


@functools.lru_cache(maxsize=64)
def _test_split(path: str, facts: data.DataFacts) -> list:
  """A class's test sketches, normalised with the model's scale factor (too long ones dropped)."""
  return data.load(path, facts=facts).splits["test"]


def _encode(config, params, facts, sketches, key) -> np.ndarray:
  x, lengths = strokes_lib.pad_batch(sketches, facts.max_seq_len)
  return np.asarray(sample.encode(config.model, params, x, lengths, key, use_mean=True))


def _decode(config, params, facts, key, temperatures, z=None, prefix=None, prefix_len=None,
            same_key: bool = False) -> list:
  """Stroke-3 sketches (None where a sample is empty); row i uses fold_in(key, i) or `key`."""
  temperatures = np.asarray(temperatures, np.float32).reshape(-1)
  k = len(temperatures)
  index = np.zeros(k, np.int32) if same_key else np.arange(k, dtype=np.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
  lengths = np.zeros(k, np.int32) if prefix_len is None else np.asarray(prefix_len, np.int32)
  out = sample.batch_sampler(config.model, facts.max_seq_len)(
      params, keys, temperatures, z, prefix, lengths)
  rows = [strokes_lib.stroke5_to_stroke3(s) for s in np.asarray(out.strokes)]
  return [r if len(r) else None for r in rows]


def _save(sweep, name, rows, row_labels, col_labels) -> str:
  prefix = os.path.join(sweep.root, "figures", name)
  _, png, _ = render_grid.save_sketches(prefix, rows, row_labels=row_labels,
                                        col_labels=col_labels, cell=CELL, label_width=LABEL_WIDTH)
  return png


def other_class(sweep, dataset: str):
  """A class the dataset's models never saw: from the sweep's other datasets first, then
  the paper's classes, then any other file in the data folder."""
  own = set(sweep.classes(dataset))
  from experiments.paper.make_datasets import PAPER_CLASSES
  files = sorted(f[:-4] for f in os.listdir(sweep.data_dir) if f.endswith(".npz"))
  for c in [c for d in sweep.datasets for c in sweep.classes(d)] + list(PAPER_CLASSES) + files:
    if c not in own and os.path.exists(sweep.class_path(c, make=False)):
      return c
  return None


def _first_test_sketches(sweep, dataset, facts, total: int = 4) -> list:
  """(label, sketch) for the first test sketches of each class of `dataset`, `total` in all."""
  classes = sweep.classes(dataset)
  per_class = max(1, total // len(classes))
  return [(f"{c} {i}", s) for c in classes
          for i, s in enumerate(_test_split(sweep.class_path(c, make=False), facts)[:per_class])]


def reconstructions(sweep, job, key) -> str:
  config, facts, params, _ = _model(job.workdir)
  picked = _first_test_sketches(sweep, job.dataset, facts)
  labels, inputs = [label for label, _ in picked], [s for _, s in picked]
  other = other_class(sweep, job.dataset)
  if other is not None:
    for i, s in enumerate(_test_split(sweep.class_path(other, make=False), facts)[:2]):
      inputs.append(s)
      labels.append(f"{other} {i} (other)")
  z = _encode(config, params, facts, inputs, jax.random.fold_in(key, 0))
  temps = np.tile(RECON_TEMPERATURES, len(inputs))
  out = _decode(config, params, facts, jax.random.fold_in(key, 1), temps,
                z=np.repeat(z, len(RECON_TEMPERATURES), axis=0))
  n = len(RECON_TEMPERATURES)
  rows = [[s] + out[i * n:(i + 1) * n] for i, s in enumerate(inputs)]
  cols = ["input"] + [f"τ={t:g}" for t in RECON_TEMPERATURES]
  from experiments.paper.sweep import setting_dir
  return _save(sweep, f"reconstruct_{job.dataset}_{setting_dir(job.setting)}", rows, labels, cols)


def _row_name(job) -> str:
  return f"w_KL {float(job.setting):.2f}"


def interpolation(sweep, dataset, jobs, key) -> str:
  a, b = sweep.classes(dataset)[:2]
  rows, labels = [], []
  for job in jobs:
    config, facts, params, _ = _model(job.workdir)
    ends = [_test_split(sweep.class_path(c, make=False), facts)[0] for c in (a, b)]
    z = _encode(config, params, facts, ends, jax.random.fold_in(key, 0))
    zs = sample.interpolate(z[0], z[1], INTERP_STEPS, "slerp")
    out = _decode(config, params, facts, jax.random.fold_in(key, 1),
                  [LATENT_TEMPERATURE] * INTERP_STEPS, z=zs, same_key=True)
    rows.append([ends[0]] + out + [ends[1]])
    labels.append(_row_name(job))
  cols = [a] + [f"{t:.2f}" for t in np.linspace(0, 1, INTERP_STEPS)] + [b]
  return _save(sweep, f"interpolate_{dataset}", rows, labels, cols)


def analogy(sweep, dataset, jobs, key, n: int = 3) -> str:
  a, b = sweep.classes(dataset)[:2]
  rows, labels = [], []
  for job in jobs:
    config, facts, params, _ = _model(job.workdir)
    tests = {c: _test_split(sweep.class_path(c, make=False), facts) for c in (a, b)}
    means = {c: _encode(config, params, facts, tests[c], jax.random.fold_in(key, 0)).mean(axis=0)
             for c in (a, b)}
    for src, dst in ((a, b), (b, a)):
      z = _encode(config, params, facts, tests[src][:n], jax.random.fold_in(key, 0))
      moved = sample.analogy(z, means[src], means[dst]).astype(np.float32)
      out = _decode(config, params, facts, jax.random.fold_in(key, 1),
                    [LATENT_TEMPERATURE] * n, z=moved, same_key=True)
      rows.append([cell for i in range(n) for cell in (tests[src][i], out[i])])
      labels.append(f"{float(job.setting):.2f} {src}→{dst}")
  return _save(sweep, f"analogy_{dataset}", rows, labels, ["input", "analogy"] * n)


def first_half(sketch: np.ndarray) -> np.ndarray:
  """The whole strokes that end by the middle of the sketch (at least one stroke)."""
  ends = np.flatnonzero(sketch[:, 2] > 0.5) + 1
  inside = ends[(ends <= len(sketch) / 2) & (ends < len(sketch))]
  cut = int(inside[-1]) if len(inside) else int(ends[0]) if len(ends) else len(sketch)
  if cut >= len(sketch):  # one stroke only: cut it in the middle
    cut = max(1, len(sketch) // 2)
  return sketch[:cut]


def completions(sweep, job, key) -> str:
  config, facts, params, _ = _model(job.workdir)
  rows, labels = [], []
  for label, s in _first_test_sketches(sweep, job.dataset, facts):
    given = first_half(s)
    prefix = strokes_lib.to_stroke5(given, facts.max_seq_len)[1:]
    out = _decode(config, params, facts, jax.random.fold_in(key, len(rows)),
                  [COMPLETE_TEMPERATURE] * COMPLETIONS,
                  prefix=np.repeat(prefix[None], COMPLETIONS, 0),
                  prefix_len=[len(given)] * COMPLETIONS)
    rows.append([s, given] + out)
    labels.append(label)
  cols = ["original", "given"] + [f"τ={COMPLETE_TEMPERATURE:g}"] * COMPLETIONS
  return _save(sweep, f"complete_{job.dataset}", rows, labels, cols)


def draw_all(sweep, jobs, seed: int = 0) -> list:
  """Every figure the trained models allow; returns the PNG paths."""
  _model.cache_clear()  # a re-run may have trained further since
  key = jax.random.key(seed)
  trained = [j for j in jobs if os.path.isdir(os.path.join(j.workdir, "checkpoints"))]
  paths = []
  for d, dataset in enumerate(sweep.datasets):
    mine = [j for j in trained if j.dataset == dataset]
    vae = [j for j in mine if j.config.model.conditional]
    for job in vae:
      paths.append(reconstructions(sweep, job, jax.random.fold_in(key, 10 * d)))
    if len(sweep.classes(dataset)) >= 2 and vae:
      paths.append(interpolation(sweep, dataset, vae, jax.random.fold_in(key, 10 * d + 1)))
      paths.append(analogy(sweep, dataset, vae, jax.random.fold_in(key, 10 * d + 2)))
    for job in [j for j in mine if not j.config.model.conditional]:
      paths.append(completions(sweep, job, jax.random.fold_in(key, 10 * d + 3)))
  return paths
