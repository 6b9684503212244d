"""The sweep without its flags: plan, one model's training, the loop, progress lines.

run.py only parses flags into a `Sweep` and calls `run`; keeping the flags
there lets the tests (and report.py, figures.py) import all of this in one
process with other launchers, whose flags would otherwise clash.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional

from sketch_vae.config import Config, PRESETS

from experiments.paper import make_datasets

SETTINGS = ("1.00", "0.50", "0.25", "decoder")
DONE_FILE = "done.json"


def setting_dir(setting: str) -> str:
  return "decoder_only" if setting == "decoder" else f"wkl_{float(setting):.2f}"


def setting_overrides(setting: str) -> dict:
  if setting == "decoder":
    return dict(conditional=False)
  return dict(conditional=True, kl_weight=float(setting))


def parse_hparams(text: str) -> dict:
  """'a=1,b=0.5,c=lstm' -> typed overrides, typed as the Config field they name."""
  defaults = {**dataclasses.asdict(Config().model), **dataclasses.asdict(Config().train)}
  out = {}
  for item in [x for x in text.split(",") if x.strip()]:
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or name not in defaults:
      raise ValueError(f"bad --hparams item {item!r}: expected name=value with a Config field name")
    kind = type(defaults[name])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"{name} is true or false, not {value!r}")
      out[name] = value.lower() in ("true", "1")
    else:
      out[name] = kind(value)
  return out


@dataclasses.dataclass(frozen=True)
class Job:
  dataset: str
  setting: str
  workdir: str
  paths: tuple
  config: Config

  @property
  def name(self) -> str:
    return f"{self.dataset}/{setting_dir(self.setting)}"


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Everything a sweep needs; `main` fills it from flags, tests build it directly."""
  datasets: tuple = ("cat", "pig", "cat+pig")
  settings: tuple = SETTINGS
  root: str = "runs/paper"
  data_dir: str = str(make_datasets.DEFAULT_OUTPUT)
  preset: str = "small"
  num_steps: Optional[int] = None
  hparams: str = ""
  parallel: int = 1
  num_devices: int = 0
  eval_batch_size: int = 100
  figures: bool = True
  reevaluate: bool = False

  def config(self, setting: str) -> Config:
    config = PRESETS[self.preset].replace(**parse_hparams(self.hparams))
    if self.num_steps:
      config = config.replace(num_steps=self.num_steps)
    return config.replace(**setting_overrides(setting))

  def classes(self, dataset: str) -> list:
    return [c for c in dataset.split("+") if c]

  def class_path(self, name: str, make: bool = True) -> str:
    path = os.path.join(self.data_dir, f"{name}.npz")
    return make_datasets.make_class(name, self.data_dir) if make else path

  def jobs(self, make_data: bool = True) -> list:
    for s in self.settings:
      if s != "decoder":
        float(s)  # a clear ValueError for a typo, before anything runs
    return [Job(d, s, os.path.join(self.root, d, setting_dir(s)),
                tuple(self.class_path(c, make_data) for c in self.classes(d)), self.config(s))
            for d in self.datasets for s in self.settings]

  def argv(self) -> list:
    """Flags that rebuild this sweep in a `--worker` subprocess."""
    args = [f"--datasets={','.join(self.datasets)}", f"--settings={','.join(self.settings)}",
            f"--root={self.root}", f"--data_dir={self.data_dir}", f"--preset={self.preset}",
            f"--hparams={self.hparams}", f"--num_devices={self.num_devices}",
            f"--eval_batch_size={self.eval_batch_size}"]
    return args + ([f"--num_steps={self.num_steps}"] if self.num_steps else [])


# ----------------------------------------------------------------------------
# One model.


