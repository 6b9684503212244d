"""Sampling: one unbatched `lax.scan` sampler, and `jit(vmap(...))` for batches and sweeps.

The sampler starts from S0 = (0, 0, 1, 0, 0), feeds each sampled point back,
and stops at p3 (or after `max_len` steps): after the end it emits end rows
(0, 0, 0, 0, 1), so every call has the same shapes. An optional `prefix`
(stroke-5 rows of an unfinished drawing) is forced for its first
`prefix_len` steps: the decoder reads the given points instead of its own,
then continues from the state they left, which is how the paper completes a
sketch. Temperature is a traced argument: a sweep reuses one compiled call.

Shape letters: L = max_len output rows, Z = latent, P = prefix rows.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import mdn, model
from sketch_vae.model import ModelSpec

START = jnp.array([0.0, 0.0, 1.0, 0.0, 0.0], jnp.float32)
END = jnp.array([0.0, 0.0, 0.0, 0.0, 1.0], jnp.float32)


class Sampled(NamedTuple):
  strokes: jax.Array  # [..., L, 5] stroke-5 rows (no start token), end rows after the end
  length: jax.Array  # [...] rows before the first p3 (the sketch's stroke-3 length)


def sample_one(spec: ModelSpec, params, key, temperature, z=None, prefix=None, prefix_len=0, *,
               max_len: int, greedy: bool = False, convention: str = mdn.SIGMA_PAPER) -> Sampled:
  """One sketch. z: [Z] (conditional models); prefix: [P, 5] stroke-5 rows, P <= max_len."""
  dec = params["decoder"]
  cell = spec.dec_cell
  w_x, b = cell.input_kernel(dec["rnn"])
  xp_static = b
  if spec.conditional:
    if z is None:
      raise ValueError("a conditional model needs z (use sample_prior for the N(0, I) prior)")
    xp_static = z @ w_x[5:] + b
  carry = model.initial_carry(spec, params, z, ())
  if prefix is None:
    prefix = jnp.zeros((1, 5), jnp.float32)
  forced = jnp.zeros((max_len, 5), jnp.float32).at[:prefix.shape[0]].set(prefix[:max_len])

  def step(state, t):
    carry, prev, ended = state
    carry, h = cell.step_projected(dec["rnn"], carry, prev @ w_x[:5] + xp_static)
    mix = mdn.split(h @ dec["out_w"] + dec["out_b"])
    point = mdn.sample_point(mix, jax.random.fold_in(key, t), temperature, greedy=greedy,
                             convention=convention)
    point = jnp.where(t < prefix_len, forced[t], point)
    ended = ended | (point[4] > 0.5)
    row = jnp.where(ended, END, point)
    return (carry, row, ended), row

  (_, _, _), rows = jax.lax.scan(step, (carry, START, jnp.array(False)), jnp.arange(max_len))
  is_end = rows[:, 4] > 0.5
  length = jnp.where(jnp.any(is_end), jnp.argmax(is_end), max_len)
  return Sampled(strokes=rows, length=length)


@functools.lru_cache(maxsize=32)
def batch_sampler(spec: ModelSpec, max_len: int, greedy: bool = False,
                  convention: str = mdn.SIGMA_PAPER):
  """jit(vmap(sample_one)) over keys, temperatures, z's and prefixes.

  Call as f(params, keys[K], temperatures[K], z[K, Z] or None, prefix[K, P, 5] or None,
  prefix_len[K]). Cached per (spec, max_len, greedy, convention), so a
  temperature sweep or a new batch of the same size does not recompile.
  """
  one = functools.partial(sample_one, spec, max_len=max_len, greedy=greedy, convention=convention)

  def run(params, keys, temperatures, z, prefix, prefix_len):
    z_axis = None if z is None else 0
    p_axis = None if prefix is None else 0
    return jax.vmap(one, in_axes=(None, 0, 0, z_axis, p_axis, 0))(
        params, keys, temperatures, z, prefix, prefix_len)

  return jax.jit(run)


def sample_batch(spec: ModelSpec, params, key, temperatures, *, z=None, prefix=None,
                 prefix_len=None, max_len: int, greedy: bool = False,
                 convention: str = mdn.SIGMA_PAPER) -> Sampled:
  """K sketches in one compiled call; row i uses fold_in(key, i)."""
  temperatures = jnp.asarray(temperatures, jnp.float32).reshape(-1)
  K = temperatures.shape[0]
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(K))
  if prefix_len is None:
    prefix_len = jnp.zeros((K,), jnp.int32)
  return batch_sampler(spec, max_len, greedy, convention)(
      params, keys, temperatures, z, prefix, jnp.asarray(prefix_len, jnp.int32))


def prior_z(spec: ModelSpec, key, n: int):
  """z ~ N(0, I) for conditional models (sampling "from nothing")."""
  return jax.random.normal(key, (n, spec.z_size), jnp.float32) if spec.conditional else None


@functools.lru_cache(maxsize=8)
def _encoder(spec: ModelSpec):
  return jax.jit(lambda params, x, lengths, key: model.encode(spec, params, x, lengths, key))


def encode(spec: ModelSpec, params, strokes_BxTx5, lengths_B, key, *, use_mean: bool = False):
  """z for each sketch: mu + sigma * eps (or mu with use_mean)."""
  if not spec.conditional:
    raise ValueError("this model is decoder-only (conditional=False): it has no encoder")
  enc = _encoder(spec)(params, jnp.asarray(strokes_BxTx5), jnp.asarray(lengths_B), key)
  return enc.mu if use_mean else enc.z


# ----------------------------------------------------------------------------
# Latent-space arithmetic (paper section 4.2-4.3).


def lerp(z0, z1, t):
  return (1.0 - t) * z0 + t * z1


def slerp(z0, z1, t):
  """Spherical interpolation; falls back to lerp when z0 and z1 are (anti)parallel."""
  z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
  cos = np.dot(z0, z1) / (np.linalg.norm(z0) * np.linalg.norm(z1))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  if np.sin(omega) < 1e-6:
    return lerp(z0, z1, t)
  return (np.sin((1.0 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)


def interpolate(z0, z1, steps: int, method: str = "slerp"):
  """[steps, Z] from z0 to z1 inclusive."""
  if method not in ("lerp", "slerp"):
    raise ValueError(f"method must be 'lerp' or 'slerp', not {method!r}")
  f = slerp if method == "slerp" else lerp
  return np.stack([f(np.asarray(z0), np.asarray(z1), t) for t in np.linspace(0.0, 1.0, steps)]).astype(np.float32)


def analogy(z_a, z_b, z_c):
  """z(a) - z(b) + z(c): "a is to b as ? is to c" (paper figure 7)."""
  return np.asarray(z_a) - np.asarray(z_b) + np.asarray(z_c)
