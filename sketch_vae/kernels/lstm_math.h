// Shared scalar math of the LSTM CPU kernels: fast exp / sigmoid / tanh that gcc
// vectorises, and the keyed dropout hash of sketch_vae/keys.py.
#pragma once

#include <cstdint>

namespace sketch_vae {

inline float exp_approx(float x) {
  // exp by range reduction x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 Taylor
  // polynomial for e^r (relative error about 1e-7), scaled by 2^n via the exponent bits.
  // Written without calls or branches so that gcc vectorises the loops using it.
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

inline float tanh_approx(float x) {
  // Small |x|: odd Taylor series to x^9 (error < 3e-9 at 0.25); otherwise
  // (e - 1) / (e + 1) with e = exp(2x). Both computed, one selected, so the
  // loop stays branch-free and vectorises.
  float x2 = x * x;
  float small = x * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f +
                                                                        x2 * (62.0f / 2835.0f)))));
  float e = exp_approx(2.0f * x);
  float large = (e - 1.0f) / (e + 1.0f);
  return (x < 0.25f && x > -0.25f) ? small : large;
}

inline uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

struct Dropout {
  bool on;
  bool flat_index;
  uint32_t threshold;
  float inv_keep;
};

// scale[k] = mask / keep for units u0 .. u0 + n of one row of H units (all 1
// without dropout).
inline void drop_scales(const Dropout& d, const uint32_t* keys, int64_t row, int64_t H,
                        int64_t u0, int64_t n, float* __restrict scale) {
  if (!d.on) {
    for (int64_t k = 0; k < n; ++k) scale[k] = 1.0f;
    return;
  }
  const uint32_t k0 = keys[2 * row], k1 = keys[2 * row + 1];
  const uint32_t base = static_cast<uint32_t>((d.flat_index ? row * H : 0) + u0);
  const uint32_t count = static_cast<uint32_t>(n), threshold = d.threshold;
  const float inv_keep = d.inv_keep;
  for (uint32_t k = 0; k < count; ++k) {  // 32-bit induction variable: gcc vectorises this
    uint32_t x = fmix32(((base + k) * 0x9E3779B9u) ^ k0);
    x = fmix32(x ^ k1);
    scale[k] = x < threshold ? inv_keep : 0.0f;
  }
}

// One row of the cell update for n units. Gate q of unit k is g[q * gs + k]
// (pre-activation, order i, j, f, o; plus bias[q * bs + k] when kBias) and
// acts[q * as + k] (after it).
template <bool kBias>
inline void forward_row(int64_t n, int64_t gs, int64_t as, float forget_bias,
                        const float* __restrict g, const float* __restrict bias, int64_t bs,
                        const float* __restrict cp, const float* __restrict scale,
                        float* __restrict c_out, float* __restrict h_out, float* __restrict acts) {
  for (int64_t k = 0; k < n; ++k) {
    float gi = g[k], gj = g[gs + k], gf = g[2 * gs + k], go = g[3 * gs + k];
    if constexpr (kBias) {
      gi += bias[k], gj += bias[bs + k], gf += bias[2 * bs + k], go += bias[3 * bs + k];
    }
    float i = sigmoid(gi);
    float jt = tanh_approx(gj);
    float f = sigmoid(gf + forget_bias);
    float o = sigmoid(go);
    float c = cp[k] * f + i * jt * scale[k];
    c_out[k] = c;
    h_out[k] = tanh_approx(c) * o;
    acts[k] = i;
    acts[as + k] = jt;
    acts[2 * as + k] = f;
    acts[3 * as + k] = o;
  }
}

// Its gradient: gate gradients dg[q * ds + k], dc to the previous step; dh_pass
// (the part of dh that skips the step's matmul) is 0 for a live row.
inline void backward_row(int64_t n, int64_t as, int64_t ds, const float* __restrict dh,
                         const float* __restrict dc, const float* __restrict acts,
                         const float* __restrict cp, const float* __restrict cn,
                         const float* __restrict scale, float* __restrict dg,
                         float* __restrict dc_prev, float* __restrict dh_pass) {
  for (int64_t k = 0; k < n; ++k) {
    float i = acts[k], jt = acts[as + k], f = acts[2 * as + k], o = acts[3 * as + k];
    float s = scale[k];
    float tc = tanh_approx(cn[k]);
    float dct = dc[k] + dh[k] * o * (1.0f - tc * tc);
    dg[k] = dct * jt * s * i * (1.0f - i);
    dg[ds + k] = dct * i * s * (1.0f - jt * jt);
    dg[2 * ds + k] = dct * cp[k] * f * (1.0f - f);
    dg[3 * ds + k] = dh[k] * tc * o * (1.0f - o);
    dc_prev[k] = dct * f;
    dh_pass[k] = 0.0f;
  }
}

}  // namespace sketch_vae
