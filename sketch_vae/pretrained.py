"""Browser models (bundled or from a file) as workdirs: import, export, and a reusable cache.

An imported model becomes an ordinary workdir (checkpoint.py's layout), so every
launcher that takes --workdir (evaluate, sample, complete; train, to fine-tune)
works on it unchanged:
  config.json       the ModelSpec read from the file's shapes, the original default TrainSpec
  data_facts.json   scale_factor and max_seq_len from the file's info
  checkpoints/latest/0, checkpoints/best/0   TrainState(step 0, the params, a fresh Adam state)
  imported.json     the source file (path, sha256, bytes) and its info
config.json is written last, so a workdir that has it is complete. The best
checkpoint records a validation loss of +inf ("never validated here"): the
first validation of a fine-tuning run replaces it.

Bundled models live in sketch_vae/assets/models (see its README.md) and are
named by their stem: `cat` is assets/models/cat.gen.json.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from sketch_vae import browser, quickdraw_dataset
from sketch_vae import checkpoint as ckpt_lib
from sketch_vae import config as config_lib
from sketch_vae.browser import BrowserModelError

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "models")
IMPORTED_FILE = "imported.json"
BUNDLED_PREFIX = "bundled:"
_SUFFIXES = (".gen.json", ".vae.json", ".json")


def default_cache_dir() -> str:
  """Where `ensure_workdir` keeps imported models unless told otherwise."""
  return os.path.join(os.path.expanduser("~"), ".cache", "sketch_vae", "models")


def bundled_models() -> dict[str, str]:
  """{name: path} of the model files shipped in the package."""
  out = {}
  for entry in sorted(os.listdir(MODELS_DIR)) if os.path.isdir(MODELS_DIR) else []:
    for suffix in _SUFFIXES:
      if entry.endswith(suffix):
        out.setdefault(entry[:-len(suffix)], os.path.join(MODELS_DIR, entry))
        break
  return out


def resolve_model(name_or_path: str) -> str:
  """A model file path: an existing file as is, else a bundled name (`cat` or `bundled:cat`)."""
  name = name_or_path[len(BUNDLED_PREFIX):] if name_or_path.startswith(BUNDLED_PREFIX) else None
  if name is None and os.path.isfile(name_or_path):
    return name_or_path
  bundled = bundled_models()
  key = name if name is not None else name_or_path
  if key in bundled:
    return bundled[key]
  raise BrowserModelError(f"{name_or_path}: no such model file, and not a bundled model "
                          f"(bundled: {', '.join(bundled) or 'none'})")


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------
# Import.


def import_to_workdir(name_or_path: str, workdir: str) -> browser.BrowserModel:
  """Reads a browser model (file or bundled name) and writes it as a new workdir."""
  from sketch_vae import train  # late: train pulls in the whole training stack
  path = resolve_model(name_or_path)
  model = browser.read(path)
  if os.path.exists(os.path.join(workdir, ckpt_lib.CONFIG_FILE)) or os.path.exists(
      os.path.join(workdir, "checkpoints")):
    raise BrowserModelError(f"{workdir}: already a workdir; import into a new directory")
  config = config_lib.Config(model=model.spec)
  params = jax.tree.map(jnp.asarray, model.params)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=train.make_optimizer(config.train).init(params))
  host = jax.device_get(state._asdict())
  ckpts = ckpt_lib.Checkpoints(workdir, writer=True)
  try:
    ckpts.save_latest(0, host)
    ckpts.save_best(0, host, float("inf"))
  finally:
    ckpts.close()
  record = {"format": "sketch-rnn-js", "source": os.path.abspath(path),
            "sha256": quickdraw_dataset.file_sha256(path),
            "bytes": os.path.getsize(path), "info": model.info, "step": 0,
            "quantisation_step": browser.QUANT_STEP}
  ckpt_lib.write_text_atomic(os.path.join(workdir, IMPORTED_FILE), json.dumps(record, indent=2))
  ckpt_lib.save_run_files(workdir, config, model.facts)  # last: its presence marks completion
  return model


def ensure_workdir(name_or_path: str, cache_dir: Optional[str] = None) -> str:
  """A workdir for `name_or_path`, for launchers' --workdir flags.

  An existing workdir (a directory with config.json) is returned as is; a model
  file or `bundled:NAME` is imported once into cache_dir/<stem>-<sha256[:12]>
  and reused after that (a changed file gets a new directory). The import goes
  to a temporary directory renamed into place, so concurrent callers never see
  half a workdir.
  """
  if os.path.isfile(os.path.join(name_or_path, ckpt_lib.CONFIG_FILE)):
    return name_or_path
  if not (name_or_path.startswith(BUNDLED_PREFIX) or os.path.isfile(name_or_path)):
    raise BrowserModelError(
        f"{name_or_path}: not a workdir (no {ckpt_lib.CONFIG_FILE}), a model file, or "
        f"{BUNDLED_PREFIX}NAME (bundled: {', '.join(bundled_models()) or 'none'})")
  path = resolve_model(name_or_path)
  cache_dir = cache_dir or default_cache_dir()
  stem = os.path.basename(path).split(".")[0]
  target = os.path.join(cache_dir, f"{stem}-{quickdraw_dataset.file_sha256(path)[:12]}")
  if os.path.isfile(os.path.join(target, ckpt_lib.CONFIG_FILE)):
    return target
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=cache_dir, prefix=f".{stem}-")
  try:
    import_to_workdir(path, tmp)
    try:
      os.rename(tmp, target)
    except OSError:  # another process got there first; use its copy
      if not os.path.isfile(os.path.join(target, ckpt_lib.CONFIG_FILE)):
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return target


# ----------------------------------------------------------------------------
# Export.


class ExportResult(NamedTuple):
  path: str
  info: dict  # as written (mode and version included)
  step: int  # the checkpoint's step
  clipped: int  # weights clipped to +-10 (0 unless clip=True)


def _reported_losses(workdir: str, step: int, imported: Optional[dict], conditional: bool) -> dict:
  """r_loss / kl_loss for info: the source file's own, if the params are the imported ones;
  else the test (or else valid) evaluation logged in metrics.jsonl at this step."""
  if imported is not None and int(imported.get("step", -1)) == step:
    keys = ("r_loss", "kl_loss", "training_size", "training_steps")
    return {k: imported["info"][k] for k in keys if k in imported["info"]}
  events = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        event = json.loads(line) if line.strip() else {}
        if event.get("step") == step and event.get("split") in ("test", "valid"):
          events[event["split"]] = event
  out = {"training_steps": step}
  event = events.get("test") or events.get("valid")
  if event is not None:
    out["r_loss"] = event["recon_loss"]
    if conditional and "kl_loss" in event:
      out["kl_loss"] = event["kl_loss"]
  return out


def export_workdir(workdir: str, output: str, *, checkpoint: str = "best",
                   name: Optional[str] = None, clip: bool = False) -> ExportResult:
  """Writes a workdir's checkpoint as a browser model file (LSTM models only)."""
  config, facts, params, step = ckpt_lib.load_model(workdir, checkpoint)
  step = int(step)
  imported = _read_json(os.path.join(workdir, IMPORTED_FILE))
  if name is None:
    name = (imported or {}).get("info", {}).get("name") or os.path.basename(
        os.path.abspath(workdir))
  info = {"max_seq_len": facts.max_seq_len, "name": name, "scale_factor": facts.scale_factor}
  info.update(_reported_losses(workdir, step, imported, config.model.conditional))
  written, clipped = browser.write(output, config.model, jax.device_get(params), info, clip=clip)
  return ExportResult(path=output, info=written, step=step, clipped=clipped)
