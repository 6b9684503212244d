"""Training: state, optimiser, the per-device train and eval steps, and the loop.

The per-device step is a pure function `(state, batch, key) -> (state, metrics)`
with the config bound before pmap; `parallel.py` places it on devices. A batch
is a dict of `strokes` [B, N_max + 1, 5], `lengths` [B], `rows` [B] (global
row index: the row's randomness comes from it, see keys.py) and, for
evaluation, `weights` [B].
"""
from __future__ import annotations

import functools
import queue
import threading
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sketch_vae import checkpoint as ckpt_lib
from sketch_vae import config as config_lib
from sketch_vae import data as data_lib
from sketch_vae import keys as keys_lib
from sketch_vae import evaluation, losses, model, parallel
from sketch_vae.reporting import Reporter


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar: updates done
  params: Any
  opt_state: Any


def make_optimizer(t: config_lib.TrainSpec) -> optax.GradientTransformation:
  """Clip (by value, as the original, or by global norm), then Adam's direction.

  The step size, -lr(step), is applied by `train_step` from the state's step
  rather than by an optax schedule with its own count: an update skipped for a
  non-finite loss keeps Adam's moments and count, but the rate (like the KL
  weight and the data) still follows the step, and the logged rate is the one
  applied.
  """
  clip = optax.clip(t.grad_clip) if t.clip_mode == "value" else optax.clip_by_global_norm(t.grad_clip)
  return optax.chain(clip, optax.scale_by_adam())


def learning_rate(t: config_lib.TrainSpec, step):
  return losses.learning_rate(step, learning_rate=t.learning_rate, decay_rate=t.decay_rate,
                              min_learning_rate=t.min_learning_rate)


def create_state(config: config_lib.Config, key) -> TrainState:
  params = model.init(config.model, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=make_optimizer(config.train).init(params))


def compute_losses(config: config_lib.Config, params, batch, step_key, step, *, train: bool,
                   axis_name: Optional[str] = None):
  """Loss and the reported metrics for one (per-device) batch; with `axis_name`
  the KL floor applies to the mean over all devices' rows (equal shards)."""
  spec, t = config.model, config.train
  row_keys = keys_lib.row_keys(step_key, batch["rows"])
  out = model.forward(spec, params, batch["strokes"], batch["lengths"], row_keys, train=train)
  weights = batch.get("weights")
  recon = losses.reconstruction(out.mixture, batch["strokes"][:, 1:], batch["lengths"], weights)
  if spec.conditional:
    kl_raw = losses.kl(out.encoded.mu, out.encoded.presig, weights)
    batch_kl = None if axis_name is None else jax.lax.pmean(jax.lax.stop_gradient(kl_raw), axis_name)
    kl_floored = losses.floored_kl(kl_raw, t.kl_tolerance, batch_kl)
  else:
    kl_raw = kl_floored = jnp.zeros((), jnp.float32)
  kl_w = losses.kl_weight(step, kl_weight=t.kl_weight, kl_weight_start=t.kl_weight_start,
                          kl_decay_rate=t.kl_decay_rate)
  recon_loss = recon.offset + recon.pen
  loss = recon_loss + kl_w * kl_floored
  metrics = {"loss": loss, "recon_loss": recon_loss, "offset_loss": recon.offset,
             "pen_loss": recon.pen, "pen_loss_masked": recon.pen_masked, "kl_loss": kl_floored,
             "kl_loss_raw": kl_raw, "kl_weight": kl_w}
  return loss, metrics


def train_step(config: config_lib.Config, state: TrainState, batch, key, *,
               axis_name: Optional[str] = None):
  """One update. `key` is the run's base key; the step's key is fold_in(key, step).

  Gradients are averaged over devices. A non-finite loss or gradient leaves the
  state unchanged (never a NaN in the parameters) and is counted in
  `nonfinite`; the loop stops or goes on as `on_nonfinite` says.
  """
  step_key = jax.random.fold_in(key, state.step)
  grad_fn = jax.value_and_grad(
      lambda p: compute_losses(config, p, batch, step_key, state.step, train=True,
                               axis_name=axis_name), has_aux=True)
  (loss, metrics), grads = grad_fn(state.params)
  grads = parallel.mean_over_devices(grads, axis_name)
  metrics = parallel.mean_over_devices(metrics, axis_name)
  finite = jnp.isfinite(metrics["loss"]) & jnp.all(
      jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  tx = make_optimizer(config.train)
  directions, new_opt = tx.update(grads, state.opt_state, state.params)
  lr = learning_rate(config.train, state.step)
  new_params = optax.apply_updates(state.params, jax.tree.map(lambda d: -lr * d, directions))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                         opt_state=keep(new_opt, state.opt_state))
  metrics["lr"] = lr
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  return new_state, metrics


