// Layer-norm LSTM cell update (forward and backward) for XLA:CPU, called through
// the XLA FFI once per time step. Serves the layer-norm LSTM and both cells of
// the HyperLSTM (its small layer-norm LSTM and the main cell, whose gate inputs
// the hyper network scales).
//
// Why: XLA:CPU turns these per-row layer norms into loop fusions that recompute
// their inputs in every fusion and reduce with scalar code; in the paper's
// HyperLSTM 2048 (config C) they took ~10 ms per step forward and more backward
// on 2 cores (profile of 2026-11-25), against well under 1 ms here. The matrix
// products stay with XLA.
//
// Semantics (mirrored by the jnp reference in sketch_vae/fused_ln.py):
//   pre = sx * xh + sh * hh + beta + bias   (scaled: the HyperLSTM main cell)
//   pre = xh + hh + bias                    (otherwise)
//   a   = per gate block q of H units: (pre - mean_q) / sqrt(var_q + 1e-3) * gain + shift
//   i = sigmoid(a_i), jt = tanh(a_j), f = sigmoid(a_f + forget_bias), o = sigmoid(a_o)
//   c = c_prev * f + i * jt * mask / keep   (recurrent dropout without memory loss)
//   h = tanh((c - mean_c) / sqrt(var_c + 1e-3) * c_gain + c_shift) * o
// The backward pass recomputes the row's forward values from the inputs (they
// are a few KB per row and stay in cache), so the forward stores nothing.
//
// Parameters may carry leading batch axes (vmapped calls, e.g. the encoder's
// two directions): rows are split evenly between the parameter groups.
//
// Layouts: xh, hh (and d_xh, d_hh) are [rows, 4H]; the HyperLSTM's sx, sh, beta
// (and d_sx, d_sh, and d_beta = d_pre when scaled) are gate-major, [4, rows, H]
// per parameter group: the layout in which the hyper network's per-gate products
// ([rows, E] x [E, H] for each gate) come out of XLA without a transpose.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ffi_rows.h"
#include "lstm_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using namespace sketch_vae;

