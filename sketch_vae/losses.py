"""Reconstruction and KL losses; KL-weight annealing and learning-rate schedules.

Definitions (paper eq. 9-11 and the original model.py; see BUILD_NOTES.md):
  L_s  = -(1/N_max) sum_{i <= N_s} log sum_j pi_j N(dx_i, dy_i | ...)
  L_p  = -(1/N_max) sum_{i <= N_max} sum_k p_k log q_k   (padding included)
  L_R  = L_s + L_p, each averaged over the batch
  L_KL = -(1/(2 N_z)) sum (1 + sigma_hat - mu^2 - exp(sigma_hat)), averaged over the batch
  loss = L_R + w_KL(step) * max(L_KL, KL_min)
Both reconstruction terms divide by N_max, not by the sketch's length, so
numbers compare with the paper's.

Shape letters: B = batch, N = N_max predicted steps, Z = latent size.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sketch_vae import mdn


class ReconLosses(NamedTuple):
  offset: jax.Array  # L_s, batch mean
  pen: jax.Array  # L_p over all N_max steps (the paper's and the training definition)
  pen_masked: jax.Array  # L_p over the sketch only (the original's inference-mode variant)


def reconstruction(mix: mdn.Mixture, targets_BxNx5, lengths_B, weights_B=None) -> ReconLosses:
  """L_s and L_p from the decoder's mixture at each step and the target rows 1..N_max.

  `weights_B` (0/1) lets evaluation pad its last batch; the mean is over the
  weighted rows. Padded steps contribute exactly zero to L_s, and exactly the
  pen cross-entropy of the (0, 0, 0, 0, 1) end row to L_p.
  """
  B, N = targets_BxNx5.shape[:2]
  if weights_B is None:
    weights_B = jnp.ones((B,), jnp.float32)
  inside_BxN = (jnp.arange(N)[None, :] < lengths_B[:, None]).astype(jnp.float32)
  # A masked step must not leak a NaN/inf from padding, in the value or the gradient:
  # the padded targets are zeroed before the likelihood (a where() on the likelihood
  # alone would still send 0 * NaN back through its unselected branch), then the
  # masked steps' terms are selected away rather than multiplied by 0.
  dx_BxN = jnp.where(inside_BxN > 0, targets_BxNx5[..., 0], 0.0)
  dy_BxN = jnp.where(inside_BxN > 0, targets_BxNx5[..., 1], 0.0)
  loglik_BxN = mdn.offset_log_likelihood(mix, dx_BxN, dy_BxN)
  offset_B = -jnp.sum(jnp.where(inside_BxN > 0, loglik_BxN, 0.0), axis=1) / N
  pen_ce_BxN = -jnp.sum(targets_BxNx5[..., 2:5] * mix.log_pen, axis=-1)
  pen_B = jnp.sum(pen_ce_BxN, axis=1) / N
  pen_masked_B = jnp.sum(pen_ce_BxN * inside_BxN, axis=1) / N
  total = jnp.maximum(jnp.sum(weights_B), 1.0)
  mean = lambda v: jnp.sum(v * weights_B) / total
  return ReconLosses(offset=mean(offset_B), pen=mean(pen_B), pen_masked=mean(pen_masked_B))


def kl_per_sketch(mu_BxZ, presig_BxZ):
  """-(1/(2 Z)) sum_z (1 + sigma_hat - mu^2 - exp(sigma_hat)) -> [B]."""
  return -0.5 * jnp.mean(1.0 + presig_BxZ - jnp.square(mu_BxZ) - jnp.exp(presig_BxZ), axis=-1)


def kl(mu_BxZ, presig_BxZ, weights_B=None):
  """Raw L_KL, the batch mean of `kl_per_sketch` (the floor is applied by the caller)."""
  per = kl_per_sketch(mu_BxZ, presig_BxZ)
  if weights_B is None:
    return jnp.mean(per)
  return jnp.sum(per * weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)


def floored_kl(kl_raw, kl_min, batch_kl=None):
  """max(L_KL, KL_min): below KL_min the KL term has no gradient (paper eq. 11).

  With the batch split over devices, `kl_raw` is this device's mean and
  `batch_kl` the whole batch's (a pmean, no gradient): the floor is decided on
  the whole batch, as on one device, and the device's term is its own KL or the
  constant floor, so the mean over devices is max(batch KL, KL_min) with its
  gradient. (Flooring each device's mean would not be.)
  """
  if batch_kl is None:
    return jnp.maximum(kl_raw, kl_min)
  return jnp.where(batch_kl > kl_min, kl_raw, kl_min)


def kl_weight(step, *, kl_weight: float, kl_weight_start: float, kl_decay_rate: float):
  """w_KL - (w_KL - w_start) * R^step (sketch_rnn_train.py; paper's eta_step form)."""
  return kl_weight - (kl_weight - kl_weight_start) * _power(kl_decay_rate, step)


def learning_rate(step, *, learning_rate: float, decay_rate: float, min_learning_rate: float):
  """(lr0 - lr_min) * decay^step + lr_min (sketch_rnn_train.py)."""
  return (learning_rate - min_learning_rate) * _power(decay_rate, step) + min_learning_rate


def _power(rate: float, step):
  """rate^step as exp(step * log rate), log taken in float64: float32 pow(0.99995, s)
  loses ~s ulps of the base, exp of a float32 product does not."""
  return jnp.exp(jnp.asarray(step, jnp.float32) * math.log(rate))
