"""Sketch-rnn `.npz` datasets: loading, checks, filtering, scale factor, augmentation, batches.

Everything here runs on the host in NumPy and is deterministic for a seed: the
batch for training step `s` is a pure function of (seed, s), so a resumed run
sees the same data, and each host of a multi-host run can build only its own
rows of every global batch.

Shape letters: N = points in one sketch, B = batch, T = N_max + 1 padded rows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from typing import Sequence

import numpy as np

from sketch_vae import strokes as strokes_lib

SPLITS = ("train", "valid", "test")
# The original DataLoader clamps offsets to +-1000 before anything else
# ("removes large gaps"); we keep that (utils.DataLoader.limit).
OFFSET_LIMIT = 1000.0


class DataError(ValueError):
  """Bad input data; the message names the file and the sketch or line."""


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """Facts derived from the training data; saved beside every checkpoint."""
  scale_factor: float
  max_seq_len: int  # N_max: the padded length the model was trained with.

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "DataFacts":
    d = json.loads(text)
    return cls(scale_factor=float(d["scale_factor"]), max_seq_len=int(d["max_seq_len"]))


@dataclasses.dataclass
class SplitReport:
  """What happened to one split while loading."""
  read: int = 0
  kept: int = 0
  dropped_too_long: int = 0
  dropped_empty: int = 0
  longest: int = 0
  mean_length: float = 0.0

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------
# Reading and checking .npz files.


def check_sketch(sketch, path: str, split: str, index: int) -> np.ndarray:
  """One stroke-3 sketch as float32, or a DataError naming the file, key and index."""
  where = f"{path}: split '{split}', sketch {index}"
  try:
    arr = np.asarray(sketch)
  except Exception as e:  # ragged nested lists and the like
    raise DataError(f"{where}: cannot be read as an array ({e})") from None
  if arr.dtype == object:
    # NumPy builds an object array of numbers when every sketch of a split saved
    # with dtype=object has the same length (a one-sketch split always does).
    try:
      arr = arr.astype(np.float64)
    except (TypeError, ValueError):
      raise DataError(f"{where}: expected numeric stroke-3 rows, got objects that are "
                      f"not numbers") from None
  if arr.ndim != 2 or arr.shape[1] != 3:
    raise DataError(f"{where}: expected shape (n, 3) stroke-3 rows, got {arr.shape}")
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise DataError(f"{where}: expected integer or float offsets, got dtype {arr.dtype}")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
    raise DataError(f"{where}: non-finite value (NaN or inf) in row {bad}")
  pen = arr[:, 2]
  if not np.all((pen == 0) | (pen == 1)):
    bad = int(np.flatnonzero((pen != 0) & (pen != 1))[0])
    raise DataError(f"{where}: pen state must be 0 or 1, row {bad} has {pen[bad]}")
  return arr


def read_npz(path: str) -> dict[str, list[np.ndarray]]:
  """Reads a sketch-rnn .npz into {split: [stroke-3 float32 arrays]}, checking everything.

  Empty sketches are returned as they are (the caller counts and drops them).
  """
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  try:
    npz = np.load(path, allow_pickle=True, encoding="latin1")
  except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError, EOFError) as e:
    raise DataError(f"{path}: not a readable .npz file ({e})") from None
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise DataError(f"{path}: not an .npz archive (a single .npy array?)")
  with npz:
    missing = [s for s in SPLITS if s not in npz.files]
    if missing:
      raise DataError(f"{path}: missing split(s) {missing}; has {sorted(npz.files)}")
    out = {}
    for split in SPLITS:
      try:
        raw = npz[split]
      except Exception as e:
        raise DataError(f"{path}: split '{split}' cannot be read ({e})") from None
      if raw.ndim == 3 and raw.shape[-1] == 3:  # a dense [n, len, 3] array also works
        raw = list(raw)
      elif raw.ndim != 1:
        raise DataError(f"{path}: split '{split}' should be a 1-d array of sketches, "
                        f"got shape {raw.shape}")
      out[split] = [check_sketch(s, path, split, i) for i, s in enumerate(raw)]
  return out


# ----------------------------------------------------------------------------
# Loading one or several files into normalised splits.


@dataclasses.dataclass
class Dataset:
  """Normalised stroke-3 sketches per split, plus the facts and a report."""
  splits: dict[str, list[np.ndarray]]
  facts: DataFacts
  report: dict[str, SplitReport]
  sources: list[str]


def _filter(sketches: Sequence[np.ndarray], max_seq_len: int, report: SplitReport):
  kept = []
  for s in sketches:
    report.read += 1
    if len(s) == 0:
      report.dropped_empty += 1
    elif len(s) > max_seq_len:
      report.dropped_too_long += 1
    else:
      kept.append(np.clip(s, -OFFSET_LIMIT, OFFSET_LIMIT))
  report.kept = len(kept)
  if kept:
    lengths = np.array([len(s) for s in kept])
    report.longest = int(lengths.max())
    report.mean_length = float(lengths.mean())
  return kept


def scale_factor_of(sketches: Sequence[np.ndarray]) -> float:
  """Standard deviation of all dx and dy pooled (paper appendix; utils.py)."""
  if not sketches:
    raise DataError("cannot compute a scale factor from an empty training split")
  offsets = np.concatenate([s[:, 0:2].reshape(-1) for s in sketches]).astype(np.float64)
  std = float(np.std(offsets))
  if not std > 0:
    raise DataError("training offsets have zero spread; cannot normalise")
  return std


def load(paths: Sequence[str] | str, max_seq_len: int = 250,
         facts: DataFacts | None = None) -> Dataset:
  """Loads and concatenates sketch-rnn .npz files (multi-class = concatenation).

  Sketches longer than `max_seq_len` and empty ones are dropped and counted.
  With `facts` (from a trained model) its scale factor and N_max are used;
  otherwise the scale factor comes from the training split and N_max is the
  longest kept sketch (the original sets max_seq_len to the longest sketch).
  """
  if isinstance(paths, str):
    paths = [p for p in paths.split(",") if p]
  if not paths:
    raise DataError("no data files given")
  if facts is not None:
    max_seq_len = facts.max_seq_len
  raw = {s: [] for s in SPLITS}
  for path in paths:
    for split, sketches in read_npz(path).items():
      raw[split].extend(sketches)
  report = {s: SplitReport() for s in SPLITS}
  kept = {s: _filter(raw[s], max_seq_len, report[s]) for s in SPLITS}
  if facts is None and not kept["train"]:
    r = report["train"]
    raise DataError(f"{', '.join(paths)}: training split empty after filtering (read {r.read}, "
                    f"{r.dropped_too_long} longer than max_seq_len={max_seq_len}, "
                    f"{r.dropped_empty} empty); cannot compute a scale factor")
  if facts is None:
    longest = max(r.longest for r in report.values())
    facts = DataFacts(scale_factor=scale_factor_of(kept["train"]), max_seq_len=longest)
  splits = {}
  for s in SPLITS:
    normalised = []
    for sketch in kept[s]:
      sketch = sketch.copy()
      sketch[:, 0:2] /= facts.scale_factor
      normalised.append(sketch)
    splits[s] = normalised
  return Dataset(splits=splits, facts=facts, report=report, sources=list(paths))


# ----------------------------------------------------------------------------
# Augmentation (training only).


def random_scale(sketch: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
  """Independent x and y stretch factors from U[1 - amount, 1 + amount]."""
  fx, fy = rng.uniform(1.0 - amount, 1.0 + amount, size=2)
  out = sketch.copy()
  out[:, 0] *= fx
  out[:, 1] *= fy
  return out


def merge_points(sketch: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
  """With probability `prob`, merge a pen-down point into its pen-down predecessor.

  The merged offset is added to the kept point, so the drawing's endpoints stay
  where they were. As in the original `augment_strokes`, only points past the
  second point of a stroke are candidates, and a point that ends a stroke is
  never merged.
  """
  out = []
  prev_pen = 1.0
  run = 0
  draws = rng.random(len(sketch))
  for i, (dx, dy, pen) in enumerate(sketch):
    run = 0 if (pen == 1 or prev_pen == 1) else run + 1
    if pen == 0 and prev_pen == 0 and run > 2 and draws[i] < prob:
      out[-1][0] += dx
      out[-1][1] += dy
    else:
      out.append([dx, dy, pen])
      prev_pen = pen
  return np.asarray(out, np.float32).reshape(-1, 3)


# ----------------------------------------------------------------------------
# Batches.


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  batch_size: int  # global batch, over all hosts and devices
  max_seq_len: int  # N_max
  random_scale_factor: float = 0.0
  augment_stroke_prob: float = 0.0


class Batcher:
  """Deterministic batches of one split.

  Training batches: epoch `e` visits the split in the order of a permutation
  seeded by (seed, e); the batch for step `s` is a slice of it, and its
  augmentation draws come from (seed, s, row). Nothing depends on earlier
  calls, so `train_batch(s)` can be asked for in any order, on any host.
  """

  def __init__(self, sketches: Sequence[np.ndarray], spec: BatchSpec, seed: int):
    if len(sketches) < spec.batch_size:
      raise DataError(f"split has {len(sketches)} sketches, fewer than the batch size "
                      f"{spec.batch_size}")
    self.sketches = list(sketches)
    self.spec = spec
    self.seed = int(seed)
    self.steps_per_epoch = len(self.sketches) // spec.batch_size
    self._perm_epoch = -1
    self._perm = None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.sketches))
      self._perm_epoch = epoch
    return self._perm

  def train_indices(self, step: int) -> np.ndarray:
    epoch, k = divmod(int(step), self.steps_per_epoch)
    b = self.spec.batch_size
    return self._permutation(epoch)[k * b:(k + 1) * b]

  def train_batch(self, step: int, rows: slice | None = None):
    """Augmented padded batch for `step`; `rows` selects this host's shard."""
    indices = self.train_indices(step)
    row_ids = np.arange(len(indices))
    if rows is not None:
      indices, row_ids = indices[rows], row_ids[rows]
    out = []
    for row, i in zip(row_ids, indices):
      rng = np.random.default_rng([self.seed, 1, int(step), int(row)])
      s = self.sketches[i]
      if self.spec.random_scale_factor > 0:
        s = random_scale(s, rng, self.spec.random_scale_factor)
      if self.spec.augment_stroke_prob > 0:
        s = merge_points(s, rng, self.spec.augment_stroke_prob)
      out.append(s)
    return strokes_lib.pad_batch(out, self.spec.max_seq_len)


def eval_batches(sketches: Sequence[np.ndarray], batch_size: int, max_seq_len: int):
  """Every sketch once, in order, no augmentation.

  Yields (strokes_BxTx5, lengths_B, weights_B); the last batch is padded with
  copies of the first sketch and weight 0, so shapes stay fixed and the padded
  rows count for nothing.
  """
  n = len(sketches)
  for start in range(0, n, batch_size):
    chunk = list(sketches[start:start + batch_size])
    weights = np.zeros(batch_size, np.float32)
    weights[:len(chunk)] = 1.0
    chunk += [sketches[0]] * (batch_size - len(chunk))
    batch, lengths = strokes_lib.pad_batch(chunk, max_seq_len)
    yield batch, lengths, weights
