// A whole LSTM sequence (all T steps, matrix products included) in one XLA FFI
// call, forward and backward, for XLA:CPU.
//
// Why: on a 2-core CPU the recurrence is 250 dependent [R x H] x [H x 4H]
// products per direction. As XLA dots inside a scan they ran at about half of
// the machine's matmul rate (each call re-packs the weight, splits the work
// anew and synchronises its thread pool). Here the weight is packed once per
// sequence (gemm_cpu.h), each worker thread owns a fixed slice of hidden units
// for the whole sequence, writes its part of the next step's A operand directly
// in the micro-kernel's layout, and the workers meet at one spin barrier per step.
// Measured on 2 cores (2026-11-25, config A float32): 1.50 -> 1.16 s per step.
//
// Work split: independent sequences (the encoder's two directions, vmapped)
// go to different threads; a single sequence (the decoder) is split by hidden
// units, each worker computing all four gates of its units so that the cell
// update needs nothing from the other workers.
//
// Semantics: the same equations as the per-step kernels in lstm_cpu.cc and the
// jnp reference in fused_lstm.py; gates = [h_{t-1}, x_t] [W_h; W_x] + static,
// where x is narrow (the stroke values) and rides along in the product's K.
// Backward returns dc0, dh0, dW_h, dW_x, the static input's gradient and,
// when asked, dx; the weight gradients are formed inside the loop, a group of
// steps per product, so no [T, R, 4H] array of gate gradients is written.

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "gemm_cpu.h"
#include "lstm_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using namespace sketch_vae;

namespace {

class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void wait() {
    if (n_ <= 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins > 4000) {
        std::this_thread::yield();  // oversubscribed: let the others run
      } else {
#if defined(__x86_64__)
        _mm_pause();
#endif
      }
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0}, gen_{0};
};

// dst[k] = src[k] (or 0 when src is null) for k < n, with streaming stores where dst
// is 64-byte aligned: an ended row's held state is written once per step and not
// read again in this call, so it need not pass through the cache. Callers fence
// (_mm_sfence) before other threads may read what was written.
inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t k = 0;
#if defined(__AVX512F__)
  if ((reinterpret_cast<uintptr_t>(dst) & 63) == 0) {
    for (; k + 16 <= n; k += 16)
      _mm512_stream_ps(dst + k, src ? _mm512_loadu_ps(src + k) : _mm512_setzero_ps());
  }
#endif
  for (; k < n; ++k) dst[k] = src ? src[k] : 0.0f;
}

// out[k] = a[k] + b[k] (out may be a or b).
inline void add(int64_t n, const float* a, const float* b, float* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = a[k] + b[k];
}

// y[k] += alpha x[k].
inline void axpy(int64_t n, float alpha, const float* __restrict x, float* __restrict y) {
  for (int64_t k = 0; k < n; ++k) y[k] += alpha * x[k];
}

