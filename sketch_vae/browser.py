"""The sketch-rnn-js / magenta-js model format (JSON) in and out; pretrained.py makes workdirs of it.

The browser ports ship a model as one JSON array [info, shapes, blobs]
(magenta-demos sketch-rnn-js/lib/sketch_rnn.js; REFERENCE.md, "Browser model
format"):
  info    {mode, version, name, max_seq_len, scale_factor} and optionally
          r_loss, kl_loss, training_size, training_steps. mode 0 or 1 is a VAE,
          2 (or "gen") a decoder-only model; known versions are 1 to 6.
  shapes  the dims of each blob; 2-d blobs are row-major [rows, cols].
  blobs   base64 of little-endian int16 q; the weight is 10 * q / 32767.
Blob order (`LAYOUTS`): decoder-only, 5 blobs: output W [H, Y], output b [Y],
LSTM W_xh [5, 4H], W_hh [H, 4H], bias [4H]. VAE, 17 blobs: encoder forward
W_xh [5, 4E], W_hh [E, 4E], bias [4E]; encoder backward, the same three; mu W
[2E, Z], b [Z]; sigma W [2E, Z], b [Z]; initial state W [Z, 2H], b [2H]; then
the decoder's five, with W_xh [5 + Z, 4H]. Y = 6M + 3.

The browser's LSTM is our `cells.lstm` as it stands (one matmul on
concat(x, h), gates i, j, f, o, forget bias 1 added at call time), its head is
sliced as mdn.py, its sigma W is our presig_w (sigma = sqrt(exp(.))), and it
splits the initial state tanh(W z + b) into c then h (TF LSTMCell's state
concat([c, h])), the order of our carry (model.carry_from_flat). So weights
map one to one; nothing is transposed or permuted.

Departures, on purpose: for VAE files older than version 6 the browser's
`get_init_state_from_latent_vector` squashes z with tanh first (its own
`decode` does not); we import them with a warning and no tanh. The browser
ports hard-code M = 20; files with another M load here, and export warns.

Export writes only what the format can hold: plain LSTM cells (layer-norm and
hyper cells raise), and weights within +-10. A larger weight raises unless
`clip=True`, which clips, counts and warns: a clipped weight is a different
model, so it is never done silently.

Shape letters: H = decoder units, E = encoder units per direction, Z = latent,
Y = 6M + 3 head outputs.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import warnings
from typing import NamedTuple

import numpy as np

from sketch_vae.data import DataFacts
from sketch_vae.model import ModelSpec

MAX_WEIGHT = 10.0
QMAX = 32767
QUANT_STEP = MAX_WEIGHT / QMAX  # one int16 step; a round trip moves a weight by at most half
KNOWN_VERSIONS = (1, 2, 3, 4, 5, 6)
EXPORT_VERSION = 6
MODES = {0: "vae", 1: "vae", 2: "gen", "vae": "vae", "gen": "gen"}
BROWSER_MIXTURES = 20  # N_mixture / NMIXTURE, hard-coded in both browser ports

# (path into our params, label, dims). A trailing 0 / 1 in the path is the
# encoder direction: our encoder stacks forward and backward on a leading axis.
_DEC = [(("decoder", "out_w"), "output W", "H,Y"),
        (("decoder", "out_b"), "output b", "Y"),
        (("decoder", "rnn", "w_x"), "decoder LSTM W_xh", "5+Z,4H"),
        (("decoder", "rnn", "w_h"), "decoder LSTM W_hh", "H,4H"),
        (("decoder", "rnn", "b"), "decoder LSTM bias", "4H")]
_ENC = [(("encoder", "rnn", k, d), f"encoder {side} LSTM {name}", dims)
        for d, side in enumerate(("forward", "backward"))
        for k, name, dims in (("w_x", "W_xh", "5,4E"), ("w_h", "W_hh", "E,4E"), ("b", "bias", "4E"))]
_ENC += [(("encoder", "mu_w"), "mu W", "2E,Z"), (("encoder", "mu_b"), "mu b", "Z"),
         (("encoder", "presig_w"), "sigma W", "2E,Z"), (("encoder", "presig_b"), "sigma b", "Z"),
         (("decoder", "init_w"), "initial-state W", "Z,2H"),
         (("decoder", "init_b"), "initial-state b", "2H")]
LAYOUTS = {"gen": _DEC, "vae": _ENC + _DEC}
_KIND_NAMES = {"gen": "decoder-only", "vae": "VAE"}
# Which blob dimension defines each size letter.
_SIZE_FROM = {"H": ("decoder LSTM W_hh", 0), "Y": ("output W", 1),
              "E": ("encoder forward LSTM W_hh", 0), "Z": ("mu W", 1)}


class BrowserModelError(ValueError):
  """A model file (or a model to export) that the format cannot describe; names the file."""


class BrowserModel(NamedTuple):
  info: dict
  spec: ModelSpec
  params: dict  # float32 NumPy arrays in model.init's layout
  facts: DataFacts


# ----------------------------------------------------------------------------
# Blobs and shapes.


def decode_blob(text, count: int, where: str) -> np.ndarray:
  """base64 -> little-endian int16 q -> float32 weights 10 * q / 32767 (count values)."""
  if not isinstance(text, str):
    raise BrowserModelError(f"{where}: expected a base64 string, got {type(text).__name__}")
  try:
    raw = base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as e:
    raise BrowserModelError(f"{where}: not valid base64 ({e})") from None
  if len(raw) % 2:
    raise BrowserModelError(f"{where}: {len(raw)} bytes, not a whole number of int16 values")
  q = np.frombuffer(raw, "<i2")
  if q.size != count:
    raise BrowserModelError(f"{where}: decodes to {q.size} values, its shape needs {count}")
  return (q.astype(np.float64) * MAX_WEIGHT / QMAX).astype(np.float32)


def encode_blob(weights, where: str, clip: bool = False) -> tuple[str, int]:
  """Float weights -> (base64 of int16 round(w * 32767 / 10), number clipped)."""
  w = np.asarray(weights, np.float64).reshape(-1)
  if not np.all(np.isfinite(w)):
    raise BrowserModelError(f"{where}: {int(np.sum(~np.isfinite(w)))} non-finite weight(s)")
  q = np.rint(w * QMAX / MAX_WEIGHT)
  over = int(np.sum(np.abs(q) > QMAX))
  if over and not clip:
    raise BrowserModelError(
        f"{where}: {over} weight(s) beyond +-{MAX_WEIGHT:g} (largest |w| = {np.max(np.abs(w)):.4g}), "
        f"which int16 cannot hold; export with clip=True (--clip) to clip them")
  return base64.b64encode(np.clip(q, -QMAX, QMAX).astype("<i2").tobytes()).decode("ascii"), over


def _dims(text: str, sizes: dict) -> tuple:
  """'5+Z,4H' -> (5 + Z, 4 * H); a missing letter (Z of a decoder-only model) is 0."""
  out = []
  for term in text.split(","):
    total = 0
    for part in term.split("+"):
      if part.isdigit():
        total += int(part)
      else:
        total += int(part[:-1] or 1) * sizes.get(part[-1], 0)
    out.append(total)
  return tuple(out)


def check_shapes(kind: str, shapes, where: str) -> dict:
  """Sizes {H, Y[, E, Z]} from the shapes, after checking every shape against `LAYOUTS`."""
  layout = LAYOUTS[kind]
  if len(shapes) != len(layout):
    other = [k for k, v in LAYOUTS.items() if len(v) == len(shapes)]
    hint = f" (as many as a {_KIND_NAMES[other[0]]} model has: wrong mode?)" if other else ""
    raise BrowserModelError(f"{where}: a {_KIND_NAMES[kind]} model has {len(layout)} weight "
                            f"blobs, this one has {len(shapes)}{hint}")
  for i, ((_, label, dims), shape) in enumerate(zip(layout, shapes)):
    if len(shape) != dims.count(",") + 1:
      raise BrowserModelError(f"{where}: blob {i} ({label}) has shape {list(shape)}, expected "
                              f"{dims.count(',') + 1} dimension(s) [{dims}]")
  by_label = {label: shape for (_, label, _), shape in zip(layout, shapes)}
  sizes = {k: int(by_label[label][axis]) for k, (label, axis) in _SIZE_FROM.items()
           if label in by_label}
  if kind == "gen":
    sizes.pop("Z", None)
  named = ", ".join(f"{k}={v}" for k, v in sizes.items())
  for i, ((_, label, dims), shape) in enumerate(zip(layout, shapes)):
    want = _dims(dims, sizes)
    if tuple(shape) != want:
      raise BrowserModelError(f"{where}: blob {i} ({label}) has shape {list(shape)}, expected "
                              f"[{dims}] = {list(want)} ({named})")
  if sizes["Y"] < 9 or (sizes["Y"] - 3) % 6:
    raise BrowserModelError(f"{where}: output width Y={sizes['Y']} is not 6M + 3 for any M >= 1")
  return sizes


# ----------------------------------------------------------------------------
# Reading.


# N_max of the models this reads: the released ones use 100-250; a larger value would be
# a broken file (the sampler allocates [count, N_max, 5] arrays).
MAX_SEQ_LEN = 10_000


def _finite(x) -> bool:
  try:
    return math.isfinite(x)
  except OverflowError:  # an int too large for a float
    return False


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _check_info(info, where: str) -> str:
  """Validates the info record; returns the kind, "gen" or "vae"."""
  if not isinstance(info, dict):
    raise BrowserModelError(f"{where}: the first element (info) should be an object, "
                            f"got {type(info).__name__}")
  for key in ("mode", "version", "max_seq_len", "scale_factor"):
    if key not in info:
      raise BrowserModelError(f"{where}: info has no {key!r} (keys: {sorted(info)})")
  mode, version = info["mode"], info["version"]
  if isinstance(mode, bool) or not isinstance(mode, (int, str)) or mode not in MODES:
    raise BrowserModelError(f"{where}: unknown mode {mode!r}; known: 0 or 1 (VAE), 2 or 'gen' "
                            f"(decoder-only)")
  if isinstance(version, bool) or version not in KNOWN_VERSIONS:
    raise BrowserModelError(f"{where}: unknown version {version!r}; known: {list(KNOWN_VERSIONS)}")
  n, scale = info["max_seq_len"], info["scale_factor"]
  if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEQ_LEN:
    raise BrowserModelError(f"{where}: max_seq_len should be an integer from 1 to {MAX_SEQ_LEN}, "
                            f"got {_short(n)}")
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
      _finite(scale) and scale > 0):
    raise BrowserModelError(f"{where}: scale_factor should be a positive number, got "
                            f"{_short(scale)}")
  return MODES[mode]


def _set(tree: dict, path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path):
  for key in path:
    tree = tree[key]
  return tree


def parse(obj, where: str = "<model>") -> BrowserModel:
  """A decoded JSON value [info, shapes, blobs] -> BrowserModel (params as float32 NumPy)."""
  if not isinstance(obj, list) or len(obj) != 3:
    got = f"a list of {len(obj)}" if isinstance(obj, list) else f"a JSON {type(obj).__name__}"
    raise BrowserModelError(f"{where}: expected a JSON array [info, shapes, weights], got {got}")
  info, shapes, blobs = obj
  kind = _check_info(info, where)
  if not isinstance(shapes, list) or not all(
      isinstance(s, list) and s and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                        for d in s) for s in shapes):
    raise BrowserModelError(f"{where}: the second element should be a list of shapes "
                            f"(lists of positive integers)")
  if not isinstance(blobs, list) or len(blobs) != len(shapes):
    n = len(blobs) if isinstance(blobs, list) else "no list of"
    raise BrowserModelError(f"{where}: {len(shapes)} shapes but {n} weight blobs")
  sizes = check_shapes(kind, shapes, where)
  params: dict = {}
  for i, ((path, label, _), shape, text) in enumerate(zip(LAYOUTS[kind], shapes, blobs)):
    w = decode_blob(text, int(np.prod(shape)), f"{where}: blob {i} ({label}, shape {shape})")
    _set(params, path, w.reshape(shape))
  if kind == "vae":  # forward and backward cells stacked on a leading axis of 2
    enc = params["encoder"]["rnn"]
    params["encoder"]["rnn"] = {k: np.stack([v[0], v[1]]) for k, v in enc.items()}
    if info["version"] < 6:
      warnings.warn(f"{where}: version {info['version']} VAE: the browser squashes z with tanh "
                    f"before the initial state in one of its two paths; imported without it")
  M = (sizes["Y"] - 3) // 6
  if kind == "vae":
    spec = ModelSpec(enc_model="lstm", enc_rnn_size=sizes["E"], z_size=sizes["Z"],
                     dec_model="lstm", dec_rnn_size=sizes["H"], num_mixture=M, conditional=True)
  else:  # the encoder fields keep their defaults and go unused
    spec = ModelSpec(dec_model="lstm", dec_rnn_size=sizes["H"], num_mixture=M, conditional=False)
  facts = DataFacts(scale_factor=float(info["scale_factor"]), max_seq_len=int(info["max_seq_len"]))
  return BrowserModel(info=dict(info), spec=spec, params=params, facts=facts)


def read(path: str) -> BrowserModel:
  """A model file -> BrowserModel; every problem is a BrowserModelError naming the file."""
  try:
    with open(path, "rb") as f:
      text = f.read()
  except OSError as e:
    raise BrowserModelError(f"{path}: cannot read ({e.strerror or e})") from None
  try:
    obj = json.loads(text)
  except UnicodeDecodeError:
    raise BrowserModelError(f"{path}: not UTF-8 text") from None
  except json.JSONDecodeError as e:
    raise BrowserModelError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column "
                            f"{e.colno}; a truncated download?)") from None
  except RecursionError:
    raise BrowserModelError(f"{path}: JSON nested too deeply to be a model file") from None
  except ValueError as e:  # e.g. an integer longer than Python's digit limit
    raise BrowserModelError(f"{path}: not readable as a model file ({str(e)[:200]})") from None
  return parse(obj, path)


# ----------------------------------------------------------------------------
# Writing.


def to_json(spec: ModelSpec, params, info: dict, *, clip: bool = False) -> tuple[list, int]:
  """(the [info, shapes, blobs] value, weights clipped) for an LSTM model's params.

  `info` needs name, max_seq_len and scale_factor; mode and version are set
  here. The shapes are checked exactly as on import.
  """
  cells = {"decoder": spec.dec_model} | ({"encoder": spec.enc_model} if spec.conditional else {})
  for part, cell in cells.items():
    if cell != "lstm":
      raise BrowserModelError(f"the {part} is a {cell!r} cell; the browser format holds plain "
                              f"LSTM cells only (no layer_norm or hyper)")
  kind = "vae" if spec.conditional else "gen"
  info = {"mode": 0 if spec.conditional else 2, "version": EXPORT_VERSION,
          **{k: v for k, v in info.items() if k not in ("mode", "version")}}
  where = f"export of {info.get('name', 'model')}"
  _check_info(info, where)
  arrays = [np.asarray(_get(params, path)) for path, _, _ in LAYOUTS[kind]]
  shapes = [list(a.shape) for a in arrays]
  check_shapes(kind, shapes, where)
  if spec.num_mixture != BROWSER_MIXTURES:
    warnings.warn(f"{where}: {spec.num_mixture} mixture components; the browser ports assume "
                  f"{BROWSER_MIXTURES} and will misread the head")
  blobs, clipped = [], 0
  for (_, label, _), a in zip(LAYOUTS[kind], arrays):
    text, n = encode_blob(a, f"{where}: {label}", clip)
    blobs.append(text)
    clipped += n
  if clipped:
    warnings.warn(f"{where}: clipped {clipped} weight(s) to +-{MAX_WEIGHT:g}")
  return [info, shapes, blobs], clipped


def write(path: str, spec: ModelSpec, params, info: dict, *, clip: bool = False) -> tuple[dict, int]:
  """Writes the model file atomically, as compact JSON with a final newline like the
  published files; returns (the info written, the number of weights clipped)."""
  from sketch_vae.checkpoint import write_text_atomic
  value, clipped = to_json(spec, params, info, clip=clip)
  write_text_atomic(path, json.dumps(value, separators=(",", ":")) + "\n")
  return value[0], clipped
