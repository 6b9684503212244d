"""The sketch-rnn VAE: frozen spec, parameter init, encode, decode, forward.

Parameters are a plain nested dict:
  encoder: {rnn: cell params stacked [2, ...] (forward, backward), mu_w, mu_b, presig_w, presig_b}
  decoder: {rnn: cell params, init_w, init_b (absent when unconditional), out_w, out_b}

Shape letters: B = batch, T = N_max + 1 stroke-5 rows, N = N_max, Z = latent,
H = decoder units, S = total size of the decoder's carry, Y = 6M + 3.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import cells as cells_lib
from sketch_vae import keys as keys_lib
from sketch_vae import mdn, precision
from sketch_vae import rnn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything about the architecture; hashable, bound before jit."""
  enc_model: str = "lstm"
  dec_model: str = "lstm"
  enc_rnn_size: int = 256
  dec_rnn_size: int = 512
  z_size: int = 128
  num_mixture: int = 20
  conditional: bool = True
  use_recurrent_dropout: bool = True
  recurrent_dropout_prob: float = 0.90  # keep probability, as the original's name says
  use_input_dropout: bool = False
  input_dropout_prob: float = 0.90
  use_output_dropout: bool = False
  output_dropout_prob: float = 0.90
  hyper_num_units: int = 256
  hyper_embedding_size: int = 32
  matmul_dtype: str = "float32"  # "bfloat16": bf16 operands, float32 accumulation and state
  remat: bool = False  # rematerialise the scans in the backward pass (long sequences)
  fused_lstm: bool = True  # LSTM cells: hand-written backward + CPU kernels (fused_lstm.py)

  @property
  def dtype(self):
    return None if self.matmul_dtype == "float32" else jnp.dtype(self.matmul_dtype)

  def _cell(self, name, size):
    options = {"dropout_keep": self.recurrent_dropout_prob, "matmul_dtype": self.dtype}
    if name == "lstm":
      options.update(fused=self.fused_lstm, cpu_kernels=self.fused_lstm)
    if name == "hyper":
      options.update(hyper_num_units=self.hyper_num_units,
                     hyper_embedding_size=self.hyper_embedding_size)
    return cells_lib.make(name, size, **options)

  @property
  def enc_cell(self) -> cells_lib.Cell:
    return self._cell(self.enc_model, self.enc_rnn_size)

  @property
  def dec_cell(self) -> cells_lib.Cell:
    return self._cell(self.dec_model, self.dec_rnn_size)

  @property
  def dec_input_size(self) -> int:
    return 5 + (self.z_size if self.conditional else 0)


def _gaussian(key, shape, std):
  return std * jax.random.normal(key, shape, jnp.float32)


def carry_size(cell: cells_lib.Cell) -> int:
  return sum(leaf.shape[-1] for leaf in jax.tree.leaves(cell.initial_carry(())))


def carry_from_flat(cell: cells_lib.Cell, flat_BxS):
  """Splits a [..., S] vector into the cell's carry structure, leaf by leaf."""
  template = cell.initial_carry(())
  leaves, treedef = jax.tree.flatten(template)
  sizes = np.cumsum([leaf.shape[-1] for leaf in leaves])[:-1]
  return jax.tree.unflatten(treedef, jnp.split(flat_BxS, sizes, axis=-1))


def init(spec: ModelSpec, key) -> dict:
  """Initialisation as the original: encoder projections and the z -> state map N(0, 0.001)."""
  k = jax.random.split(key, 8)
  dec_cell = spec.dec_cell
  Y = mdn.output_size(spec.num_mixture)
  decoder = {
      "rnn": dec_cell.init(k[0], spec.dec_input_size),
      "out_w": cells_lib.glorot_uniform(k[1], (spec.dec_rnn_size, Y)),
      "out_b": cells_lib.glorot_uniform(k[2], (Y,)),
  }
  params = {"decoder": decoder}
  if spec.conditional:
    decoder["init_w"] = _gaussian(k[3], (spec.z_size, carry_size(dec_cell)), 0.001)
    decoder["init_b"] = jnp.zeros((carry_size(dec_cell),), jnp.float32)
    enc_cell = spec.enc_cell
    fw_bw = [enc_cell.init(kk, 5) for kk in jax.random.split(k[4], 2)]
    two_h = 2 * spec.enc_rnn_size
    params["encoder"] = {
        "rnn": jax.tree.map(lambda a, b: jnp.stack([a, b]), *fw_bw),
        "mu_w": _gaussian(k[5], (two_h, spec.z_size), 0.001),
        "mu_b": jnp.zeros((spec.z_size,), jnp.float32),
        "presig_w": _gaussian(k[6], (two_h, spec.z_size), 0.001),
        "presig_b": jnp.zeros((spec.z_size,), jnp.float32),
    }
  return params


class Encoded(NamedTuple):
  z: jax.Array  # [B, Z]
  mu: jax.Array
  presig: jax.Array  # sigma_hat; sigma = exp(sigma_hat / 2)


