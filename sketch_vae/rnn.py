"""Unrolling cells over time with `lax.scan`; length masking; the bidirectional encoder RNN.

Inputs are time-major inside this module. Shape letters: T = time steps,
B = batch, I = input features per step, J = static (per-sequence) input
features, P = projected input width of the cell, H = hidden units.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from sketch_vae import cells as cells_lib
from sketch_vae import keys as keys_lib
from sketch_vae import precision
from sketch_vae import split_scan


def unroll(cell: cells_lib.Cell, params, carry, xs_TxBxI, *, static_BxJ=None,
           dropout_key=None, mask_TxB=None, matmul_dtype=None, remat: bool = False):
  """Runs `cell` over T steps; the step input is concat(xs[t], static).

  The input map is affine (`cell.input_kernel`), so its time-varying part is
  one [T*B, I] x [I, P] matmul outside the scan and the static part (the
  decoder's z) is projected once per sequence and added at each step: the
  same numbers as feeding concat(x_t, z) to `cell.step`, with the z columns'
  matmul done once instead of T times.

  Where `mask_TxB` is False the carry is held, so a padded sequence ends in the
  state reached at its own length. Per-step dropout keys are
  fold_in(dropout_key, t) (one key, or one per row: see keys.py). With `remat`, the scan body is rematerialised in the
  backward pass (less memory for long sequences, about a third more compute).

  A cell with its own `scan` (the fused LSTM) runs that instead, with the same
  contract. Returns (final carry, outputs h [T, B, H]; a held step outputs
  the held h).
  """
  T, I = xs_TxBxI.shape[0], xs_TxBxI.shape[-1]
  if T == 0:  # nothing to run (the custom backward passes assume at least one step)
    return carry, jnp.zeros(xs_TxBxI.shape[:-1] + (cell.hidden_size,), jnp.float32)
  w_x, b = cell.input_kernel(params)
  xp_static = b
  if static_BxJ is not None:
    xp_static = precision.dot(static_BxJ, w_x[I:], matmul_dtype) + b
  if mask_TxB is None:
    mask_TxB = jnp.ones(xs_TxBxI.shape[:2], bool)
  if cell.scan is not None and not remat:
    return cell.scan(params, carry, xs_TxBxI, xp_static, mask_TxB, dropout_key)
  if cell.step_split is not None and not remat:
    return split_scan.scan(cell, params, carry, xs_TxBxI, xp_static, mask_TxB, dropout_key,
                           matmul_dtype=matmul_dtype)
  xp_TxBxP = precision.dot(xs_TxBxI, w_x[:I], matmul_dtype)

  def body(carry, inputs):
    t, xp_BxP, mask_B = inputs
    key = None if dropout_key is None else keys_lib.fold_in(dropout_key, t)
    new_carry, _ = cell.step_projected(params, carry, xp_BxP + xp_static, key)
    keep = mask_B[..., None]
    new_carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, carry)
    return new_carry, new_carry.h

  if remat:
    body = jax.checkpoint(body)
  return jax.lax.scan(body, carry, (jnp.arange(T), xp_TxBxP, mask_TxB))


def length_mask(lengths_B, T):
  """[T, B] boolean: step t is inside sequence b."""
  return jnp.arange(T)[:, None] < lengths_B[None, :]


def bidirectional_final(cell: cells_lib.Cell, params_2, xs_TxBxI, lengths_B, *,
                        dropout_key=None, matmul_dtype=None, remat: bool = False):
  """Final hidden states of a bidirectional RNN over padded sequences -> [B, 2H].

  `params_2` holds the forward and backward cells' parameters stacked on a
  leading axis of 2, and both directions run in one scan (vmapped over that
  axis). The backward direction reads the time-reversed padded input; its
  carry stays at zero until it reaches each sequence's last valid step, so it
  reads exactly that sequence's valid part, reversed (as
  `bidirectional_dynamic_rnn` with sequence_length).
  """
  T, B = xs_TxBxI.shape[:2]
  mask_TxB = length_mask(lengths_B, T)
  # Padded steps read zeros: their states are held, but the hoisted input product's
  # weight gradient would still take 0 * x there, a NaN if padding held one.
  xs_TxBxI = jnp.where(mask_TxB[..., None], xs_TxBxI, 0.0)
  xs_2xTxBxI = jnp.stack([xs_TxBxI, xs_TxBxI[::-1]])
  mask_2xTxB = jnp.stack([mask_TxB, mask_TxB[::-1]])
  carry_2 = cell.initial_carry((2, B))
  keys = None if dropout_key is None else keys_lib.split(dropout_key, 2)

  def one_direction(params, carry, xs, mask, key):
    final, _ = unroll(cell, params, carry, xs, dropout_key=key, mask_TxB=mask,
                      matmul_dtype=matmul_dtype, remat=remat)
    return final.h

  key_axis = None if keys is None else 0
  h_2xBxH = jax.vmap(one_direction, in_axes=(0, 0, 0, 0, key_axis))(
      params_2, carry_2, xs_2xTxBxI, mask_2xTxB, keys)
  return jnp.concatenate([h_2xBxH[0], h_2xBxH[1]], axis=-1)