int64_t cores() {
  static const int64_t n = [] {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return static_cast<int64_t>(CPU_COUNT(&set));
    return static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return n;
}

// One worker's share: sequence p, hidden units [u0, u0 + nu).
struct Share {
  int64_t p, u0, nu;
  int group;  // index of the sequence's shared state
};

// Splits P sequences of H units over the threads: whole sequences per thread
// when there are several, else units (multiples of 16 where possible).
std::vector<std::vector<Share>> plan(int64_t P, int64_t H, int64_t flops_per_step, int64_t threads) {
  int64_t n = threads > 0 ? threads : cores();
  std::vector<std::vector<Share>> work;
  if (P > 1 || n <= 1 || (threads <= 0 && flops_per_step < (int64_t{1} << 22))) {
    n = std::min(n, P);
    work.resize(n);
    for (int64_t p = 0; p < P; ++p) work[p % n].push_back({p, 0, H, static_cast<int>(p)});
    return work;
  }
  const int64_t grain = H >= 16 * n ? 16 : 4;
  const int64_t chunk = ((H + n - 1) / n + grain - 1) / grain * grain;
  for (int64_t u0 = 0; u0 < H; u0 += chunk) work.push_back({{0, u0, std::min(chunk, H - u0), 0}});
  return work;
}

// Runs fn(share, barrier) on one thread per worker (this thread runs the first).
template <typename F>
void run_workers(const std::vector<std::vector<Share>>& work, bool amx, F fn) {
  const int nw = static_cast<int>(work.size());
  // Workers that split one sequence meet at a barrier each step.
  const bool split = nw > 1 && work[0].size() == 1 && work[1][0].p == work[0][0].p;
  SpinBarrier barrier(split ? nw : 1);
  auto body = [&](int w) {
    if (amx) {
      AmxThread tiles;  // tile configuration is per thread
      for (const Share& s : work[w]) fn(s, barrier);
    } else {
      for (const Share& s : work[w]) fn(s, barrier);
    }
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < nw; ++w) threads.emplace_back(body, w);
  body(0);
  for (auto& t : threads) t.join();
}

struct Dims {
  int64_t P, T, R, I, H, G, Rs;
};

ffi::Error check(bool ok, const char* what) {
  return ok ? ffi::Error::Success() : ffi::Error(ffi::ErrorCode::kInvalidArgument, what);
}

// Shapes from w_h [..., H, 4H] and x [..., T, R, I]; leading axes are sequences.
ffi::Error dims_of(ffi::Buffer<ffi::F32>& w_h, ffi::Buffer<ffi::F32>& x, bool static_rows,
                   int64_t static_elems, Dims& d) {
  auto wd = w_h.dimensions();
  auto xd = x.dimensions();
  if (wd.size() < 2 || xd.size() < 3) return check(false, "lstm_seq: bad ranks");
  d.H = wd[wd.size() - 2];
  d.G = wd[wd.size() - 1];
  d.T = xd[xd.size() - 3];
  d.R = xd[xd.size() - 2];
  d.I = xd[xd.size() - 1];
  d.P = static_cast<int64_t>(w_h.element_count()) / (d.H * d.G);
  d.Rs = static_rows ? d.R : 1;
  if (d.G != 4 * d.H) return check(false, "lstm_seq: w_h must be [H, 4H]");
  if (static_cast<int64_t>(x.element_count()) != d.P * d.T * d.R * d.I)
    return check(false, "lstm_seq: x does not match w_h's leading axes");
  if (static_elems != d.P * d.Rs * d.G) return check(false, "lstm_seq: static input has the wrong size");
  return ffi::Error::Success();
}

// Rows ordered by how many steps they are live (most first, stable), and for
// each step the number of leading rows in that order that contain every live
// row. With length masks (live = a prefix or a suffix of the steps), step t's
// live rows are exactly the first rows[t], so the products skip ended rows:
// for lengths uniform in 30..250 of 250 steps, about 44% of the work.
struct RowOrder {
  std::vector<int64_t> perm, rows;
};

RowOrder order_rows(const bool* live, int64_t T, int64_t R) {
  RowOrder o;
  std::vector<int64_t> count(R, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < R; ++r) count[r] += live[t * R + r];
  o.perm.resize(R);
  for (int64_t r = 0; r < R; ++r) o.perm[r] = r;
  std::stable_sort(o.perm.begin(), o.perm.end(), [&](int64_t a, int64_t b) { return count[a] > count[b]; });
  o.rows.assign(T, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < R; ++i)
      if (live[t * R + o.perm[i]]) o.rows[t] = i + 1;
  return o;
}

// Per-sequence A buffers (two: step t reads one while the next is written).
struct SharedA {
  std::vector<float> f32[2];
  std::vector<uint16_t> bf16[2];
  void* at(int i) { return f32[i].empty() ? static_cast<void*>(bf16[i].data()) : f32[i].data(); }
};

std::vector<SharedA> shared_buffers(int64_t groups, const PackedGemm& geometry) {
  std::vector<SharedA> bufs(groups);
  for (auto& b : bufs)
    for (int i = 0; i < 2; ++i) {
      if (geometry.a_bf16()) {
        b.bf16[i].assign(geometry.a_size(), 0);
      } else {
        b.f32[i].assign(geometry.a_size(), 0.0f);
      }
    }
  return bufs;
}

ffi::Error SeqForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_x, ffi::Buffer<ffi::F32> xps,
                      ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> h0,
                      ffi::Buffer<ffi::PRED> live, ffi::Buffer<ffi::U32> keys, float keep,
                      float forget_bias, int64_t threshold, bool use_dropout, bool flat_index,
                      bool static_rows, bool bf16, int64_t threads,
                      ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> cs,
                      ffi::ResultBuffer<ffi::F32> acts, ffi::ResultBuffer<ffi::F32> c_fin,
                      ffi::ResultBuffer<ffi::F32> h_fin) {
  Dims d;
  if (auto e = dims_of(w_h, x, static_rows, xps.element_count(), d); e.failure()) return e;
  const int64_t T = d.T, R = d.R, I = d.I, H = d.H, G = d.G;
  const Dropout drop{use_dropout, flat_index, static_cast<uint32_t>(threshold), 1.0f / keep};
  auto work = plan(d.P, H, 2 * R * H * G, threads);
  PackedGemm geometry;
  geometry.shape(R, H + I, 16, bf16);
  auto shared = shared_buffers(d.P, geometry);

  run_workers(work, geometry.a_bf16(), [&](const Share& s, SpinBarrier& barrier) {
    const int64_t p = s.p, u0 = s.u0, nu = s.nu, N = 4 * nu;
    auto col = [&](int64_t j) { return (j / nu) * H + u0 + j % nu; };  // local gate column -> global
    const float* wh = w_h.typed_data() + p * H * G;
    const float* wx = w_x.typed_data() + p * I * G;
    // A = [h_{t-1}, x_t] (K = H + I), B = [W_h; W_x] for this worker's gate columns.
    PackedGemm gemm;
    gemm.shape(R, H + I, N, bf16);
    gemm.pack([&](int64_t k, int64_t j) {
      return k < H ? wh[k * G + col(j)] : wx[(k - H) * G + col(j)];
    });
    std::vector<float> c(gemm.rows() * gemm.ldc()), scale(nu);
    const float* xs = x.typed_data() + p * T * R * I;
    const float* st = xps.typed_data() + p * d.Rs * G;
    const float* c_init = c0.typed_data() + p * R * H;
    const float* h_init = h0.typed_data() + p * R * H;
    const bool* lv = live.typed_data() + p * T * R;
    const uint32_t* ks = keys.typed_data() + p * T * R * 2;
    float* hs_p = hs->typed_data() + p * T * R * H;
    float* cs_p = cs->typed_data() + p * T * R * H;
    float* ac_p = acts->typed_data() + p * T * R * G;
    SharedA& a = shared[s.group];
    // Row i of A and C is sequence row perm[i].
    const RowOrder order = order_rows(lv, T, R);
    // x_t's columns are written by the worker of unit 0.
    auto put_x = [&](void* a_buf, int64_t t) {
      if (u0 != 0 || t >= T) return;
      for (int64_t i = 0; i < R; ++i) gemm.put_row(a_buf, i, H, xs + (t * R + order.perm[i]) * I, I);
    };
    for (int64_t i = 0; i < R; ++i) gemm.put_row(a.at(0), i, u0, h_init + order.perm[i] * H + u0, nu);
    put_x(a.at(0), 0);
    barrier.wait();

    for (int64_t t = 0; t < T; ++t) {
      gemm.run(a.at(t % 2), c.data(), order.rows[t]);
      void* a_next = a.at((t + 1) % 2);
      put_x(a_next, t + 1);
      const float* cp_t = t > 0 ? cs_p + (t - 1) * R * H : c_init;
      const float* hp_t = t > 0 ? hs_p + (t - 1) * R * H : h_init;
      for (int64_t i = 0; i < R; ++i) {
        const int64_t r = order.perm[i];
        const float* cp = cp_t + r * H + u0;
        const float* hp = hp_t + r * H + u0;
        float* c_out = cs_p + (t * R + r) * H + u0;
        float* h_out = hs_p + (t * R + r) * H + u0;
        float* a_out = ac_p + (t * R + r) * G + u0;
        if (!lv[t * R + r]) {
          stream_copy(c_out, cp, nu);
          stream_copy(h_out, hp, nu);
          for (int64_t g = 0; g < 4; ++g) stream_copy(a_out + g * H, nullptr, nu);
          gemm.put_row(a_next, i, u0, hp, nu);
          continue;
        }
        const float* srow = st + (static_rows ? r : 0) * G + u0;
        drop_scales(drop, ks + t * R * 2, r, H, u0, nu, scale.data());
        forward_row<true>(nu, nu, H, forget_bias, c.data() + i * gemm.ldc(), srow, H, cp,
                          scale.data(), c_out, h_out, a_out);
        gemm.put_row(a_next, i, u0, h_out, nu);
      }
      barrier.wait();
    }
#if defined(__AVX512F__)
    _mm_sfence();
#endif
    float* cf = c_fin->typed_data() + p * R * H;
    float* hf = h_fin->typed_data() + p * R * H;
    for (int64_t r = 0; r < R; ++r) {
      const float* cl = T > 0 ? cs_p + ((T - 1) * R + r) * H : c_init + r * H;
      const float* hl = T > 0 ? hs_p + ((T - 1) * R + r) * H : h_init + r * H;
      std::memcpy(cf + r * H + u0, cl + u0, nu * sizeof(float));
      std::memcpy(hf + r * H + u0, hl + u0, nu * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

ffi::Error SeqBackward(ffi::Buffer<ffi::F32> d_hs, ffi::Buffer<ffi::F32> dh_fin,
                       ffi::Buffer<ffi::F32> dc_fin, ffi::Buffer<ffi::F32> acts,
                       ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> cs,
                       ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                       ffi::Buffer<ffi::PRED> live, ffi::Buffer<ffi::U32> keys,
                       ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> w_x,
                       ffi::Buffer<ffi::F32> x, float keep, int64_t threshold, bool use_dropout,
                       bool flat_index, bool static_rows, bool bf16, bool has_dhs, bool need_dx,
                       int64_t threads, ffi::ResultBuffer<ffi::F32> dc0,
                       ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> d_wh,
                       ffi::ResultBuffer<ffi::F32> d_wx, ffi::ResultBuffer<ffi::F32> d_static,
                       ffi::ResultBuffer<ffi::F32> dx) {
  Dims d;
  if (auto e = dims_of(w_h, x, static_rows, d_static->element_count(), d); e.failure()) return e;
  const int64_t T = d.T, R = d.R, I = d.I, H = d.H, G = d.G;
  if (has_dhs && static_cast<int64_t>(d_hs.element_count()) != d.P * T * R * H)
    return check(false, "lstm_seq: d_hs does not match");
  const Dropout drop{use_dropout, flat_index, static_cast<uint32_t>(threshold), 1.0f / keep};
  auto work = plan(d.P, H, 2 * R * H * G, threads);
  // Two products: dh_{t-1} = dg_t . W_h^T every step (A = dg_t, shared by the
  // workers), and the weight gradients every kGroup steps as one product
  //   [dW_h; dW_x; d_bias] += [h_{t-1}; x_t; 1]^T . dg_t   (stacked over the group's steps)
  // with K = kGroup * R (A shared; B = this worker's gate columns of dg). The
  // "1" row (a shared bias) is present only when the static input is not per row;
  // a per-row static input's gradient is summed in the cell update instead.
  constexpr int64_t kGroup = 4;
  const int64_t group = std::min<int64_t>(kGroup, std::max<int64_t>(T, 1));
  const int64_t M = H + I + (static_rows ? 0 : 1), Kw = group * R;
  PackedGemm geometry, geometry_w;
  geometry.shape(R, G, 16, bf16);
  geometry_w.shape(M, Kw, 16, bf16);
  auto shared = shared_buffers(d.P, geometry);
  auto shared_w = shared_buffers(d.P, geometry_w);

  run_workers(work, geometry.a_bf16(), [&](const Share& s, SpinBarrier& barrier) {
    const int64_t p = s.p, u0 = s.u0, nu = s.nu, N = 4 * nu;
    const float* wh = w_h.typed_data() + p * H * G;
    const float* wx = w_x.typed_data() + p * I * G;
    // dh for this worker's units; the worker of unit 0 also computes dx_t = dg_t . W_x^T
    // and writes the x and bias rows of the weight-gradient product.
    const bool lead = u0 == 0;
    const int64_t nx = (need_dx && lead) ? I : 0;
    PackedGemm gemm;
    gemm.shape(R, G, nu + nx, bf16);
    gemm.pack([&](int64_t k, int64_t j) { return j < nu ? wh[(u0 + j) * G + k] : wx[(j - nu) * G + k]; });
    PackedGemm gemm_w;
    gemm_w.shape(M, Kw, N, bf16);
    std::vector<float> b_w32(gemm_w.a_bf16() ? 0 : gemm_w.b_size(), 0.0f);
    std::vector<uint16_t> b_w16(gemm_w.a_bf16() ? gemm_w.b_size() : 0, 0);
    void* b_w = gemm_w.a_bf16() ? static_cast<void*>(b_w16.data()) : b_w32.data();
    std::vector<float> c_w(gemm_w.rows() * gemm_w.ldc(), 0.0f);  // [dW_h; dW_x; d_bias][:, own]

    std::vector<float> c(gemm.rows() * gemm.ldc()), scale(nu), dh(nu), dc_new(nu), zeros(N, 0.0f);
    // The gate gradients of one row block of A: rows are computed one by one into
    // `block` and written to A a block at a time (gemm.put_rows).
    const int64_t mb = gemm.block_rows();
    std::vector<float> block(mb * N);
    std::vector<float> dh_carry(R * nu), dc_carry(R * nu), dh_pass(R * nu, 0.0f), ones(R, 1.0f);
    std::vector<float> d_rows(static_rows ? R * N : 0, 0.0f);  // per-row static gradient
    const float* dhf = dh_fin.typed_data() + p * R * H;
    const float* dcf = dc_fin.typed_data() + p * R * H;
    for (int64_t r = 0; r < R; ++r) {
      std::memcpy(dh_carry.data() + r * nu, dhf + r * H + u0, nu * sizeof(float));
      std::memcpy(dc_carry.data() + r * nu, dcf + r * H + u0, nu * sizeof(float));
    }
    const float* dhs_p = has_dhs ? d_hs.typed_data() + p * T * R * H : nullptr;
    const float* ac_p = acts.typed_data() + p * T * R * G;
    const float* hs_p = hs.typed_data() + p * T * R * H;
    const float* cs_p = cs.typed_data() + p * T * R * H;
    const float* h_init = h0.typed_data() + p * R * H;
    const float* c_init = c0.typed_data() + p * R * H;
    const float* xs = x.typed_data() + p * T * R * I;
    const bool* lv = live.typed_data() + p * T * R;
    const uint32_t* ks = keys.typed_data() + p * T * R * 2;
    float* dx_p = nx ? dx->typed_data() + p * T * R * I : nullptr;
    SharedA& a = shared[s.group];
    SharedA& a_w = shared_w[s.group];

    // Row i of A1 and C is sequence row perm[i]; the weight-gradient product takes
    // only live rows, packed one after another along its K (all workers agree on
    // the packing: live rows in order of i).
    const RowOrder order = order_rows(lv, T, R);
    for (int64_t t = T - 1, slot = 0, kfill = 0, round = 0; t >= 0; --t) {
      void* a_t = a.at(t % 2);
      void* aw = a_w.at(round % 2);
      const float* hp_t = t > 0 ? hs_p + (t - 1) * R * H : h_init;
      for (int64_t i = 0, k = kfill; i < R; ++i) {
        const int64_t r = order.perm[i];
        if (!lv[t * R + r]) continue;
        gemm_w.put_col(aw, u0, k, hp_t + r * H + u0, 1, nu);
        if (lead) {
          gemm_w.put_col(aw, H, k, xs + (t * R + r) * I, 1, I);
          if (!static_rows) gemm_w.put_col(aw, H + I, k, ones.data(), 1, 1);
        }
        ++k;
      }
      for (int64_t i = 0; i < R; ++i) {
        const int64_t r = order.perm[i];
        float* dhc = dh_carry.data() + r * nu;
        float* dcc = dc_carry.data() + r * nu;
        float* dhp = dh_pass.data() + r * nu;
        if (has_dhs) {
          add(nu, dhc, dhs_p + (t * R + r) * H + u0, dh.data());
        } else {
          std::memcpy(dh.data(), dhc, nu * sizeof(float));
        }
        // Row i's gate gradients go to its slot of `block`; a full (or the last) block
        // that the product reads (it reads order.rows[t] rows, rounded up to a block;
        // stale rows of `block` there are finite and their C rows unused) goes to A.
        float* dgl = block.data() + (i % mb) * N;
        const int64_t first = i - i % mb;
        const bool flush = (i % mb == mb - 1 || i == R - 1) && first < order.rows[t];
        auto write_block = [&] {
          for (int64_t g = 0; g < 4; ++g)
            gemm.put_rows(a_t, first, i - first + 1, g * H + u0, block.data() + g * nu, N, nu);
        };
        if (!lv[t * R + r]) {  // the step held its carry: gradients pass straight through
          if (i < order.rows[t])  // inside the product's rows: its C row must come out 0
            std::fill(dgl, dgl + N, 0.0f);
          std::memcpy(dhp, dh.data(), nu * sizeof(float));
          if (flush) write_block();
          continue;
        }
        const float* ar = ac_p + (t * R + r) * G + u0;
        const float* cp = (t > 0 ? cs_p + (t - 1) * R * H : c_init) + r * H + u0;
        const float* cn = cs_p + (t * R + r) * H + u0;
        drop_scales(drop, ks + t * R * 2, r, H, u0, nu, scale.data());
        backward_row(nu, H, nu, dh.data(), dcc, ar, cp, cn, scale.data(), dgl, dc_new.data(), dhp);
        std::memcpy(dcc, dc_new.data(), nu * sizeof(float));
        gemm_w.put_b_row(b_w, kfill++, 0, dgl, N);
        if (static_rows) add(N, dgl, d_rows.data() + r * N, d_rows.data() + r * N);
        if (flush) write_block();
      }
      barrier.wait();
      const int64_t rows = order.rows[t];
      gemm.run(a_t, c.data(), rows);
      for (int64_t i = 0; i < R; ++i) {
        const int64_t r = order.perm[i];
        if (i < rows) {
          add(nu, c.data() + i * gemm.ldc(), dh_pass.data() + r * nu, dh_carry.data() + r * nu);
        } else {
          std::memcpy(dh_carry.data() + r * nu, dh_pass.data() + r * nu, nu * sizeof(float));
        }
        if (nx) {
          float* dxr = dx_p + (t * R + r) * I;
          if (i < rows) {
            std::memcpy(dxr, c.data() + i * gemm.ldc() + nu, I * sizeof(float));
          } else {
            std::fill(dxr, dxr + I, 0.0f);
          }
        }
      }
      if (++slot == group || t == 0) {  // a full group, or the last (partial) one
        // Zero B's rows up to the engine's K block so the unused tail adds nothing.
        for (int64_t k = kfill; k < std::min(Kw, (kfill + 31) / 32 * 32); ++k)
          gemm_w.put_b_row(b_w, k, 0, zeros.data(), N);
        gemm_w.run(aw, b_w, c_w.data(), true, M, kfill);
        slot = 0;
        kfill = 0;
        ++round;
      }
    }
    float* dcz = dc0->typed_data() + p * R * H;
    float* dhz = dh0->typed_data() + p * R * H;
    for (int64_t r = 0; r < R; ++r) {
      std::memcpy(dcz + r * H + u0, dc_carry.data() + r * nu, nu * sizeof(float));
      std::memcpy(dhz + r * H + u0, dh_carry.data() + r * nu, nu * sizeof(float));
    }
    // Own gate columns back to the global [i | j | f | o] layout.
    auto scatter = [&](const float* local, float* global) {
      for (int64_t g = 0; g < 4; ++g) std::memcpy(global + g * H + u0, local + g * nu, nu * sizeof(float));
    };
    float* dwh = d_wh->typed_data() + p * H * G;
    float* dwx = d_wx->typed_data() + p * I * G;
    float* dst = d_static->typed_data() + p * d.Rs * G;
    const int64_t ldw = gemm_w.ldc();
    for (int64_t k = 0; k < H; ++k) scatter(c_w.data() + k * ldw, dwh + k * G);
    for (int64_t i = 0; i < I; ++i) scatter(c_w.data() + (H + i) * ldw, dwx + i * G);
    if (static_rows) {
      for (int64_t r = 0; r < R; ++r) scatter(d_rows.data() + r * N, dst + r * G);
    } else {
      scatter(c_w.data() + (H + I) * ldw, dst);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// For kernel_status(): whether bfloat16 products run on AMX tiles here.
extern "C" bool SketchVaeAmxReady() { return amx_ready(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaeLstmSeqForward, SeqForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [..., T, R, I]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_x [..., I, G]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // static [..., Rs, G]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_h [..., H, G]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c0 [..., R, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // live [..., T, R]
                                  .Arg<ffi::Buffer<ffi::U32>>()   // keys [..., T, R, 2]
                                  .Attr<float>("keep")
                                  .Attr<float>("forget_bias")
                                  .Attr<int64_t>("threshold")
                                  .Attr<bool>("use_dropout")
                                  .Attr<bool>("flat_index")
                                  .Attr<bool>("static_rows")
                                  .Attr<bool>("bf16")
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // hs [..., T, R, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // cs
                                  .Ret<ffi::Buffer<ffi::F32>>()   // acts [..., T, R, G]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // c final
                                  .Ret<ffi::Buffer<ffi::F32>>()); // h final

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaeLstmSeqBackward, SeqBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d_hs [..., T, R, H] or dummy
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dh final
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dc final
                                  .Arg<ffi::Buffer<ffi::F32>>()   // acts
                                  .Arg<ffi::Buffer<ffi::F32>>()   // hs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c0
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // live
                                  .Arg<ffi::Buffer<ffi::U32>>()   // keys
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_x
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x
                                  .Attr<float>("keep")
                                  .Attr<int64_t>("threshold")
                                  .Attr<bool>("use_dropout")
                                  .Attr<bool>("flat_index")
                                  .Attr<bool>("static_rows")
                                  .Attr<bool>("bf16")
                                  .Attr<bool>("has_dhs")
                                  .Attr<bool>("need_dx")
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dc0
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_wh [..., H, G]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_wx
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_static
                                  .Ret<ffi::Buffer<ffi::F32>>()); // dx [..., T, R, I] or dummy
