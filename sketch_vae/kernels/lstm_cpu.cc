// Fused LSTM step elementwise work for XLA:CPU, called through the XLA FFI.
//
// Why: in a scanned LSTM on a 2-core CPU, XLA's generated code for the gate
// nonlinearities runs about 4x slower than a vectorised loop (measured
// 2026-11-24: 0.29 ms vs 0.07 ms per [100, 2048] step), and that work is
// done 2 x 250 times per sequence forward and again backward. The matrix
// products stay with XLA; only the elementwise part of one time step lives
// here, split over rows on XLA's intra-op thread pool.
//
// Semantics (mirrored exactly by the jnp reference in fused_lstm.py):
//   gates g = [i, j, f, o] pre-activations (the original's order)
//   i' = sigmoid(i), jt = tanh(j), f' = sigmoid(f + forget_bias), o' = sigmoid(o)
//   candidate = jt * mask / keep          (recurrent dropout without memory loss)
//   c = c_prev * f' + i' * candidate,  h = tanh(c) * o'
//   rows whose `live` flag is false keep (c_prev, h_prev) unchanged.
// The dropout mask is the keyed hash of sketch_vae/keys.py:
//   x = fmix32(index * 0x9E3779B9 ^ k0); x = fmix32(x ^ k1); keep if x < threshold
// with index = unit (per-row keys) or row * H + unit (one key for all rows).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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

// scale[k] = mask / keep for the H units of one row (all 1 without dropout).
void drop_scales(const Dropout& d, const uint32_t* keys, int64_t row, int64_t H,
                 float* __restrict scale) {
  if (!d.on) {
    for (int64_t k = 0; k < H; ++k) scale[k] = 1.0f;
    return;
  }
  const uint32_t k0 = keys[2 * row], k1 = keys[2 * row + 1];
  const uint32_t base = d.flat_index ? static_cast<uint32_t>(row * H) : 0u;
  for (int64_t k = 0; k < H; ++k) {
    uint32_t x = fmix32(((base + static_cast<uint32_t>(k)) * 0x9E3779B9u) ^ k0);
    x = fmix32(x ^ k1);
    scale[k] = x < d.threshold ? d.inv_keep : 0.0f;
  }
}

void forward_row(int64_t H, float forget_bias, const float* __restrict g, const float* __restrict cp,
                 const float* __restrict scale, float* __restrict c_out, float* __restrict h_out,
                 float* __restrict acts) {
  for (int64_t k = 0; k < H; ++k) {
    float i = sigmoid(g[k]);
    float jt = tanh_approx(g[H + k]);
    float f = sigmoid(g[2 * H + k] + forget_bias);
    float o = sigmoid(g[3 * H + k]);
    float c = cp[k] * f + i * jt * scale[k];
    c_out[k] = c;
    h_out[k] = tanh_approx(c) * o;
    acts[k] = i;
    acts[H + k] = jt;
    acts[2 * H + k] = f;
    acts[3 * H + k] = o;
  }
}

void backward_row(int64_t H, const float* __restrict dh, const float* __restrict dc,
                  const float* __restrict acts, const float* __restrict cp,
                  const float* __restrict cn, const float* __restrict scale,
                  float* __restrict dg, float* __restrict dc_prev, float* __restrict dh_pass) {
  for (int64_t k = 0; k < H; ++k) {
    float i = acts[k], jt = acts[H + k], f = acts[2 * H + k], o = acts[3 * H + k];
    float s = scale[k];
    float tc = tanh_approx(cn[k]);
    float dct = dc[k] + dh[k] * o * (1.0f - tc * tc);
    dg[k] = dct * jt * s * i * (1.0f - i);
    dg[H + k] = dct * i * s * (1.0f - jt * jt);
    dg[2 * H + k] = dct * cp[k] * f * (1.0f - f);
    dg[3 * H + k] = dh[k] * tc * o * (1.0f - o);
    dc_prev[k] = dct * f;
    dh_pass[k] = 0.0f;
  }
}

// Runs fn(row_begin, row_end) over [0, rows) on the pool's threads and this one.
template <typename F>
void parallel_rows(ffi::ThreadPool& pool, int64_t rows, int64_t work_per_row, F fn) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Below ~64k elements a second thread costs more than it saves.
  int64_t chunks = std::min<int64_t>({threads, rows, std::max<int64_t>(1, rows * work_per_row / 65536)});
  if (chunks <= 1) {
    fn(0, rows);
    return;
  }
  std::atomic<int64_t> pending(chunks - 1);
  int64_t per = (rows + chunks - 1) / chunks;
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t a = c * per, b = std::min(rows, a + per);
    pool.Schedule([&, a, b] {
      if (a < b) fn(a, b);
      pending.fetch_sub(1, std::memory_order_release);
    });
  }
  fn(0, std::min(rows, per));
  while (pending.load(std::memory_order_acquire) > 0) std::this_thread::yield();
}

