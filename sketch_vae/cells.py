"""Recurrent cells as pure functions, swappable by name through `CELLS`.

A cell is a `Cell` record of pure functions:
  init(key, input_size) -> params
  initial_carry(batch_shape) -> carry          (a NamedTuple; `carry.h` is the output)
  step(params, carry, x, dropout_key=None) -> (carry, h)   (the `lax.scan` body)
and, for speed, the same step split into a time-parallel part and a recurrent part:
  input_kernel(params) -> (W_x [I, P], b [P])   an affine map of the input alone
  step_projected(params, carry, xp, dropout_key=None) -> (carry, h)
with step(p, c, x, k) == step_projected(p, c, x @ W_x + b, k). `rnn.unroll` uses
the split to hoist x @ W_x out of the scan as one large matmul. Cells touch
only the last axis, so one cell serves batched training and the vmapped
sampler. A fork adds a cell with one factory and one `CELLS` entry; the
contract tests in tests/test_cells.py pick it up.

Recurrent dropout "without memory loss" (Semeniuta et al. 2016) drops units of
the candidate tanh(j), never of c, scaled by 1 / keep like `tf.nn.dropout`;
`dropout_key=None` means no dropout (evaluation and sampling).

Shape letters: B = batch (any leading axes), I = input, H = hidden units,
G = 4H gate pre-activations, E = hyper embedding, K = hyper units.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sketch_vae import keys as keys_lib
from sketch_vae import fused_lstm, native
from sketch_vae.precision import dot

Params = dict


class Cell(NamedTuple):
  name: str
  hidden_size: int
  init: Callable[..., Params]
  initial_carry: Callable[..., Any]
  step: Callable[..., tuple]
  input_kernel: Callable[[Params], tuple]
  step_projected: Callable[..., tuple]
  # Optional fast unroll with rnn.unroll's contract: scan(params, carry, xs [T, B, I],
  # xp_static, live [T, B], dropout_key) -> (carry, hs); it projects xs itself.
  scan: Optional[Callable[..., tuple]] = None
  # Optional split of step_projected around its big recurrent matmul, used by
  # split_scan.py to hoist that matmul's weight gradient out of the loop:
  #   step_projected(p, c, xp, k) == step_split(p, c, xp, c.h @ recurrent_kernel(p), k)
  recurrent_kernel: Optional[Callable[[Params], Any]] = None
  step_split: Optional[Callable[..., tuple]] = None
  # False: nothing of this cell's unroll runs the C++ kernels (split_scan's packed
  # product included), so the cell is a pure-XLA reference.
  cpu_kernels: bool = True


class LSTMCarry(NamedTuple):
  c: jax.Array
  h: jax.Array


class HyperCarry(NamedTuple):
  c: jax.Array
  h: jax.Array
  hyper: LSTMCarry  # the small layer-norm LSTM's own state


# ----------------------------------------------------------------------------
# Initialisers, as in the original rnn.py / TF1 defaults.


def glorot_uniform(key, shape):
  """TF1's default `get_variable` initialiser (used for W_xh and the output layer)."""
  fan_in, fan_out = (shape[0], shape[0]) if len(shape) == 1 else (shape[0], shape[1])
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def orthogonal_gate_blocks(key, rows, hidden, blocks=4):
  """`lstm_ortho_initializer`: each [rows, hidden] gate block orthogonal."""
  keys = jax.random.split(key, blocks)
  return jnp.concatenate([jax.nn.initializers.orthogonal()(k, (rows, hidden), jnp.float32)
                          for k in keys], axis=1)


# ----------------------------------------------------------------------------
# Shared pieces.