def encode(spec: ModelSpec, params, strokes_BxTx5, lengths_B, key, *, dropout_key=None) -> Encoded:
  """Bidirectional encoder over rows 1..n of each sketch, then z = mu + sigma * eps.

  `key` (eps) and `dropout_key` are one key or one key per sketch (keys.py).
  """
  enc = params["encoder"]
  xs_NxBx5 = jnp.swapaxes(strokes_BxTx5[:, 1:], 0, 1)
  if not spec.use_recurrent_dropout:
    dropout_key = None
  h = rnn.bidirectional_final(spec.enc_cell, enc["rnn"], xs_NxBx5, lengths_B,
                              dropout_key=dropout_key, matmul_dtype=spec.dtype, remat=spec.remat)
  mu = h @ enc["mu_w"] + enc["mu_b"]
  presig = h @ enc["presig_w"] + enc["presig_b"]
  if key.shape == ():
    eps = jax.random.normal(key, mu.shape, jnp.float32)
  else:
    eps = jax.vmap(lambda k: jax.random.normal(k, mu.shape[-1:], jnp.float32))(key)
  return Encoded(z=mu + jnp.exp(presig / 2.0) * eps, mu=mu, presig=presig)


def initial_carry(spec: ModelSpec, params, z_BxZ, batch_shape):
  """tanh(W z + b) split into the decoder cell's carry; zeros when unconditional."""
  cell = spec.dec_cell
  if not spec.conditional:
    return cell.initial_carry(batch_shape)
  dec = params["decoder"]
  return carry_from_flat(cell, jnp.tanh(z_BxZ @ dec["init_w"] + dec["init_b"]))


def _dropout(x_BxNxF, keys, keep):
  mask = keys_lib.keep_mask(keys, keep, x_BxNxF.shape)
  return jnp.where(mask, x_BxNxF / keep, 0.0)


def decode(spec: ModelSpec, params, z_BxZ, inputs_BxNx5, *, carry=None, dropout_key=None):
  """Teacher-forced decoder: step i reads concat(S_{i-1}, z) -> (raw head outputs [B, N, Y], carry).

  `carry` overrides the z-derived initial state (used to continue a sketch).
  `dropout_key` (one key, or one per sketch) switches on the dropouts the spec
  asks for: recurrent, and input / output dropout wrapped around the cell as
  the original's DropoutWrapper (whose input dropout covers concat(S, z), so z
  is then fed per step instead of being projected once).
  """
  B = inputs_BxNx5.shape[0]
  dec = params["decoder"]
  if carry is None:
    carry = initial_carry(spec, params, z_BxZ, (B,))
  k_rec, k_in, k_out = keys_lib.split(dropout_key, 3) if dropout_key is not None else (None,) * 3
  inputs_BxNxI = inputs_BxNx5
  static = z_BxZ if spec.conditional else None
  if spec.use_input_dropout and k_in is not None:
    if static is not None:
      tiled = jnp.broadcast_to(static[:, None, :], inputs_BxNx5.shape[:2] + static.shape[-1:])
      inputs_BxNxI = jnp.concatenate([inputs_BxNx5, tiled], axis=-1)
      static = None
    inputs_BxNxI = _dropout(inputs_BxNxI, k_in, spec.input_dropout_prob)
  carry, hs_NxBxH = rnn.unroll(spec.dec_cell, dec["rnn"], carry, jnp.swapaxes(inputs_BxNxI, 0, 1),
                               static_BxJ=static,
                               dropout_key=k_rec if spec.use_recurrent_dropout else None,
                               matmul_dtype=spec.dtype, remat=spec.remat)
  hs_BxNxH = jnp.swapaxes(hs_NxBxH, 0, 1)
  if spec.use_output_dropout and k_out is not None:
    hs_BxNxH = _dropout(hs_BxNxH, k_out, spec.output_dropout_prob)
  return precision.dot(hs_BxNxH, dec["out_w"], spec.dtype) + dec["out_b"], carry


class Forward(NamedTuple):
  mixture: mdn.Mixture  # per predicted step, [B, N, ...]
  encoded: Optional[Encoded]


def forward(spec: ModelSpec, params, strokes_BxTx5, lengths_B, key, *, train: bool) -> Forward:
  """Encode (if conditional), decode rows 0..N-1, return the mixture predicting rows 1..N.

  `key` is one key or one key per sketch; with per-sketch keys a row's
  randomness does not depend on which other rows share its batch.
  """
  k_eps, k_enc, k_dec = keys_lib.split(key, 3)
  encoded = None
  z = None
  if spec.conditional:
    encoded = encode(spec, params, strokes_BxTx5, lengths_B, k_eps,
                     dropout_key=k_enc if train else None)
    z = encoded.z
  y, _ = decode(spec, params, z, strokes_BxTx5[:, :-1], dropout_key=k_dec if train else None)
  return Forward(mixture=mdn.split(y), encoded=encoded)