def eval_step(config: config_lib.Config, params, batch, key, *, axis_name: Optional[str] = None):
  """Weighted sums over this batch (divide by `count` after summing all batches)."""
  _, m = compute_losses(config, params, batch, key, 0, train=False)
  n = jnp.sum(batch["weights"])
  sums = {k: m[k] * n for k in ("recon_loss", "offset_loss", "pen_loss", "pen_loss_masked",
                                "kl_loss_raw")}
  sums["count"] = n
  return parallel.sum_over_devices(sums, axis_name)


# ----------------------------------------------------------------------------
# Host side.


def _prefetch(batcher: data_lib.Batcher, start: int, stop: int, lay: parallel.Layout, depth=3):
  """Builds batches for the coming steps on a background thread (overlaps with compute)."""
  q: queue.Queue = queue.Queue(maxsize=depth)

  def work():
    for step in range(start, stop):
      x, lengths = batcher.train_batch(step, rows=lay.host_rows)
      rows = np.arange(lay.global_batch, dtype=np.int32)[lay.host_rows]
      q.put({"strokes": x, "lengths": lengths, "rows": rows})

  threading.Thread(target=work, daemon=True).start()
  return q


class NonFiniteLoss(RuntimeError):
  pass


def fit(config: config_lib.Config, dataset: data_lib.Dataset, workdir: str, *,
        num_devices: int = 0, reporter: Optional[Reporter] = None) -> dict:
  """Trains (or resumes) in `workdir` until `num_steps`; returns the last metrics."""
  config_lib.check(config)
  t = config.train
  lay = parallel.layout(t.batch_size, num_devices)
  ckpts = ckpt_lib.Checkpoints(workdir)
  state = create_state(config, jax.random.key(t.seed))
  start = ckpts.latest_step()
  if start is not None:
    _, restored = ckpts.restore(state._asdict(), "latest")
    state = TrainState(**restored)
  start = int(start or 0)
  batcher = data_lib.Batcher(dataset.splits["train"], data_lib.BatchSpec(
      t.batch_size, dataset.facts.max_seq_len, t.random_scale_factor, t.augment_stroke_prob), t.seed)
  if ckpts.writer:  # only once the data and devices are known to work
    ckpt_lib.save_run_files(workdir, config, dataset.facts, sources=dataset.sources)
  reporter = reporter or Reporter(workdir, resume_step=start, enabled=ckpts.writer)
  if start:
    reporter.say(f"resuming from step {start} in {workdir}")
  p_train = parallel.pmap(functools.partial(train_step, config, axis_name=parallel.AXIS), lay)
  p_eval = evaluation.pmap_eval(config, lay)
  state_rep = parallel.replicate(state, lay)
  base_key = jax.random.key(t.seed)
  best = ckpts.best_metric()
  batches = _prefetch(batcher, start, t.num_steps, lay)
  window, window_start, last = [], time.time(), {}
  for step in range(start, t.num_steps):
    state_rep, metrics = p_train(state_rep, parallel.shard(batches.get(), lay), base_key)
    window.append(metrics)
    done = step + 1
    is_log = done % t.log_every == 0 or done == t.num_steps
    is_eval = done % t.eval_every == 0 or done == t.num_steps
    is_save = is_eval or done % t.save_every == 0 or done == t.num_steps
    if is_log or is_save:  # the host waits here anyway; no sync on other steps
      fetched = jax.device_get([jax.tree.map(lambda a: a[0], m) for m in window])
      bad = [start_step for start_step, m in zip(range(done - len(fetched), done), fetched)
             if m["nonfinite"] > 0]
      if bad and t.on_nonfinite == "stop":
        ckpts.close()
        raise NonFiniteLoss(f"non-finite loss or gradient at step {bad[0]}; the update was not "
                            f"applied and no checkpoint was written after it (latest saved: "
                            f"{ckpts.latest_step()}). Use --on_nonfinite=skip to go on.")
    if is_log:
      elapsed = max(time.time() - window_start, 1e-9)
      # Skipped steps (on_nonfinite=skip) are counted, and left out of the means.
      finite = [m for m in fetched if m["nonfinite"] == 0] or fetched
      last = {k: float(np.mean([m[k] for m in finite])) for k in fetched[0]}
      last["skipped_steps"] = float(len(bad))
      last["sketches_per_sec"] = len(fetched) * t.batch_size / elapsed
      reporter.write(done, "train", last)
      reporter.progress(done, t.num_steps, last)
      window, window_start = [], time.time()
    if is_eval and dataset.splits["valid"]:
      valid = evaluation.evaluate(config, state_rep.params, dataset.splits["valid"], dataset.facts,
                                  lay, p_eval, t.seed)
      valid["loss"] = evaluation.selection_loss(config, valid)
      reporter.write(done, "valid", valid)
      reporter.progress(done, t.num_steps, valid, split="valid")
      if best is None or valid["loss"] < best:
        best = valid["loss"]
        ckpts.save_best(done, parallel.unreplicate(state_rep)._asdict(), best)
    if done % t.save_every == 0 or done == t.num_steps:
      ckpts.save_latest(done, parallel.unreplicate(state_rep)._asdict())
      window_start = time.time() if not window else window_start
  ckpts.close()
  reporter.close()
  return last
