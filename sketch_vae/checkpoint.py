"""Orbax checkpoints (latest and best-by-validation), with the config and data facts beside them.

Workdir layout:
  config.json        the run's Config (model spec + training hyperparameters)
  data_facts.json    scale factor and N_max the model was trained with
  dataset.json       the data files it was trained on
  checkpoints/latest/<step>/   the newest states (Orbax, atomic: written to a
                               temporary directory, renamed when complete)
  checkpoints/best/<step>/     the state with the best validation loss so far

Orbax finalises a step by renaming its temporary directory, so a process killed
mid-save leaves no half-written step behind: the next run restores the last
complete one and cleans up the rest. Only process 0 writes; every process can
read.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from sketch_vae.config import Config
from sketch_vae.data import DataFacts

CONFIG_FILE = "config.json"
FACTS_FILE = "data_facts.json"


def write_text_atomic(path: str, text: str) -> None:
  """Write to a temporary file in the same directory, then rename over `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # Not tempfile.mkstemp: it creates 0600 files, and exported models and run files are meant
  # to be shared like any other output. Mode 0666 lets the kernel apply the umask (and any
  # default ACL) as open() does; reading the umask ourselves would mean setting it, which
  # races with other threads. O_EXCL and a random name keep the temporary file ours alone.
  tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  with os.fdopen(fd, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def save_run_files(workdir: str, config: Config, facts: DataFacts, sources=()) -> None:
  write_text_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json())
  write_text_atomic(os.path.join(workdir, FACTS_FILE), facts.to_json())
  if sources:
    write_text_atomic(os.path.join(workdir, "dataset.json"),
                      json.dumps({"sources": [os.path.abspath(s) for s in sources]}, indent=2))


def load_run_files(workdir: str) -> tuple[Config, DataFacts]:
  cfg_path, facts_path = os.path.join(workdir, CONFIG_FILE), os.path.join(workdir, FACTS_FILE)
  for path in (cfg_path, facts_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: {workdir} is not a sketch_vae workdir "
                              f"(train a model there, or import one with experiments.import_js)")
  with open(cfg_path) as f:
    config = Config.from_json(f.read())
  with open(facts_path) as f:
    facts = DataFacts.from_json(f.read())
  return config, facts


class _QuietReadOnly(logging.Filter):
  """Drops Orbax's warning that a reader's directory is read only: readers (evaluate, the
  samplers, another host) open it so on purpose, and the warning printed before every
  launcher's output."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_QuietReadOnly())


def _manager(directory: str, max_to_keep: int, writer: bool) -> ocp.CheckpointManager:
  index = jax.process_index()
  if writer:
    os.makedirs(directory, exist_ok=True)  # Orbax will not create it with active_processes set
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep if writer else None, create=False, cleanup_tmp_directories=writer,
      enable_async_checkpointing=False, read_only=not writer,
      save_interval_steps=1 if writer else 0,  # Orbax warns unless a reader says 0
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=index, active_processes={index}))
  return ocp.CheckpointManager(directory, options=options)


class Checkpoints:
  """Latest and best states of one workdir."""

  def __init__(self, workdir: str, *, writer: Optional[bool] = None):
    self.workdir = os.path.abspath(workdir)
    self.writer = (jax.process_index() == 0) if writer is None else writer
    root = os.path.join(self.workdir, "checkpoints")
    # A reader before the first save (another host of a fresh multi-host run) sees none.
    have = self.writer or os.path.isdir(os.path.join(root, "latest"))
    self.latest = _manager(os.path.join(root, "latest"), 2, self.writer) if have else None
    have = self.writer or os.path.isdir(os.path.join(root, "best"))
    self.best = _manager(os.path.join(root, "best"), 1, self.writer) if have else None

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step() if self.latest else None

  def best_step(self) -> Optional[int]:
    return self.best.latest_step() if self.best else None

  def best_metric(self) -> Optional[float]:
    step = self.best_step()
    if step is None:
      return None
    path = os.path.join(self.workdir, "checkpoints", "best", str(step), "best.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return float(json.load(f)["valid_loss"])

  def save_latest(self, step: int, state_host: Any) -> None:
    if self.writer:
      self.latest.save(step, args=ocp.args.StandardSave(state_host), force=True)
      self.latest.wait_until_finished()

  def save_best(self, step: int, state_host: Any, valid_loss: float) -> None:
    if not self.writer:
      return
    self.best.save(step, args=ocp.args.StandardSave(state_host), force=True)
    self.best.wait_until_finished()
    write_text_atomic(os.path.join(self.workdir, "checkpoints", "best", str(step), "best.json"),
                      json.dumps({"step": step, "valid_loss": valid_loss}))

  def restore(self, target: Any, which: str = "latest") -> tuple[int, Any]:
    """Restores `which` = 'latest', 'best' or a step number, shaped like `target`."""
    managers = [m for m in (self.latest, self.best) if m is not None]
    if which in ("latest", "best"):
      manager = self.latest if which == "latest" else self.best
      step = manager.latest_step() if manager else None
      if step is None and which == "best":  # a run too short to have validated
        manager, step = self.latest, self.latest_step()
    else:
      step = int(which)
      have = {s: m for m in managers for s in m.all_steps()}
      if step not in have:
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.workdir}; have {sorted(have)}")
      manager = have[step]
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.workdir}")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), target)
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:
      if "tree structures do not match" not in str(e):
        raise
      raw = manager.restore(step, args=ocp.args.StandardRestore())
      restored = _upgrade(raw, abstract, f"{self.workdir} step {step}")
    return step, restored

  def close(self) -> None:
    for m in (self.latest, self.best):
      if m is not None:
        m.close()


def _upgrade(raw: Any, abstract: Any, where: str) -> Any:
  """A checkpoint of an earlier layout, restored without a target, in `abstract`'s layout.

  The one change so far: until 2026-11-25 the optimizer state was (clip, Adam,
  schedule count); the rate now comes from the step (train.make_optimizer), so
  the schedule's count is dropped. Anything else that does not match is an error.
  """
  opt = raw.get("opt_state") if isinstance(raw, dict) else None
  if isinstance(opt, (list, tuple)) and len(opt) == 3 and isinstance(opt[2], dict) \
      and set(opt[2]) == {"count"}:
    raw = {**raw, "opt_state": list(opt[:2])}
  leaves, want = jax.tree.leaves(raw), jax.tree.leaves(abstract)
  shapes = lambda xs: [tuple(np.shape(x)) for x in xs]
  if len(leaves) != len(want) or shapes(leaves) != shapes(want):
    raise ValueError(f"the checkpoint {where} does not match this model and version of "
                     f"sketch_vae ({len(leaves)} arrays saved, {len(want)} expected); train "
                     f"in a new workdir")
  return jax.tree.unflatten(jax.tree.structure(abstract),
                            [np.asarray(x, w.dtype) for x, w in zip(leaves, want)])


def load_model(workdir: str, which: str = "best"):
  """(config, facts, params) of a workdir, from its 'best', 'latest' or a numbered checkpoint."""
  # Checked here, once for every launcher (evaluate, export_js, the samplers, serve), before
  # anything is read: otherwise a name like "foo" surfaces as int()'s "invalid literal".
  if which not in ("best", "latest") and not (isinstance(which, str) and which.isdecimal()):
    raise ValueError(f"checkpoint must be best, latest or a step number, not {which!r}")
  from sketch_vae import train  # late: train imports this module
  config, facts = load_run_files(workdir)
  target = jax.eval_shape(lambda: train.create_state(config, jax.random.key(0)))._asdict()
  ckpts = Checkpoints(workdir, writer=False)
  try:
    step, state = ckpts.restore(target, which)
  finally:
    ckpts.close()
  return config, facts, state["params"], step