def read_done(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, DONE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_done(job: Job) -> bool:
  done = read_done(job.workdir)
  return done is not None and done["num_steps"] >= job.config.train.num_steps


def latest_step(workdir: str) -> int:
  from sketch_vae import checkpoint
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return 0
  ckpts = checkpoint.Checkpoints(workdir, writer=False)
  try:
    return int(ckpts.latest_step() or 0)
  finally:
    ckpts.close()


def train_job(job: Job, sweep: Sweep) -> dict:
  """Trains (or resumes) one model, scores it on test, writes done.json; returns its record."""
  from sketch_vae import checkpoint, data, train
  from experiments.paper import report
  facts = None
  if os.path.exists(os.path.join(job.workdir, checkpoint.FACTS_FILE)):
    saved, facts = checkpoint.load_run_files(job.workdir)
    want = job.config.replace(num_steps=saved.train.num_steps)
    if saved != want:
      raise ValueError(f"{job.workdir} holds a run with another configuration; use another --root "
                       f"or the same flags (saved: {saved.to_dict()})")
  dataset = data.load(list(job.paths), max_seq_len=job.config.train.max_seq_len, facts=facts)
  start, t0 = latest_step(job.workdir), time.time()
  train.fit(job.config, dataset, job.workdir, num_devices=sweep.num_devices)
  seconds = time.time() - t0
  test = report.evaluate_workdir(job.workdir, batch_size=sweep.eval_batch_size,
                                 num_devices=sweep.num_devices)
  record = dict(dataset=job.dataset, setting=job.setting, num_steps=job.config.train.num_steps,
                resumed_from=start, train_seconds=round(seconds, 2),
                seconds_per_step=seconds / max(job.config.train.num_steps - start, 1),
                finished_at=time.strftime("%Y-%m-%d %H:%M:%S"), test=test)
  checkpoint.write_text_atomic(os.path.join(job.workdir, DONE_FILE), json.dumps(record, indent=1))
  return record


# ----------------------------------------------------------------------------
# The sweep.


def _fmt(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
  """The one-line summary per finished model, with elapsed time and an ETA.

  The ETA assumes the seconds per step measured so far hold for the steps
  left (models differ in N_max, so it is rough), shared over `parallel`.
  """

  def __init__(self, jobs: list, todo: list, parallel: int):
    self.total, self.parallel, self.finished = len(jobs), parallel, 0
    self.start = time.time()
    self.left = {j.name: j.config.train.num_steps - latest_step(j.workdir) for j in todo}
    self.steps_done, self.seconds = 0, 0.0

  def skipped(self, job: Job) -> None:
    self.finished += 1
    self.left.pop(job.name, None)
    print(f"[{self.finished}/{self.total}] {job.name}: done already "
          f"({job.config.train.num_steps} steps), skipped", flush=True)

  def done(self, job: Job, record: dict) -> None:
    self.finished += 1
    self.left.pop(job.name, None)
    steps = record["num_steps"] - record["resumed_from"]
    self.steps_done += steps
    self.seconds += record["train_seconds"]
    per_step = self.seconds / max(self.steps_done, 1)
    eta = per_step * sum(self.left.values()) / self.parallel
    test = record["test"]
    print(f"[{self.finished}/{self.total}] {job.name}: {steps} steps in "
          f"{_fmt(record['train_seconds'])} ({1000 * record['seconds_per_step']:.0f} ms/step), "
          f"test L_R {test['recon_loss']:.4f} L_KL {test['kl_loss_raw']:.4f}; sweep elapsed "
          f"{_fmt(time.time() - self.start)}, ETA {_fmt(eta) if self.left else '0s'}", flush=True)


def _last_line(path: str) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(max(os.path.getsize(path) - 2048, 0))
      lines = [l for l in f.read().decode(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else ""
  except OSError:
    return ""


def run_parallel(jobs: list, sweep: Sweep, progress: Progress, poll: float = 2.0,
                 every: float = 120.0) -> list:
  """Trains `jobs` in up to `sweep.parallel` worker subprocesses; returns the failed ones."""
  env = dict(os.environ)
  # JAX takes 75% of a GPU's memory per process by default; N processes share one GPU.
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.75, 0.9 / sweep.parallel):.3f}")
  queue, running, failed, last_note = list(jobs), {}, [], time.time()
  while queue or running:
    while queue and len(running) < sweep.parallel:
      job = queue.pop(0)
      os.makedirs(job.workdir, exist_ok=True)
      log = open(os.path.join(job.workdir, "train.log"), "a")
      cmd = [sys.executable, "-m", "experiments.paper.run", *sweep.argv(),
             f"--worker={job.dataset}:{job.setting}"]
      running[job.name] = (job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                 env=env), log)
      print(f"started {job.name} (log: {log.name})", flush=True)
    time.sleep(poll)
    for name, (job, proc, log) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[name]
      if proc.returncode == 0 and read_done(job.workdir):
        progress.done(job, read_done(job.workdir))
      else:
        failed.append(job)
        print(f"FAILED {name} (exit {proc.returncode}): {_last_line(log.name)}", flush=True)
    if running and time.time() - last_note > every:
      last_note = time.time()
      for name, (job, _, log) in running.items():
        print(f"  {name}: {_last_line(log.name)}", flush=True)
  return failed


def run(sweep: Sweep, only_report: bool = False) -> int:
  """The whole sweep, then the table and the figures; returns an exit status."""
  from experiments.paper import figures, report  # late: they import this module
  jobs = sweep.jobs(make_data=not only_report)
  failed = []
  if not only_report:
    todo = [j for j in jobs if not is_done(j)]
    progress = Progress(jobs, todo, max(sweep.parallel, 1))
    for job in jobs:
      if job not in todo:
        progress.skipped(job)
    if sweep.parallel > 1:
      failed = run_parallel(todo, sweep, progress)
    else:
      from sketch_vae.train import NonFiniteLoss
      for job in todo:
        try:
          progress.done(job, train_job(job, sweep))
        except NonFiniteLoss as e:  # the other models still train
          failed.append(job)
          print(f"FAILED {job.name}: {e}", flush=True)
  rows = report.write(sweep, jobs)
  print(f"wrote {os.path.join(sweep.root, 'results.md')} and results.json ({len(rows)} rows)")
  if sweep.figures:
    for path in figures.draw_all(sweep, jobs):
      print(f"wrote {path}")
  return 1 if failed else 0
