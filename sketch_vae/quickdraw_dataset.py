"""Quick Draw files -> sketch-rnn `.npz` datasets, with a report of every step.

Rebuilds files like the official `sketchrnn/<class>.npz` (train / valid / test
of int16 stroke-3) from any ndjson or JSON-list subset: each drawing is parsed
and converted by `quickdraw`, then duplicates and filtered drawings are dropped,
the rest cut into seeded splits and written. The `ConversionReport` records the
sources (with their sha256), settings, steps and every drop, so a dataset can be
traced to its sources and settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from sketch_vae import quickdraw
from sketch_vae.quickdraw import QuickDrawError

SPLITS = ("train", "valid", "test")
# The official class files: 70000 / 2500 / 2500 of 75000 drawings.
DEFAULT_FRACTIONS = (70000 / 75000, 2500 / 75000, 2500 / 75000)
MAX_EXAMPLES = 5  # messages kept per drop reason in the report


# ----------------------------------------------------------------------------
# Splits and the .npz file.


def split_sizes(n: int, train=None, valid=None, test=None) -> tuple[int, int, int]:
  """Sizes from counts (ints) or fractions (floats in [0, 1]) of `n`.

  Missing valid / test sizes get the official 2500 / 75000 share; a missing
  train size, or train given as a fraction when the three fractions add up to
  1, takes the rest, so rounding loses no drawing.
  """
  def count(value, name):
    is_fraction = isinstance(value, (float, np.floating))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not is_fraction:
      raise QuickDrawError(f"{name} size should be a count or a fraction, got {value!r}")
    if value < 0 or is_fraction and value > 1:
      raise QuickDrawError(f"{name} size {value} is not a count >= 0 or a fraction in [0, 1]")
    return int(round(value * n)) if is_fraction else int(value)

  valid_n = count(DEFAULT_FRACTIONS[1] if valid is None else valid, "valid")
  test_n = count(DEFAULT_FRACTIONS[2] if test is None else test, "test")
  given = [v for v in (train, valid, test) if v is not None]
  fractions = given and all(isinstance(v, (float, np.floating)) for v in given)
  if train is None or (len(given) == 3 and fractions and abs(sum(given) - 1.0) < 1e-9):
    train_n = n - valid_n - test_n
  else:
    train_n = count(train, "train")
  if train_n < 0 or train_n + valid_n + test_n > n:
    raise QuickDrawError(f"split sizes train={max(train_n, 0)} valid={valid_n} test={test_n} "
                         f"need more drawings than the {n} kept")
  return train_n, valid_n, test_n


def split_sketches(sketches: Sequence, sizes: Sequence[int], seed: int) -> dict[str, list]:
  """A seeded random permutation cut into train / valid / test, in that order."""
  order = np.random.default_rng(seed).permutation(len(sketches))
  out, start = {}, 0
  for name, size in zip(SPLITS, sizes):
    out[name] = [sketches[i] for i in order[start:start + size]]
    start += size
  return out


def write_npz(path: str, splits: dict[str, Sequence[np.ndarray]]) -> None:
  """sketch-rnn `.npz`: train / valid / test, each a 1-d object array of int16
  (n, 3) arrays, as `np.load(allow_pickle=True, encoding="latin1")` expects.

  Filled element by element because `np.array(list)` builds a 3-d array when
  all sketches have the same length. Written to a temporary name, then renamed.
  """
  arrays = {}
  for name in SPLITS:
    seq = splits.get(name, [])
    arr = np.empty(len(seq), dtype=object)
    for i, sketch in enumerate(seq):
      arr[i] = np.asarray(sketch, np.int16)
    arrays[name] = arr
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".part"
  try:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# ----------------------------------------------------------------------------
# The whole conversion, with its record.


def file_sha256(path: str) -> str:
  """Hex sha256 of a file, read in 1 MB blocks (recorded in conversion and import reports)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


