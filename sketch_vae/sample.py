"""Sampling: one unbatched `lax.scan` sampler, and a jitted batch sampler for batches and sweeps.

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


def _static_input(spec: ModelSpec, params, z):
  """(W_x rows for the stroke, the per-sketch constant part of the input projection)."""
  w_x, b = spec.dec_cell.input_kernel(params["decoder"]["rnn"])
  if not spec.conditional:
    return w_x[:5], b
  if z is None:
    raise ValueError("a conditional model needs z (use sample_prior for the N(0, I) prior)")
  return w_x[:5], z @ w_x[5:] + b


def _step(spec: ModelSpec, dec, w_x5, greedy, convention, carry, prev, ended, t, key, temperature,
          xp_static, forced_t, prefix_len):
  """One sketch's decoder step: (carry, emitted row, ended). `prev` is the last row fed back."""
  carry, h = spec.dec_cell.step_projected(dec["rnn"], carry, prev @ w_x5 + xp_static)
  mix = mdn.split(h @ dec["out_w"] + dec["out_b"])
  point = mdn.sample_point(mix, jax.random.fold_in(key, t), temperature, greedy=greedy,
                           convention=convention)
  point = jnp.where(t < prefix_len, forced_t, point)
  ended = ended | (point[4] > 0.5)
  return carry, jnp.where(ended, END, point), ended


def _length(rows_Lx5, max_len: int):
  is_end = rows_Lx5[..., 4] > 0.5
  return jnp.where(jnp.any(is_end, axis=-1), jnp.argmax(is_end, axis=-1), max_len)


def sample_one(spec: ModelSpec, params, key, temperature, z=None, prefix=None, prefix_len=0, *,
               max_len: int, greedy: bool = False, convention: str = mdn.SIGMA_PAPER) -> Sampled:
  """One sketch, as a scan over all max_len steps (vmap it for batches: every row then runs
  max_len steps; `sample_batch` stops rows at their end instead). z: [Z] (conditional models);
  prefix: [P, 5] stroke-5 rows, P <= max_len."""
  dec = params["decoder"]
  w_x5, xp_static = _static_input(spec, params, z)
  carry = model.initial_carry(spec, params, z, ())
  if prefix is None:
    prefix = jnp.zeros((1, 5), jnp.float32)
  forced = jnp.zeros((max_len, 5), jnp.float32).at[:prefix.shape[0]].set(prefix[:max_len])

  def step(state, t):
    carry, prev, ended = state
    carry, row, ended = _step(spec, dec, w_x5, greedy, convention, carry, prev, ended, t, key,
                              temperature, xp_static, forced[t], prefix_len)
    return (carry, row, ended), row

  (_, _, _), rows = jax.lax.scan(step, (carry, START, jnp.array(False)), jnp.arange(max_len))
  return Sampled(strokes=rows, length=_length(rows, max_len))


STEPS_PER_CHECK = 8  # steps between the batch sampler's checks for ended rows
MIN_TIER_ROWS = 32  # the batched sampler does not shrink a batch below this many rows
TIER_SHRINK = 3  # each smaller batch holds about a third of the rows of the one before


