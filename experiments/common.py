"""What the five sampling launchers share: flags, the model, input sketches, decoding, pictures.

The launchers (sample, reconstruct, interpolate, analogy, complete) differ only
in which latents they decode and how the grid is laid out; everything else is
here, once. Flags are defined here and not in the launchers, so that all five
can be imported into one process (the tests run them in-process) without two
modules defining the same flag. Flags whose default depends on the launcher
(`--index`, `--temperatures`, `--num`) default to None here, and each launcher
says its own default in its docstring.

Units: the model works on offsets divided by its training data's scale factor
("normalised"); drawings read from files are in pixels and are divided by
`facts.scale_factor` on the way in (after `--input_scale`), and the strokes
saved beside each picture are multiplied back unless `--units=normalized`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from sketch_vae import checkpoint, data, evaluation, mdn, pretrained, quickdraw, render_grid, sample
from sketch_vae import config as config_lib
from sketch_vae import strokes as strokes_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training (or imported) workdir, or bundled:cat / bundled:pig.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
flags.DEFINE_string("output_dir", None, "Where the .svg, .png and .npz files go.")
flags.DEFINE_string("name", None, "File name prefix of the outputs (default: the launcher's name).")
flags.DEFINE_integer("seed", 0, "Seed for z, eps and the sampler's keys.")
flags.DEFINE_string("data", None, "Dataset(s) to pick --index from; default: the run's own --data.")
flags.DEFINE_enum("split", "test", list(data.SPLITS),
                  "Split that --index (and PATH.npz:index) picks from.")
flags.DEFINE_list("index", None, "Sketches of --split to use, e.g. 3,17 (default: the launcher's).")
flags.DEFINE_multi_string(
    "input", None, "Read sketches from files instead of --data: PATH[:index], repeatable. PATH is "
    "a sketch-rnn .npz (index into --split), a picture .npz written by these launchers (index "
    "= drawn cell, row-major) or a Quick Draw .ndjson / .json (index = drawing number from 0; "
    "simplified or raw, converted with RDP). Pixel units.")
flags.DEFINE_float("input_scale", 1.0, "Multiply --input drawings' offsets by this first (for "
                   "drawings at another pixel scale than the training data).")
flags.DEFINE_float("rdp_epsilon", 2.0, "RDP epsilon for Quick Draw --input drawings (pixels).")
flags.DEFINE_list("temperatures", None, "Sampling temperatures tau, e.g. 0.1,0.5,0.9.")
flags.DEFINE_integer("num", None, "Sketches per grid row (or per temperature).")
flags.DEFINE_bool("greedy", False, "Most likely component's mean and pen state at every step "
                  "(temperatures are then ignored).")
flags.DEFINE_enum("sigma_convention", mdn.SIGMA_PAPER, [mdn.SIGMA_PAPER, mdn.SIGMA_ORIGINAL],
                  "paper: sigma * sqrt(tau) (paper, browser ports); original: sigma * tau "
                  "(the original Python sampler).")
flags.DEFINE_bool("z_mean", True, "Encode to the posterior mean mu; --noz_mean draws "
                  "z = mu + sigma * eps.")
flags.DEFINE_enum("units", "pixels", ["pixels", "normalized"],
                  "Units of the strokes saved in the .npz (the pictures do not depend on it).")
flags.DEFINE_integer("cell", 128, "Pixels per grid cell.")


class Model(NamedTuple):
  config: object
  facts: data.DataFacts
  params: dict
  step: int

  @property
  def spec(self):
    return self.config.model


class Sketch(NamedTuple):
  strokes: np.ndarray  # stroke-3, normalised offsets
  label: str


@contextlib.contextmanager
def clean_errors():
  """Bad input ends the launcher with one line naming the problem and exit code 1."""
  try:
    yield
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")


def load_model(needs_encoder: Optional[str] = None) -> Model:
  """The model of --workdir at --checkpoint; `needs_encoder` names the use that needs one."""
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores
  if FLAGS.workdir and FLAGS.workdir.startswith(pretrained.BUNDLED_PREFIX):
    # bundled:cat -> imported once into the cache, then used like any workdir.
    FLAGS.workdir = pretrained.ensure_workdir(FLAGS.workdir)
  if not FLAGS.workdir or not os.path.isdir(FLAGS.workdir):
    raise FileNotFoundError(f"--workdir {FLAGS.workdir!r} is not a directory")
  model = Model(*checkpoint.load_model(FLAGS.workdir, FLAGS.checkpoint))
  if needs_encoder and not model.spec.conditional:
    raise ValueError(f"{FLAGS.workdir} holds a decoder-only model (conditional=False): it has "
                     f"no encoder, so it cannot {needs_encoder}")
  return model


def keys(n: int):
  """n independent keys from --seed (for z, eps, sampling...)."""
  return list(jax.random.split(jax.random.key(FLAGS.seed), n))


def temperatures(default: Sequence[float]) -> list[float]:
  if FLAGS.greedy:
    return [0.0]
  if not FLAGS.temperatures:
    return list(default)
  # inf would sample offsets of infinite spread, which come out as empty sketches.
  return [config_lib.positive_number(text, "--temperatures") for text in FLAGS.temperatures]


def temperature_label(tau: float) -> str:
  return "greedy" if FLAGS.greedy else f"τ={tau:g}"


def in_rows(items: Sequence, n: int) -> list[list]:
  """Consecutive runs of n items: the grid rows of a batch sampled row by row."""
  return [list(items[i:i + n]) for i in range(0, len(items), n)]


def num(default: int) -> int:
  value = default if FLAGS.num is None else FLAGS.num
  if value < 1:
    raise ValueError(f"--num must be at least 1, got {value}")
  return value


# ----------------------------------------------------------------------------
# Input sketches: by index from a dataset split, or from files.


def _pick(items: Sequence, index: int, where: str):
  if not 0 <= index < len(items):
    raise ValueError(f"{where}: index {index} out of range (it has {len(items)} sketches)")
  return items[index]


def _read_file(spec: str) -> tuple[np.ndarray, str]:
  """PATH[:index] -> (stroke-3 in the file's pixels, a short label)."""
  path, _, index = spec.rpartition(":")
  if not path or not index.isdigit():  # no ":index", or a ":" inside the path
    path, index = spec, "0"
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input {path}: no such file")
  label = f"{os.path.basename(path)}:{index}"
  if path.endswith(".npz"):
    picture = _picture_strokes(path)
    if picture is not None:  # a grid written by these launchers: its cells, row-major
      return _pick(picture, int(index), f"{path} (a picture's strokes)"), label
    split = data.read_npz(path)[FLAGS.split]
    return _pick(split, int(index), f"{path} split '{FLAGS.split}'"), label
  drawings = list(quickdraw.iter_drawings(path))
  drawing = _pick(drawings, int(index), path)
  if isinstance(drawing, quickdraw.QuickDrawError):
    raise drawing
  return quickdraw.to_stroke3(drawing, epsilon=FLAGS.rdp_epsilon).astype(np.float32), label


def _picture_strokes(path: str) -> Optional[list[np.ndarray]]:
  """The cells of a picture's .npz (render_grid.save_sketches: `strokes` and `grid_index`),
  or None for any other .npz. Its strokes are in pixels unless it was written with
  --units=normalized."""
  try:
    npz = np.load(path, allow_pickle=True, encoding="latin1")
  except Exception:  # noqa: BLE001  data.read_npz then says what is wrong with the file
    return None
  if not isinstance(npz, np.lib.npyio.NpzFile):
    return None
  with npz:
    if not {"strokes", "grid_index"} <= set(npz.files):
      return None
    cells = list(npz["strokes"])
  return [data.check_sketch(s, path, "strokes", i) for i, s in enumerate(cells)]


def _normalise(strokes_Nx3: np.ndarray, scale: float, facts: data.DataFacts, label: str) -> Sketch:
  """Pixel offsets -> the model's units, clamped as data.load clamps training data."""
  if len(strokes_Nx3) == 0:
    raise ValueError(f"{label}: the drawing is empty")
  if len(strokes_Nx3) > facts.max_seq_len:
    raise ValueError(f"{label}: {len(strokes_Nx3)} points, more than the model's N_max "
                     f"{facts.max_seq_len} (a larger --rdp_epsilon shortens Quick Draw drawings)")
  out = np.array(strokes_Nx3, np.float32)
  out[:, 0:2] = np.clip(out[:, 0:2] * scale, -data.OFFSET_LIMIT, data.OFFSET_LIMIT)
  out[:, 0:2] /= facts.scale_factor
  return Sketch(out, label)


def load_inputs(facts: data.DataFacts, default_index: Sequence[int],
                count: Optional[int] = None) -> list[Sketch]:
  """The --input files, or else --index of --split of --data; `count` demands that many."""
  if FLAGS.input:
    sketches = []
    for spec in FLAGS.input:
      strokes_Nx3, label = _read_file(spec)
      sketches.append(_normalise(strokes_Nx3, FLAGS.input_scale, facts, label))
  else:
    paths = FLAGS.data or evaluation.training_data(FLAGS.workdir)
    split = [s for path in paths.split(",") if path for s in data.read_npz(path)[FLAGS.split]]
    if FLAGS.index and not all(i.lstrip("-").isdigit() for i in FLAGS.index):
      raise ValueError(f"--index should be sketch numbers such as 3,17, not {FLAGS.index}")
    indices = [int(i) for i in FLAGS.index] if FLAGS.index else list(default_index)
    where = f"{paths} split '{FLAGS.split}'"
    sketches = [_normalise(_pick(split, i, where), 1.0, facts, f"{FLAGS.split} {i}")
                for i in indices]
  if count is not None and len(sketches) != count:
    raise ValueError(f"this launcher needs exactly {count} input sketches, got {len(sketches)} "
                     f"(use --index with {count} numbers, or --input {count} times)")
  return sketches


def encode(model: Model, sketches: Sequence[Sketch], key) -> np.ndarray:
  """[n, Z] latents of the sketches (posterior mean with --z_mean, else mu + sigma * eps)."""
  x, lengths = strokes_lib.pad_batch([s.strokes for s in sketches], model.facts.max_seq_len)
  return np.asarray(sample.encode(model.spec, model.params, x, lengths, key,
                                  use_mean=FLAGS.z_mean))


# ----------------------------------------------------------------------------
# Decoding and pictures.


def decode(model: Model, key, temperatures_K, z_KxZ=None, *, prefix=None, prefix_len=None,
           shared_key: bool = False) -> list[np.ndarray]:
  """K sampled sketches as normalised stroke-3 (--greedy, --sigma_convention apply).

  Row i draws with fold_in(key, i), or with `key` itself when `shared_key`, so
  that cells differing only in z (an interpolation) differ only because of z.
  """
  temperatures_K = np.asarray(temperatures_K, np.float32)
  K = len(temperatures_K)
  prefix_len = np.zeros((K,), np.int32) if prefix_len is None else np.asarray(prefix_len, np.int32)
  if shared_key:
    f = sample.batch_sampler(model.spec, model.facts.max_seq_len, FLAGS.greedy,
                             FLAGS.sigma_convention)
    out = f(model.params, jnp.stack([key] * K), temperatures_K, z_KxZ, prefix, prefix_len)
  else:
    out = sample.sample_batch(model.spec, model.params, key, temperatures_K, z=z_KxZ,
                              prefix=prefix, prefix_len=prefix_len,
                              max_len=model.facts.max_seq_len, greedy=FLAGS.greedy,
                              convention=FLAGS.sigma_convention)
  rows, lengths = np.asarray(out.strokes), np.asarray(out.length)
  return [strokes_lib.stroke5_to_stroke3(r[:n]) for r, n in zip(rows, lengths)]


def _in_units(cell, facts: data.DataFacts):
  """A grid cell's strokes in --units (cells are normalised until here)."""
  if cell is None or FLAGS.units == "normalized":
    return cell
  if isinstance(cell, render_grid.Highlight):
    return cell._replace(strokes=_in_units(cell.strokes, facts))
  out = np.array(cell, np.float32)
  out[:, 0:2] *= facts.scale_factor
  return out


def save(default_name: str, rows, facts: data.DataFacts, *, row_labels=None,
         col_labels=None) -> list[str]:
  """Write NAME.svg, NAME.png and NAME.npz into --output_dir; prints and returns the paths."""
  if not FLAGS.output_dir:
    raise ValueError("--output_dir is required")
  labels = [str(t) for t in row_labels or []]
  label_width = max(render_grid.LABEL_WIDTH, 16 + 8 * max((len(t) for t in labels), default=0))
  paths = render_grid.save_sketches(
      os.path.join(FLAGS.output_dir, FLAGS.name or default_name),
      [[_in_units(c, facts) for c in row] for row in rows], row_labels=row_labels,
      col_labels=col_labels, cell=FLAGS.cell, label_width=label_width)
  for path in paths:
    print(path)
  return list(paths)