@dataclasses.dataclass
class ConversionReport:
  """Every step of one conversion; written as JSON beside the `.npz`."""
  settings: dict
  steps: list[str]
  sources: list[dict] = dataclasses.field(default_factory=list)
  read: int = 0
  kept: int = 0
  formats: dict = dataclasses.field(default_factory=lambda: {"simplified": 0, "raw": 0})
  dropped: dict = dataclasses.field(default_factory=dict)
  examples: dict = dataclasses.field(default_factory=dict)
  split: dict = dataclasses.field(default_factory=dict)
  unused: int = 0
  lengths: dict = dataclasses.field(default_factory=dict)
  output: str | None = None

  def drop(self, reason: str, message: str) -> None:
    self.dropped[reason] = self.dropped.get(reason, 0) + 1
    shown = self.examples.setdefault(reason, [])
    if len(shown) < MAX_EXAMPLES:
      shown.append(message)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def convert(paths: Sequence[str] | str, *, epsilon: float | None = 2.0, resample: bool = True,
            raw_size: float | None = quickdraw.RAW_SIZE, start_at_origin: bool = False,
            recognized_only: bool = False, deduplicate: bool = True, strict: bool = False,
            max_drawings: int | None = None, train=None, valid=None, test=None,
            seed: int = 0) -> tuple[dict[str, list[np.ndarray]], ConversionReport]:
  """Reads Quick Draw files and returns (stroke-3 int16 splits, report).

  Bad drawings are dropped and counted by reason, or, with `strict`, the first
  one is raised. Filters, in order: `recognized_only` drops drawings whose
  `recognized` field is false (drawings without the field stay); a drawing is
  a duplicate when a kept one has its key_id, or has its strokes and one of the
  two has no key_id (two key_ids with the same strokes are two drawings).
  `max_drawings` keeps the first N drawings of each file; to draw a random
  subset like the official 75000, give split counts and leave the rest unused.
  """
  if isinstance(paths, str):
    paths = [p for p in paths.split(",") if p]
  if not paths:
    raise QuickDrawError("no input files given")
  if max_drawings is not None and max_drawings < 1:
    raise QuickDrawError(f"max_drawings should be at least 1, got {max_drawings}")
  plain = lambda v: v.item() if isinstance(v, np.generic) else v  # NumPy scalars -> JSON
  settings = dict(epsilon=epsilon, resample=resample, raw_size=raw_size,
                  start_at_origin=start_at_origin, recognized_only=recognized_only,
                  deduplicate=deduplicate, strict=strict, max_drawings=max_drawings, seed=seed,
                  train=plain(train), valid=plain(valid), test=plain(test))
  scaling = (f"align top-left, scale larger side to {raw_size:g}" if raw_size is not None
             else "keep raw pixels")
  steps = [f"raw only: {scaling}" + (", resample at 1 pixel" if resample else ""),
           f"RDP per stroke, epsilon {epsilon}" if epsilon is not None else "no RDP",
           "round points, difference to int16 stroke-3"
           + (", first offset set to (0, 0)" if start_at_origin else ""),
           f"seeded permutation (seed {seed}) cut into train / valid / test"]
  report = ConversionReport(settings=settings, steps=steps)
  # Content of every kept drawing, and of the kept drawings without a key_id: a
  # keyed drawing is also a duplicate of an unkeyed one with its strokes, so the
  # result does not depend on the order of the files.
  sketches, seen_keys, seen_content, seen_unkeyed = [], set(), set(), set()
  for path in paths:
    quickdraw.check_file(path)
    source = dict(path=path, sha256=file_sha256(path), bytes=os.path.getsize(path), read=0, kept=0)
    report.sources.append(source)
    for item in quickdraw.iter_drawings(path):
      report.read += 1
      source["read"] += 1
      try:
        if isinstance(item, QuickDrawError):
          raise item
        if recognized_only and item.recognized is False:
          report.drop("not_recognized", f"{item.where}: recognized is false")
          continue
        content = item.content_key() if deduplicate else None
        keyed = item.key_id is not None
        if deduplicate and (item.key_id in seen_keys or content in seen_unkeyed if keyed
                            else content in seen_content):
          what = f"key_id {item.key_id}" if keyed and item.key_id in seen_keys else "content"
          report.drop("duplicate", f"{item.where}: same {what} as an earlier drawing")
          continue
        sketches.append(quickdraw.to_stroke3(item, epsilon, resample, raw_size, start_at_origin))
      except QuickDrawError as e:
        if strict:
          raise
        report.drop(e.reason, str(e))
        continue
      seen_keys.add(item.key_id)
      seen_content.add(content)
      if item.key_id is None:
        seen_unkeyed.add(content)
      report.formats["raw" if item.is_raw else "simplified"] += 1
      source["kept"] += 1
      if max_drawings is not None and source["kept"] >= max_drawings:
        break
  report.kept = len(sketches)
  if not sketches:
    first = next(iter(report.examples.values()), ["the files hold no drawings"])[0]
    raise QuickDrawError(f"no drawing kept from {', '.join(paths)} (read {report.read}, "
                         f"dropped {report.dropped}); first problem: {first}")
  sizes = split_sizes(len(sketches), train, valid, test)
  splits = split_sketches(sketches, sizes, seed)
  report.split = {name: len(splits[name]) for name in SPLITS}
  report.unused = len(sketches) - sum(sizes)
  for name in SPLITS:
    lengths = [len(s) for s in splits[name]]
    report.lengths[name] = dict(longest=max(lengths, default=0),
                                mean=float(np.mean(lengths)) if lengths else 0.0)
  return splits, report


def prepare(paths: Sequence[str] | str, output: str, **options) -> ConversionReport:
  """`convert`, then write OUTPUT.npz and the report as OUTPUT.json beside it."""
  if not str(output).endswith(".npz"):
    raise QuickDrawError(f"{output}: the output name should end in .npz")
  report_path = str(output)[:-len(".npz")] + ".json"
  inputs = [p for p in paths.split(",") if p] if isinstance(paths, str) else list(paths)
  for written in (str(output), report_path):
    for path in inputs:
      if os.path.abspath(path) == os.path.abspath(written) or (
          os.path.exists(path) and os.path.exists(written) and os.path.samefile(path, written)):
        raise QuickDrawError(f"{path}: is an input and would be overwritten by the output "
                             f"{written}; choose another output name")
  splits, report = convert(inputs, **options)
  report.output = str(output)
  text = json.dumps(report.as_dict(), indent=1) + "\n"  # fails before anything is written
  write_npz(output, splits)
  tmp = report_path + ".part"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, report_path)
  return report