namespace {

constexpr float kEps = 1e-3f;
constexpr int kLanes = 16;

// Sums with kLanes independent accumulators, so gcc vectorises them without
// reassociating floating-point math globally.
inline float lane_sum(const float* __restrict x, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[k + j];
  float s = 0.0f;
  for (; k < n; ++k) s += x[k];
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

inline float lane_dot(const float* __restrict x, const float* __restrict y, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[k + j] * y[k + j];
  float s = 0.0f;
  for (; k < n; ++k) s += x[k] * y[k];
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

inline float centred_square_sum(const float* __restrict x, float mean, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      float d = x[k + j] - mean;
      acc[j] += d * d;
    }
  float s = 0.0f;
  for (; k < n; ++k) s += (x[k] - mean) * (x[k] - mean);
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

struct Norm {
  float mean, rstd;
};

inline Norm norm_of(const float* x, int64_t n) {
  float mean = lane_sum(x, n) / n;
  return {mean, 1.0f / std::sqrt(centred_square_sum(x, mean, n) / n + kEps)};
}

// Pointers of one call; per-row inputs are indexed by row, parameters by group.
struct Args {
  int64_t H, G, rows_per_group;
  bool scaled;
  float forget_bias;
  Dropout drop;
  const float *xh, *hh, *sx, *sh, *beta, *bias, *gain, *shift, *c_gain, *c_shift, *c_prev;
  const uint32_t* keys;
};

// Per-thread scratch for one row.
struct Scratch {
  std::vector<float> pre, acts, dA, c, nc, dnc, scale;
  explicit Scratch(int64_t H)
      : pre(4 * H), acts(4 * H), dA(4 * H), c(H), nc(H), dnc(H), scale(H) {}
};

// Offset of row r, gate q in a gate-major [groups, 4, rows_per_group, H] array.
inline int64_t gate_major(const Args& a, int64_t r, int q) {
  const int64_t grp = r / a.rows_per_group, local = r - grp * a.rows_per_group;
  return ((grp * 4 + q) * a.rows_per_group + local) * a.H;
}

// pre-activations of row r, then its four gate-block norms.
inline void gate_inputs(const Args& a, int64_t r, float* __restrict pre, Norm* norms) {
  const int64_t G = a.G, H = a.H, grp = r / a.rows_per_group;
  const float* xh = a.xh + r * G;
  const float* hh = a.hh + r * G;
  const float* bias = a.bias + grp * G;
  if (a.scaled) {
    for (int q = 0; q < 4; ++q) {
      const int64_t o = gate_major(a, r, q), g0 = q * H;
      const float* sx = a.sx + o;
      const float* sh = a.sh + o;
      const float* beta = a.beta + o;
      #pragma GCC ivdep
      for (int64_t k = 0; k < H; ++k)
        pre[g0 + k] = sx[k] * xh[g0 + k] + sh[k] * hh[g0 + k] + beta[k] + bias[g0 + k];
    }
  } else {
    #pragma GCC ivdep
    for (int64_t k = 0; k < G; ++k) pre[k] = xh[k] + hh[k] + bias[k];
  }
  for (int q = 0; q < 4; ++q) norms[q] = norm_of(pre + q * a.H, a.H);
}

// The forward pass of row r up to c: writes c, acts (i, jt, f, o), the gate
// blocks' norms and, in place of pre, the normalised gates n (before gain and shift).
inline void cell_row(const Args& a, int64_t r, Scratch& s, float* __restrict c_out, Norm* nq) {
  const int64_t H = a.H, grp = r / a.rows_per_group;
  float* pre = s.pre.data();
  gate_inputs(a, r, pre, nq);
  // With one key for all rows the mask index is row * H + unit, the row counted
  // within its group; every row carries its key bits.
  const int64_t local = a.drop.flat_index ? r % a.rows_per_group : 0;
  drop_scales(a.drop, a.keys + 2 * (r - local), local, H, 0, H, s.scale.data());
  const float* gain = a.gain + grp * 4 * H;
  const float* shift = a.shift + grp * 4 * H;
  const float* cp = a.c_prev + r * H;
  const float* sc = s.scale.data();
  float* acts = s.acts.data();
  const float fb = a.forget_bias;
  #pragma GCC ivdep
  for (int64_t k = 0; k < H; ++k) {
    float ni = (pre[k] - nq[0].mean) * nq[0].rstd;
    float nj = (pre[H + k] - nq[1].mean) * nq[1].rstd;
    float nf = (pre[2 * H + k] - nq[2].mean) * nq[2].rstd;
    float no = (pre[3 * H + k] - nq[3].mean) * nq[3].rstd;
    pre[k] = ni, pre[H + k] = nj, pre[2 * H + k] = nf, pre[3 * H + k] = no;
    float i = sigmoid(ni * gain[k] + shift[k]);
    float jt = tanh_approx(nj * gain[H + k] + shift[H + k]);
    float f = sigmoid(nf * gain[2 * H + k] + shift[2 * H + k] + fb);
    float o = sigmoid(no * gain[3 * H + k] + shift[3 * H + k]);
    acts[k] = i, acts[H + k] = jt, acts[2 * H + k] = f, acts[3 * H + k] = o;
    c_out[k] = cp[k] * f + i * jt * sc[k];
  }
}

Args make_args(int64_t H, ffi::Buffer<ffi::F32>& xh, ffi::Buffer<ffi::F32>& hh,
               ffi::Buffer<ffi::F32>& sx, ffi::Buffer<ffi::F32>& sh, ffi::Buffer<ffi::F32>& beta,
               ffi::Buffer<ffi::F32>& bias, ffi::Buffer<ffi::F32>& gain,
               ffi::Buffer<ffi::F32>& shift, ffi::Buffer<ffi::F32>& c_gain,
               ffi::Buffer<ffi::F32>& c_shift, ffi::Buffer<ffi::F32>& c_prev,
               ffi::Buffer<ffi::U32>& keys, float keep, float forget_bias, int64_t threshold,
               bool use_dropout, bool flat_index, bool scaled) {
  const int64_t R = rows_of(c_prev, H);
  const int64_t groups = std::max<int64_t>(1, rows_of(gain, 4 * H));
  return Args{H, 4 * H, std::max<int64_t>(1, R / groups), scaled, forget_bias,
              Dropout{use_dropout, flat_index, static_cast<uint32_t>(threshold), 1.0f / keep},
              xh.typed_data(), hh.typed_data(), sx.typed_data(), sh.typed_data(),
              beta.typed_data(), bias.typed_data(), gain.typed_data(), shift.typed_data(),
              c_gain.typed_data(), c_shift.typed_data(), c_prev.typed_data(), keys.typed_data()};
}

// The inputs both handlers take, in the order SKETCH_VAE_LN_ARGS binds them.
#define SKETCH_VAE_LN_PARAMS                                                          \
  ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xh, ffi::Buffer<ffi::F32> hh,           \
      ffi::Buffer<ffi::F32> sx, ffi::Buffer<ffi::F32> sh, ffi::Buffer<ffi::F32> beta, \
      ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> gain,                         \
      ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> c_gain,                      \
      ffi::Buffer<ffi::F32> c_shift, ffi::Buffer<ffi::F32> c_prev,                    \
      ffi::Buffer<ffi::U32> keys

ffi::Error Forward(SKETCH_VAE_LN_PARAMS, float keep, float forget_bias, int64_t threshold,
                   bool use_dropout, bool flat_index, bool scaled,
                   ffi::ResultBuffer<ffi::F32> c_out, ffi::ResultBuffer<ffi::F32> h_out) {
  auto dims = c_prev.dimensions();
  const int64_t H = dims[dims.size() - 1];
  const int64_t R = rows_of(c_prev, H);
  const Args a = make_args(H, xh, hh, sx, sh, beta, bias, gain, shift, c_gain, c_shift, c_prev,
                           keys, keep, forget_bias, threshold, use_dropout, flat_index, scaled);
  float* co = c_out->typed_data();
  float* ho = h_out->typed_data();
  parallel_rows(pool, R, 16 * H, [&](int64_t, int64_t r0, int64_t r1) {
    Scratch s(H);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t grp = r / a.rows_per_group;
      float* c = co + r * H;
      Norm nq[4];
      cell_row(a, r, s, c, nq);
      const Norm nc = norm_of(c, H);
      const float* cg = a.c_gain + grp * H;
      const float* cs = a.c_shift + grp * H;
      const float* o = s.acts.data() + 3 * H;
      float* h = ho + r * H;
      #pragma GCC ivdep
      for (int64_t k = 0; k < H; ++k)
        h[k] = tanh_approx((c[k] - nc.mean) * nc.rstd * cg[k] + cs[k]) * o[k];
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(SKETCH_VAE_LN_PARAMS, ffi::Buffer<ffi::F32> dc_in,
                    ffi::Buffer<ffi::F32> dh_in, float keep,
                    float forget_bias, int64_t threshold, bool use_dropout, bool flat_index,
                    bool scaled, ffi::ResultBuffer<ffi::F32> d_pre_out,
                    ffi::ResultBuffer<ffi::F32> d_xh_out, ffi::ResultBuffer<ffi::F32> d_hh_out,
                    ffi::ResultBuffer<ffi::F32> d_sx_out, ffi::ResultBuffer<ffi::F32> d_sh_out,
                    ffi::ResultBuffer<ffi::F32> d_bias_out,
                    ffi::ResultBuffer<ffi::F32> d_gain_out,
                    ffi::ResultBuffer<ffi::F32> d_shift_out,
                    ffi::ResultBuffer<ffi::F32> d_cg_out, ffi::ResultBuffer<ffi::F32> d_cs_out,
                    ffi::ResultBuffer<ffi::F32> dc_prev_out) {
  auto dims = c_prev.dimensions();
  const int64_t H = dims[dims.size() - 1], G = 4 * H;
  const int64_t R = rows_of(c_prev, H);
  const Args a = make_args(H, xh, hh, sx, sh, beta, bias, gain, shift, c_gain, c_shift, c_prev,
                           keys, keep, forget_bias, threshold, use_dropout, flat_index, scaled);
  const int64_t groups = std::max<int64_t>(1, rows_of(gain, G));
  // Parameter gradients are summed over rows: per chunk and group, then over chunks.
  // Layout of one (chunk, group) block: d_bias G, d_gain G, d_shift G, d_cg H, d_cs H.
  const int64_t block = 3 * G + 2 * H;
  std::vector<float> partial(max_chunks(pool) * groups * block, 0.0f);
  const float* dcs = dc_in.typed_data();
  const float* dhs = dh_in.typed_data();
  float* d_pre = d_pre_out->typed_data();
  float* dcp = dc_prev_out->typed_data();
  int64_t used = parallel_rows(pool, R, 16 * H, [&](int64_t chunk, int64_t r0, int64_t r1) {
    Scratch s(H);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t grp = r / a.rows_per_group;
      float* acc = partial.data() + (chunk * groups + grp) * block;
      float *acc_bias = acc, *acc_gain = acc + G, *acc_shift = acc + 2 * G;
      float *acc_cg = acc + 3 * G, *acc_cs = acc + 3 * G + H;
      float* c = s.c.data();
      Norm nq[4];
      cell_row(a, r, s, c, nq);  // s.pre now holds the normalised gates n
      const Norm ncs = norm_of(c, H);
      const float* cg = a.c_gain + grp * H;
      const float* cs = a.c_shift + grp * H;
      const float* gain = a.gain + grp * G;
      const float* n = s.pre.data();
      const float* acts = s.acts.data();
      const float* sc = s.scale.data();
      const float* cp = a.c_prev + r * H;
      const float* dh = dhs + r * H;
      const float* dc = dcs + r * H;
      float *nc = s.nc.data(), *dnc = s.dnc.data(), *dA = s.dA.data();
      // h = tanh(y) * o, y = nc * cg + cs.
      #pragma GCC ivdep
      for (int64_t k = 0; k < H; ++k) {
        float o = acts[3 * H + k];
        float x = (c[k] - ncs.mean) * ncs.rstd;
        float ty = tanh_approx(x * cg[k] + cs[k]);
        float dy = dh[k] * o * (1.0f - ty * ty);
        nc[k] = x;
        acc_cg[k] += dy * x;
        acc_cs[k] += dy;
        dnc[k] = dy * cg[k];
        dA[3 * H + k] = dh[k] * ty * o * (1.0f - o);
      }
      // Through the layer norm of c, then the cell update.
      const float m1 = lane_sum(dnc, H) / H, m2 = lane_dot(dnc, nc, H) / H;
      float* dcpr = dcp + r * H;
      #pragma GCC ivdep
      for (int64_t k = 0; k < H; ++k) {
        float dct = dc[k] + ncs.rstd * (dnc[k] - m1 - nc[k] * m2);
        float i = acts[k], jt = acts[H + k], f = acts[2 * H + k];
        dA[k] = dct * jt * sc[k] * i * (1.0f - i);
        dA[H + k] = dct * i * sc[k] * (1.0f - jt * jt);
        dA[2 * H + k] = dct * cp[k] * f * (1.0f - f);
        dcpr[k] = dct * f;
      }
      // Through each gate block's layer norm: dn = dA * gain, then
      // d_pre = rstd * (dn - mean(dn) - n * mean(dn * n)). dA is reused for dn.
      for (int q = 0; q < 4; ++q) {
        const float* nq_ = n + q * H;
        float* dAq = dA + q * H;
        const float* gq = gain + q * H;
        float* ag = acc_gain + q * H;
        float* as = acc_shift + q * H;
        #pragma GCC ivdep
        for (int64_t k = 0; k < H; ++k) {
          ag[k] += dAq[k] * nq_[k];
          as[k] += dAq[k];
          dAq[k] *= gq[k];
        }
      }
      for (int q = 0; q < 4; ++q) {
        const float* nq_ = n + q * H;
        const float* dn = dA + q * H;
        const float t1 = lane_sum(dn, H) / H, t2 = lane_dot(dn, nq_, H) / H;
        const float rs = nq[q].rstd;
        // d_pre is d_beta when scaled (gate-major), else row-major [rows, 4H].
        float* out = d_pre + (a.scaled ? gate_major(a, r, q) : r * G + q * H);
        float* ab = acc_bias + q * H;
        #pragma GCC ivdep
        for (int64_t k = 0; k < H; ++k) {
          float g = rs * (dn[k] - t1 - nq_[k] * t2);
          out[k] = g;
          ab[k] += g;
        }
      }
      if (a.scaled) {
        for (int q = 0; q < 4; ++q) {
          const int64_t o = gate_major(a, r, q), g0 = r * G + q * H;
          const float* dp = d_pre + o;
          const float* xr = a.xh + g0;
          const float* hr = a.hh + g0;
          const float* sxr = a.sx + o;
          const float* shr = a.sh + o;
          float* dxh = d_xh_out->typed_data() + g0;
          float* dhh = d_hh_out->typed_data() + g0;
          float* dsx = d_sx_out->typed_data() + o;
          float* dsh = d_sh_out->typed_data() + o;
          #pragma GCC ivdep
          for (int64_t k = 0; k < H; ++k) {
            float g = dp[k];
            dxh[k] = g * sxr[k];
            dhh[k] = g * shr[k];
            dsx[k] = g * xr[k];
            dsh[k] = g * hr[k];
          }
        }
      }
    }
  });
  float* outs[5] = {d_bias_out->typed_data(), d_gain_out->typed_data(),
                    d_shift_out->typed_data(), d_cg_out->typed_data(), d_cs_out->typed_data()};
  const int64_t widths[5] = {G, G, G, H, H};
  const int64_t offsets[5] = {0, G, 2 * G, 3 * G, 3 * G + H};
  for (int64_t g = 0; g < groups; ++g)
    for (int p = 0; p < 5; ++p) {
      float* out = outs[p] + g * widths[p];
      std::memset(out, 0, widths[p] * sizeof(float));
      for (int64_t ch = 0; ch < used; ++ch) {
        const float* src = partial.data() + (ch * groups + g) * block + offsets[p];
        for (int64_t k = 0; k < widths[p]; ++k) out[k] += src[k];
      }
    }
  return ffi::Error::Success();
}

}  // namespace

#define SKETCH_VAE_LN_ARGS                                                        \
  .Ctx<ffi::ThreadPool>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>() /* xh */                                      \
      .Arg<ffi::Buffer<ffi::F32>>() /* hh */                                      \
      .Arg<ffi::Buffer<ffi::F32>>() /* sx [4, rows, H] (scaled only) */           \
      .Arg<ffi::Buffer<ffi::F32>>() /* sh [4, rows, H] (scaled only) */           \
      .Arg<ffi::Buffer<ffi::F32>>() /* beta [4, rows, H] (scaled only) */         \
      .Arg<ffi::Buffer<ffi::F32>>() /* bias */                                    \
      .Arg<ffi::Buffer<ffi::F32>>() /* gain */                                    \
      .Arg<ffi::Buffer<ffi::F32>>() /* shift */                                   \
      .Arg<ffi::Buffer<ffi::F32>>() /* c_gain */                                  \
      .Arg<ffi::Buffer<ffi::F32>>() /* c_shift */                                 \
      .Arg<ffi::Buffer<ffi::F32>>() /* c_prev */                                  \
      .Arg<ffi::Buffer<ffi::U32>>() /* key bits per row */

#define SKETCH_VAE_LN_ATTRS          \
  .Attr<float>("keep")               \
      .Attr<float>("forget_bias")    \
      .Attr<int64_t>("threshold")    \
      .Attr<bool>("use_dropout")     \
      .Attr<bool>("flat_index")      \
      .Attr<bool>("scaled")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaeLnLstmForward, Forward,
                              ffi::Ffi::Bind() SKETCH_VAE_LN_ARGS SKETCH_VAE_LN_ATTRS
                                  .Ret<ffi::Buffer<ffi::F32>>()    // c
                                  .Ret<ffi::Buffer<ffi::F32>>());  // h

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaeLnLstmBackward, Backward,
                              ffi::Ffi::Bind() SKETCH_VAE_LN_ARGS
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dc
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh
                                  SKETCH_VAE_LN_ATTRS
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_pre ([4, rows, H] when scaled)
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_xh (scaled only)
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_hh (scaled only)
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_sx (scaled only)
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_sh (scaled only)
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_bias
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_gain
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_shift
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_c_gain
                                  .Ret<ffi::Buffer<ffi::F32>>()    // d_c_shift
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dc_prev