def row_tiers(K: int) -> tuple[int, ...]:
  """The batch sizes `batch_sampler` runs K sketches at: K, then about a third each time
  (rounded up to a multiple of 8) while that is at least MIN_TIER_ROWS. Each size is one
  more copy of the step in the compiled program (about 0.7 s of compile time each for a
  512-unit LSTM), hence few sizes; with sketch lengths of a trained model the work left
  is within a few percent of halving every time (measured in BUILD_NOTES)."""
  tiers = [K]
  while True:
    smaller = -(-tiers[-1] // (TIER_SHRINK * 8)) * 8
    if smaller < MIN_TIER_ROWS or smaller >= tiers[-1]:
      return tuple(tiers)
    tiers.append(smaller)


@functools.lru_cache(maxsize=32)
def batch_sampler(spec: ModelSpec, max_len: int, greedy: bool = False,
                  convention: str = mdn.SIGMA_PAPER):
  """K sketches that each stop at their end, with the batch shrunk as they finish.

  Call as f(params, keys[K], temperatures[K], z[K, Z] or None, prefix[K, P, 5] or None,
  prefix_len[K]). Row i is `sample_one` with keys[i] (the same random stream, so the same
  sketch up to float rounding of the different batch shapes), but rows stop at their end:
  the steps run in a while loop that leaves as soon as every row has ended, and whenever
  the unfinished rows fit in the next size of `row_tiers(K)` they are gathered into that
  smaller batch. Both checks come every STEPS_PER_CHECK steps (a fixed-length scan inside
  the loop), which keeps a loop of unknown length from syncing with the host at every
  step on accelerators. A trained model's sketches end at different lengths, so this skips most
  of the work that a vmapped scan spends on rows that already emit end rows. Cached per
  (spec, max_len, greedy, convention): a temperature sweep or a new batch of the same
  size does not recompile.
  """
  def run(params, keys, temperatures, z, prefix, prefix_len):
    K = temperatures.shape[0]
    dec = params["decoder"]
    w_x5, xp_static = _static_input(spec, params, z)
    xp_static = jnp.broadcast_to(xp_static, (K, xp_static.shape[-1]))
    carry = model.initial_carry(spec, params, z, (K,))
    if prefix is None:
      prefix = jnp.zeros((K, 1, 5), jnp.float32)
    P = prefix.shape[1]
    step = jax.vmap(functools.partial(_step, spec, dec, w_x5, greedy, convention),
                    in_axes=(0, 0, 0, None, 0, 0, 0, 0, 0))
    rows = dict(carry=carry, prev=jnp.broadcast_to(START, (K, 5)), ended=jnp.zeros((K,), bool),
                idx=jnp.arange(K), key=keys, temperature=temperatures, xp_static=xp_static,
                prefix_len=prefix_len)
    out = jnp.broadcast_to(END, (K, max_len, 5))
    tiers = row_tiers(K)
    t = jnp.int32(0)
    for i, _ in enumerate(tiers):
      next_rows = tiers[i + 1] if i + 1 < len(tiers) else 0

      def unfinished(state, next_rows=next_rows):
        t, rows, _ = state
        return (t < max_len) & (jnp.sum(~rows["ended"]) > next_rows)

      def body(state):
        t0, r, out = state

        def one(dynamic, t):  # only the changing state rides in the scan's carry
          carry, prev, ended = dynamic
          forced_t = jnp.where(t < P, prefix[r["idx"], jnp.minimum(t, P - 1)], 0.0)
          carry, row, ended = step(carry, prev, ended, t, r["key"], r["temperature"],
                                   r["xp_static"], forced_t, r["prefix_len"])
          return (carry, row, ended), row

        steps = t0 + jnp.arange(STEPS_PER_CHECK)
        (carry, prev, ended), rows_CxRx5 = jax.lax.scan(
            one, (r["carry"], r["prev"], r["ended"]), steps)
        r = dict(r, carry=carry, prev=prev, ended=ended)
        # Steps past max_len (the last chunk's tail) are dropped.
        out = out.at[r["idx"][:, None], steps[None, :]].set(jnp.swapaxes(rows_CxRx5, 0, 1),
                                                             mode="drop")
        return t0 + STEPS_PER_CHECK, r, out

      t, rows, out = jax.lax.while_loop(unfinished, body, (t, rows, out))
      if next_rows:  # unfinished rows first (argsort is stable), then enough ended ones
        keep = jnp.argsort(rows["ended"], stable=True)[:next_rows]
        rows = jax.tree.map(lambda a: a[keep], rows)
    return Sampled(strokes=out, length=_length(out, max_len))

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
  """Spherical interpolation; falls back to lerp when z0 and z1 are (anti)parallel, or when
  either is (about) zero, e.g. the prior mean, and so has no direction to turn from."""
  z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
  norm0, norm1 = np.linalg.norm(z0), np.linalg.norm(z1)
  if min(norm0, norm1) < 1e-12:  # the cosine below would be 0 / 0 = NaN
    return lerp(z0, z1, t)
  cos = np.dot(z0, z1) / (norm0 * norm1)
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
