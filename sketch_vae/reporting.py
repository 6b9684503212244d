"""Where metrics go: metrics.jsonl, TensorBoard event files and a console progress line."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional, TextIO

METRIC_NAMES = ("recon_loss", "offset_loss", "pen_loss", "kl_loss", "kl_loss_raw", "loss",
                "lr", "kl_weight", "sketches_per_sec")


class Reporter:
  """One JSON object per logged event in metrics.jsonl, the same scalars in TensorBoard."""

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True,
               console: Optional[TextIO] = sys.stdout):
    self.enabled = enabled
    self.console = console
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.start = time.time()
    self.tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # imported late: only the writer needs it
    # TensorBoard purges events at steps >= purge_step; the checkpoint's own step stays, as in
    # metrics.jsonl. Event files are named by the second: the suffix keeps a writer reopened
    # within the same second from replacing the last one's file.
    self.tb = SummaryWriter(os.path.join(workdir, "tb"),
                            purge_step=resume_step + 1 if resume_step else None,
                            filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def _truncate_after(self, step: int) -> None:
    """A resumed run re-does the steps after its checkpoint: drop their old lines."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [l for l in f if l.strip()]
    kept = [l for l in lines if json.loads(l).get("step", 0) <= step]
    if len(kept) != len(lines):
      with open(self.path, "w") as f:
        f.writelines(kept)

  def write(self, step: int, split: str, metrics: dict) -> dict:
    event = {"step": int(step), "split": split}
    event.update({k: float(v) for k, v in metrics.items()})
    event["wall_time"] = time.time()
    event["elapsed_sec"] = round(time.time() - self.start, 3)
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(event) + "\n")
      for k, v in metrics.items():
        if math.isfinite(float(v)):
          self.tb.add_scalar(f"{split}/{k}", float(v), int(step))
      self.tb.flush()
    return event

  def progress(self, step: int, num_steps: int, metrics: dict, split: str = "train") -> None:
    if self.console is None or not self.enabled:
      return
    parts = [f"{split} step {step}/{num_steps}"]
    for k in ("loss", "recon_loss", "kl_loss", "lr", "kl_weight", "sketches_per_sec"):
      if k in metrics:
        parts.append(f"{k} {float(metrics[k]):.4g}")
    if metrics.get("skipped_steps"):
      parts.append(f"skipped {int(metrics['skipped_steps'])} non-finite step(s)")
    print("  ".join(parts), file=self.console, flush=True)

  def say(self, text: str) -> None:
    if self.console is not None and self.enabled:
      print(text, file=self.console, flush=True)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