def layer_norm(x, gain, shift, epsilon=1e-3):
  """Per-sample layer norm over the last axis (rnn.py's layer_norm, epsilon 1e-3)."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mean
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(var + epsilon) * gain + shift


def layer_norm_gates(gates_G, gain_G, shift_G, epsilon=1e-3):
  """Each of the 4 gate blocks normalised separately (rnn.py's layer_norm_all)."""
  *lead, g = gates_G.shape
  blocks = gates_G.reshape(*lead, 4, g // 4)
  mean = jnp.mean(blocks, axis=-1, keepdims=True)
  centred = blocks - mean
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  normed = (centred * jax.lax.rsqrt(var + epsilon)).reshape(*lead, g)
  return normed * gain_G + shift_G


def dropout_candidate(candidate, key, keep):
  """Inverted dropout on the candidate; `key` is one key or one per row (keys.py)."""
  if key is None or keep >= 1.0:
    return candidate
  mask = keys_lib.keep_mask(key, keep, candidate.shape)
  return jnp.where(mask, candidate / keep, 0.0)


def lstm_update(c, gates_G, dropout_key, keep, forget_bias):
  """Gates in the original's order i, j, f, o -> (new_c, o_gate)."""
  i, j, f, o = jnp.split(gates_G, 4, axis=-1)
  candidate = dropout_candidate(jnp.tanh(j), dropout_key, keep)
  new_c = c * jax.nn.sigmoid(f + forget_bias) + jax.nn.sigmoid(i) * candidate
  return new_c, o


def ln_lstm_update(xh_G, hh_G, scaling, bias_G, gain_G, shift_G, c_gain_H, c_shift_H, c_prev,
                   dropout_key, *, keep, forget_bias):
  """The layer-norm LSTM update -> (c, h): gates = LN_per_gate(pre) * gain + shift with
  pre = xh + hh + bias, or sx * xh + sh * hh + beta + bias when `scaling` is
  (sx, sh, beta) (the HyperLSTM's main cell); h = tanh(LN(c) * c_gain + c_shift) * sigmoid(o).
  xh, hh: [..., 4H]; sx, sh, beta: gate-major [4, ..., H] (gate q, unit k scales
  column q * H + k), the layout the hyper network's per-gate products produce.
  fused_ln.update is the same on CPU as one kernel each way."""
  if scaling is None:
    pre = xh_G + hh_G
  else:
    sx, sh, beta = (_gate_columns(s) for s in scaling)
    pre = sx * xh_G + sh * hh_G + beta
  gates = layer_norm_gates(pre + bias_G, gain_G, shift_G)
  c, o = lstm_update(c_prev, gates, dropout_key, keep, forget_bias)
  return c, jnp.tanh(layer_norm(c, c_gain_H, c_shift_H)) * jax.nn.sigmoid(o)


def _gate_columns(s_4xRxH):
  """[4, ..., H] gate-major -> [..., 4H] (gate q's units at columns q * H ...)."""
  moved = jnp.moveaxis(s_4xRxH, 0, -2)
  return moved.reshape(moved.shape[:-2] + (4 * moved.shape[-1],))


def _ln_update(cpu_kernels: bool):
  """fused_ln.update where the CPU kernels build (it picks XLA off CPU), else the jnp one."""
  if cpu_kernels:
    from sketch_vae import fused_ln  # late: it imports this module
    if native.cpu_kernels_available():  # builds the C++ kernels on first call
      return fused_ln.update
  return ln_lstm_update


def _zeros_carry(hidden):
  def initial_carry(batch_shape=()):
    z = jnp.zeros(tuple(batch_shape) + (hidden,), jnp.float32)
    return LSTMCarry(c=z, h=z)
  return initial_carry


def _projected_from_split(recurrent_kernel, step_split, matmul_dtype):
  def step_projected(params, carry, xp, dropout_key=None):
    hh = dot(carry.h, recurrent_kernel(params), matmul_dtype)
    return step_split(params, carry, xp, hh, dropout_key)
  return step_projected


def _compose_step(input_kernel, step_projected, matmul_dtype):
  def step(params, carry, x, dropout_key=None):
    w_x, b = input_kernel(params)
    return step_projected(params, carry, dot(x, w_x, matmul_dtype) + b, dropout_key)
  return step


# ----------------------------------------------------------------------------
# LSTM (rnn.py LSTMCell): one matmul on concat(x, h), forget bias 1 at call time.


def lstm(hidden_size: int, *, forget_bias: float = 1.0, dropout_keep: float = 0.9,
         matmul_dtype=None, fused: bool = True, cpu_kernels: bool = True) -> Cell:
  """`fused` unrolls with fused_lstm.scan (hand-written backward, CPU kernels when
  `cpu_kernels`); the contract tests check it against the plain step."""
  H = hidden_size

  def init(key, input_size):
    kx, kh = jax.random.split(key)
    return {"w_x": glorot_uniform(kx, (input_size, 4 * H)),
            "w_h": orthogonal_gate_blocks(kh, H, H),
            "b": jnp.zeros((4 * H,), jnp.float32)}

  def input_kernel(params):
    return params["w_x"], params["b"]

  def recurrent_kernel(params):
    return params["w_h"]

  def step_split(params, carry, xp_G, hh_G, dropout_key=None):
    c, o = lstm_update(carry.c, xp_G + hh_G, dropout_key, dropout_keep, forget_bias)
    h = jnp.tanh(c) * jax.nn.sigmoid(o)
    return LSTMCarry(c=c, h=h), h

  step_projected = _projected_from_split(recurrent_kernel, step_split, matmul_dtype)

  scan = None
  if fused:
    scan = functools.partial(fused_lstm.scan, keep=dropout_keep, forget_bias=forget_bias,
                             matmul_dtype=matmul_dtype, use_kernels=cpu_kernels)
  return Cell("lstm", H, init, _zeros_carry(H), _compose_step(input_kernel, step_projected, matmul_dtype),
              input_kernel, step_projected, scan, recurrent_kernel, step_split, cpu_kernels)


# ----------------------------------------------------------------------------
# Layer-norm LSTM (rnn.py LayerNormLSTMCell): no gate bias; each gate block
# normalised; output tanh(LN(c')) * sigmoid(o).


def layer_norm_lstm(hidden_size: int, *, forget_bias: float = 1.0, dropout_keep: float = 0.9,
                    matmul_dtype=None, cpu_kernels: bool = True) -> Cell:
  """`cpu_kernels`: the cell update runs as fused_ln's kernels on CPU."""
  H = hidden_size

  def init(key, input_size):
    kx, kh = jax.random.split(key)
    return {"w_x": glorot_uniform(kx, (input_size, 4 * H)),
            "w_h": orthogonal_gate_blocks(kh, H, H),
            "ln_gates_gain": jnp.ones((4 * H,), jnp.float32),
            "ln_gates_shift": jnp.zeros((4 * H,), jnp.float32),
            "ln_c_gain": jnp.ones((H,), jnp.float32),
            "ln_c_shift": jnp.zeros((H,), jnp.float32)}

  def input_kernel(params):
    return params["w_x"], jnp.zeros((4 * H,), jnp.float32)

  def recurrent_kernel(params):
    return params["w_h"]

  def step_split(params, carry, xp_G, hh_G, dropout_key=None):
    c, h = _ln_update(cpu_kernels)(
        xp_G, hh_G, None, jnp.zeros((4 * H,), jnp.float32), params["ln_gates_gain"],
        params["ln_gates_shift"], params["ln_c_gain"], params["ln_c_shift"], carry.c, dropout_key,
        keep=dropout_keep, forget_bias=forget_bias)
    return LSTMCarry(c=c, h=h), h

  step_projected = _projected_from_split(recurrent_kernel, step_split, matmul_dtype)
  return Cell("layer_norm", H, init, _zeros_carry(H),
              _compose_step(input_kernel, step_projected, matmul_dtype), input_kernel, step_projected,
              None, recurrent_kernel, step_split, cpu_kernels)


# ----------------------------------------------------------------------------
# HyperLSTM (Ha, Dai & Le 2016; rnn.py HyperLSTMCell with use_layer_norm=True).


def hyper_lstm(hidden_size: int, *, hyper_num_units: int = 256, hyper_embedding_size: int = 32,
               forget_bias: float = 1.0, dropout_keep: float = 0.9,
               hyper_use_recurrent_dropout: bool = False, matmul_dtype=None,
               cpu_kernels: bool = True) -> Cell:
  """A layer-norm LSTM of K units reads concat(x, h) and scales the main cell's gates.

  Per gate and per path (x and h), as the original's `hyper_norm`:
    z_w = hyper_h @ W_zw + b_zw   (W_zw = 0, b_zw = 1 at init)
    alpha = z_w @ W_alpha         (W_alpha = 0.1 / E at init; "Cooijmans' trick")
    path' = alpha * path
  and on the h path only a dynamic bias beta = (hyper_h @ W_zb) @ W_beta with
  W_zb ~ N(0, 0.01) and W_beta = 0, so it starts at 0. The four gates' eight
  embeddings are stored stacked ([4, ...]) and computed in one einsum each.
  """
  H, K, E = hidden_size, hyper_num_units, hyper_embedding_size
  hyper_cell = layer_norm_lstm(K, forget_bias=forget_bias, dropout_keep=dropout_keep,
                               matmul_dtype=matmul_dtype, cpu_kernels=cpu_kernels)
  hyper_keep = dropout_keep if hyper_use_recurrent_dropout else 1.0

  def init(key, input_size):
    k = jax.random.split(key, 5)
    return {
        "w_x": glorot_uniform(k[0], (input_size, 4 * H)),
        "w_h": orthogonal_gate_blocks(k[1], H, H),
        "b": jnp.zeros((4 * H,), jnp.float32),
        "hyper": hyper_cell.init(k[2], input_size + H),
        # x path: scaling only. h path: scaling and dynamic bias. Axis 0 = gate i, j, f, o.
        "x_zw": jnp.zeros((4, K, E), jnp.float32),
        "x_zw_b": jnp.ones((4, E), jnp.float32),
        "x_alpha": jnp.full((4, E, H), 0.1 / E, jnp.float32),
        "h_zw": jnp.zeros((4, K, E), jnp.float32),
        "h_zw_b": jnp.ones((4, E), jnp.float32),
        "h_alpha": jnp.full((4, E, H), 0.1 / E, jnp.float32),
        "h_zb": 0.01 * jax.random.normal(k[3], (4, K, E), jnp.float32),
        "h_beta": jnp.zeros((4, E, H), jnp.float32),
        "ln_gates_gain": jnp.ones((4 * H,), jnp.float32),
        "ln_gates_shift": jnp.zeros((4 * H,), jnp.float32),
        "ln_c_gain": jnp.ones((H,), jnp.float32),
        "ln_c_shift": jnp.zeros((H,), jnp.float32),
    }

  def initial_carry(batch_shape=()):
    main = _zeros_carry(H)(batch_shape)
    return HyperCarry(c=main.c, h=main.h, hyper=hyper_cell.initial_carry(batch_shape))

  def input_kernel(params):
    # x feeds the main cell (W_x) and the hyper cell's input rows for x.
    input_size = params["w_x"].shape[0]
    w_hyper_x = params["hyper"]["w_x"][:input_size]
    w = jnp.concatenate([params["w_x"], w_hyper_x], axis=1)
    # No bias here: the static bias is added after the hyper scaling (as rnn.py).
    return w, jnp.zeros((4 * H + 4 * K,), jnp.float32)

  def _embed(hyper_h, zw, zw_b=None):
    """[4, ..., E] per-gate embeddings z = hyper_h @ zw (+ zw_b) of the [..., K] hyper output."""
    z = jnp.einsum("...k,gke->g...e", hyper_h, zw)
    return z if zw_b is None else z + zw_b.reshape((4,) + (1,) * (hyper_h.ndim - 1) + (E,))

  def _per_gate(z, w):
    """[4, ..., H] = z_q @ w_q per gate: gate-major, so no transpose of the [.., 4H] result."""
    return jnp.einsum("g...e,geh->g...h", z, w)

  def recurrent_kernel(params):
    # h_prev feeds the main cell (W_h) and the hyper cell's input rows for h:
    # one [H, 4H + 4K] matmul per step instead of two.
    input_size = params["w_x"].shape[0]
    return jnp.concatenate([params["w_h"], params["hyper"]["w_x"][input_size:]], axis=1)

  def step_split(params, carry, xp, hh, dropout_key=None):
    xh_G, hyper_xp = xp[..., :4 * H], xp[..., 4 * H:]
    hh_G, hyper_hh = hh[..., :4 * H], hh[..., 4 * H:]
    # The hyper cell reads concat(x, h_prev): both parts arrive projected.
    hyper_key = None if (dropout_key is None or hyper_keep >= 1.0) else keys_lib.fold_in(dropout_key, 1)
    hyper_carry, hyper_h = hyper_cell.step_projected(params["hyper"], carry.hyper,
                                                     hyper_xp + hyper_hh, hyper_key)
    sx = _per_gate(_embed(hyper_h, params["x_zw"], params["x_zw_b"]), params["x_alpha"])
    sh = _per_gate(_embed(hyper_h, params["h_zw"], params["h_zw_b"]), params["h_alpha"])
    beta = _per_gate(_embed(hyper_h, params["h_zb"]), params["h_beta"])
    main_key = None if dropout_key is None else keys_lib.fold_in(dropout_key, 0)
    c, h = _ln_update(cpu_kernels)(
        xh_G, hh_G, (sx, sh, beta), params["b"], params["ln_gates_gain"], params["ln_gates_shift"],
        params["ln_c_gain"], params["ln_c_shift"], carry.c, main_key, keep=dropout_keep,
        forget_bias=forget_bias)
    return HyperCarry(c=c, h=h, hyper=hyper_carry), h

  step_projected = _projected_from_split(recurrent_kernel, step_split, matmul_dtype)
  return Cell("hyper", H, init, initial_carry, _compose_step(input_kernel, step_projected, matmul_dtype),
              input_kernel, step_projected, None, recurrent_kernel, step_split, cpu_kernels)


CELLS: dict[str, Callable[..., Cell]] = {
    "lstm": lstm,
    "layer_norm": layer_norm_lstm,
    "hyper": hyper_lstm,
}


def make(name: str, hidden_size: int, **options) -> Cell:
  """CELLS[name](hidden_size, **options), with a clear error for unknown names."""
  if name not in CELLS:
    raise ValueError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}")
  return CELLS[name](hidden_size, **options)
