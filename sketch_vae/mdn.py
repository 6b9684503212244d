"""Mixture-density head: raw outputs -> log-space mixture, log-likelihood, sampling one point.

The head emits 6M + 3 numbers per step, sliced in the original's order
[pen(3) | pi(M) | mu_x(M) | mu_y(M) | log sigma_x(M) | log sigma_y(M) | rho_hat(M)]
(model.py get_mixture_coef; the browser weight files assume it). Everything
is kept in log space: log pi = log_softmax, log q = log_softmax, and the
bivariate normal's log density is evaluated directly, so no probability is
ever formed and then logged (the original's -log(sum + 1e-6) is the source of
its NaNs and of a floor on the loss; see BUILD_NOTES.md).

Guards, which never bind for a trained model's usual outputs:
  log sigma is clipped to [LOG_SIGMA_MIN, LOG_SIGMA_MAX] and |rho| to RHO_MAX,
  so that float32 stays finite for any offset within the +-1000 clamp.

Shape letters: ... = any leading axes, M = mixture components.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LOG_SIGMA_MIN = float(np.log(1e-4))
LOG_SIGMA_MAX = float(np.log(1e4))
RHO_MAX = 1.0 - 1e-5
LOG_2PI = float(np.log(2.0 * np.pi))


class Mixture(NamedTuple):
  log_pi: jax.Array  # [..., M], log-normalised
  mu_x: jax.Array
  mu_y: jax.Array
  log_sigma_x: jax.Array
  log_sigma_y: jax.Array
  rho: jax.Array
  pen_logits: jax.Array  # [..., 3], unnormalised (temperature is applied to these)

  @property
  def log_pen(self):
    return jax.nn.log_softmax(self.pen_logits, axis=-1)


def output_size(num_mixture: int) -> int:
  return 6 * num_mixture + 3


def split(y_Y: jax.Array) -> Mixture:
  """Raw head outputs [..., 6M + 3] -> Mixture (original slicing order)."""
  M = (y_Y.shape[-1] - 3) // 6
  pen_logits = y_Y[..., :3]
  pi, mu_x, mu_y, ls_x, ls_y, rho_hat = jnp.split(y_Y[..., 3:], 6, axis=-1)
  del M
  return Mixture(
      log_pi=jax.nn.log_softmax(pi, axis=-1),
      mu_x=mu_x, mu_y=mu_y,
      log_sigma_x=jnp.clip(ls_x, LOG_SIGMA_MIN, LOG_SIGMA_MAX),
      log_sigma_y=jnp.clip(ls_y, LOG_SIGMA_MIN, LOG_SIGMA_MAX),
      rho=jnp.clip(jnp.tanh(rho_hat), -RHO_MAX, RHO_MAX),
      pen_logits=pen_logits)


def component_log_density(mix: Mixture, dx, dy):
  """log N(dx, dy | mu_j, sigma_j, rho_j) for every component j -> [..., M].

  Graves (2013) eq. 24-25 in log form:
    -log(2 pi) - log sx - log sy - 0.5 log(1 - rho^2) - Z / (2 (1 - rho^2)),
    Z = zx^2 + zy^2 - 2 rho zx zy, zx = (dx - mu_x) / sx.
  """
  zx = (dx[..., None] - mix.mu_x) * jnp.exp(-mix.log_sigma_x)
  zy = (dy[..., None] - mix.mu_y) * jnp.exp(-mix.log_sigma_y)
  one_minus_rho2 = (1.0 - mix.rho) * (1.0 + mix.rho)
  quad = (jnp.square(zx) + jnp.square(zy) - 2.0 * mix.rho * zx * zy) / one_minus_rho2
  return (-LOG_2PI - mix.log_sigma_x - mix.log_sigma_y
          - 0.5 * jnp.log(one_minus_rho2) - 0.5 * quad)


def offset_log_likelihood(mix: Mixture, dx, dy):
  """log sum_j pi_j N(dx, dy | component j), by log-sum-exp -> [...]."""
  return jax.nn.logsumexp(mix.log_pi + component_log_density(mix, dx, dy), axis=-1)


# ----------------------------------------------------------------------------
# Sampling one point (used by sample.py inside a scan).

SIGMA_PAPER = "paper"  # sigma * sqrt(tau): the paper and both browser ports
SIGMA_ORIGINAL = "original"  # sigma * tau: what model.py's sampler effectively does


def sigma_scale(temperature, convention: str):
  if convention == SIGMA_PAPER:
    return jnp.sqrt(temperature)
  if convention == SIGMA_ORIGINAL:
    return temperature
  raise ValueError(f"unknown sigma convention {convention!r}; use 'paper' or 'original'")


def sample_point(mix: Mixture, key, temperature, *, greedy=False, convention: str = SIGMA_PAPER):
  """One stroke-5 row from an unbatched mixture (leading axes are vmapped by callers).

  pi and pen logits are divided by tau before the softmax; the chosen
  component's sigmas are scaled by sqrt(tau) (paper) or tau (original code).
  Greedy: the most likely component's mean and the most likely pen state.
  `temperature` may be traced: a sweep does not recompile. It is floored at
  1e-6 so that tau -> 0 is the limit, not a division by zero.
  """
  tau = jnp.maximum(temperature, 1e-6)
  k_pi, k_pen, k_xy = jax.random.split(key, 3)
  if greedy:
    j = jnp.argmax(mix.log_pi, axis=-1)
    pen = jnp.argmax(mix.pen_logits, axis=-1)
    dx, dy = mix.mu_x[j], mix.mu_y[j]
  else:
    j = jax.random.categorical(k_pi, mix.log_pi / tau)
    pen = jax.random.categorical(k_pen, mix.pen_logits / tau)
    scale = sigma_scale(tau, convention)
    sx = jnp.exp(mix.log_sigma_x[j]) * scale
    sy = jnp.exp(mix.log_sigma_y[j]) * scale
    rho = mix.rho[j]
    e1, e2 = jax.random.normal(k_xy, (2,))
    dx = mix.mu_x[j] + sx * e1
    dy = mix.mu_y[j] + sy * (rho * e1 + jnp.sqrt((1.0 - rho) * (1.0 + rho)) * e2)
  return jnp.concatenate([jnp.stack([dx, dy]), jax.nn.one_hot(pen, 3)])