int64_t rows_of(ffi::Buffer<ffi::F32>& b, int64_t width) {
  return static_cast<int64_t>(b.element_count()) / width;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> c_prev,
                   ffi::Buffer<ffi::F32> h_prev, ffi::Buffer<ffi::PRED> live,
                   ffi::Buffer<ffi::U32> keys, float keep, float forget_bias, int64_t threshold,
                   bool use_dropout, bool flat_index, ffi::ResultBuffer<ffi::F32> c_out,
                   ffi::ResultBuffer<ffi::F32> h_out, ffi::ResultBuffer<ffi::F32> acts) {
  auto dims = c_prev.dimensions();
  const int64_t H = dims[dims.size() - 1];
  const int64_t R = rows_of(c_prev, H);
  const Dropout d{use_dropout, flat_index, static_cast<uint32_t>(threshold), 1.0f / keep};
  const float* g = gates.typed_data();
  const float* cp = c_prev.typed_data();
  const float* hp = h_prev.typed_data();
  const bool* lv = live.typed_data();
  const uint32_t* ks = keys.typed_data();
  float* co = c_out->typed_data();
  float* ho = h_out->typed_data();
  float* ac = acts->typed_data();
  parallel_rows(pool, R, 4 * H, [&](int64_t r0, int64_t r1) {
    std::vector<float> scale(H);
    for (int64_t r = r0; r < r1; ++r) {
      if (!lv[r]) {
        std::memcpy(co + r * H, cp + r * H, H * sizeof(float));
        std::memcpy(ho + r * H, hp + r * H, H * sizeof(float));
        std::memset(ac + r * 4 * H, 0, 4 * H * sizeof(float));
        continue;
      }
      drop_scales(d, ks, r, H, scale.data());
      forward_row(H, forget_bias, g + r * 4 * H, cp + r * H, scale.data(), co + r * H, ho + r * H,
                  ac + r * 4 * H);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dh, ffi::Buffer<ffi::F32> dc,
                    ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> c_prev,
                    ffi::Buffer<ffi::F32> c_new, ffi::Buffer<ffi::PRED> live,
                    ffi::Buffer<ffi::U32> keys, float keep, int64_t threshold, bool use_dropout,
                    bool flat_index, ffi::ResultBuffer<ffi::F32> dgates,
                    ffi::ResultBuffer<ffi::F32> dc_prev, ffi::ResultBuffer<ffi::F32> dh_pass) {
  auto dims = c_prev.dimensions();
  const int64_t H = dims[dims.size() - 1];
  const int64_t R = rows_of(c_prev, H);
  const Dropout d{use_dropout, flat_index, static_cast<uint32_t>(threshold), 1.0f / keep};
  const float* dhp = dh.typed_data();
  const float* dcp = dc.typed_data();
  const float* ac = acts.typed_data();
  const float* cp = c_prev.typed_data();
  const float* cn = c_new.typed_data();
  const bool* lv = live.typed_data();
  const uint32_t* ks = keys.typed_data();
  float* dg = dgates->typed_data();
  float* dcp_out = dc_prev->typed_data();
  float* dhpass = dh_pass->typed_data();
  parallel_rows(pool, R, 4 * H, [&](int64_t r0, int64_t r1) {
    std::vector<float> scale(H);
    for (int64_t r = r0; r < r1; ++r) {
      if (!lv[r]) {  // the step held its carry: gradients pass straight through
        std::memset(dg + r * 4 * H, 0, 4 * H * sizeof(float));
        std::memcpy(dcp_out + r * H, dcp + r * H, H * sizeof(float));
        std::memcpy(dhpass + r * H, dhp + r * H, H * sizeof(float));
        continue;
      }
      drop_scales(d, ks, r, H, scale.data());
      backward_row(H, dhp + r * H, dcp + r * H, ac + r * 4 * H, cp + r * H, cn + r * H,
                   scale.data(), dg + r * 4 * H, dcp_out + r * H, dhpass + r * H);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaeLstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // gates
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c_prev
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h_prev
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // live
                                  .Arg<ffi::Buffer<ffi::U32>>()   // keys
                                  .Attr<float>("keep")
                                  .Attr<float>("forget_bias")
                                  .Attr<int64_t>("threshold")
                                  .Attr<bool>("use_dropout")
                                  .Attr<bool>("flat_index")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // c
                                  .Ret<ffi::Buffer<ffi::F32>>()   // h
                                  .Ret<ffi::Buffer<ffi::F32>>()); // acts

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaeLstmBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dh
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dc
                                  .Arg<ffi::Buffer<ffi::F32>>()   // acts
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c_prev
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c_new
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // live
                                  .Arg<ffi::Buffer<ffi::U32>>()   // keys
                                  .Attr<float>("keep")
                                  .Attr<int64_t>("threshold")
                                  .Attr<bool>("use_dropout")
                                  .Attr<bool>("flat_index")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dgates
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dc_prev
                                  .Ret<ffi::Buffer<ffi::F32>>()); // dh_pass
