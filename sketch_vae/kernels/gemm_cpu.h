// C[R x N] = A[R x K] . B[K x N] for a recurrence: B (a weight) is packed once per
// sequence and A (the state of one step) is written by the caller straight into
// the layout the micro-kernel reads, so a step does no packing at all.
//
// Engines, chosen when B is packed:
//   * float32: AVX-512 micro-kernel, MR rows x 32 (or 16) columns held in zmm
//     registers; A is stored k-major within blocks of MR rows, so each
//     broadcast is an embedded {1to16} load at a constant offset.
//   * bfloat16 with AMX (Sapphire Rapids and later, kernel permission granted):
//     16 x 16 tiles of TDPBF16PS, float32 accumulation; A is row-major bf16
//     padded to 16 rows and 32 columns, B is packed in the VNNI pair layout.
//   * bfloat16 without AMX: the float32 engine on operands rounded to bf16
//     (the same products, float32 accumulation).
// Without AVX-512 the float32 micro-kernel is plain C++ that gcc vectorises.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sketch_vae {

inline uint16_t to_bf16(float x) {  // round to nearest even, as XLA's convert
  uint32_t u = __builtin_bit_cast(uint32_t, x);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_round(float x) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(to_bf16(x)) << 16);
}

// True once this process may use AMX bf16 tiles (CPU support + Linux permission).
inline bool amx_ready() {
#if defined(__AMX_BF16__) && defined(__AMX_TILE__) && defined(__linux__)
  static const bool ready = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureTileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureTileData) == 0;
  }();
  return ready;
#else
  return false;
#endif
}

#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 64 bytes wide (A: 32 bf16, B: 16 pairs, C: 16 f32); 16 rows, except that
// C tiles 0, 1 and A tile 4 get `last_rows` rows for a product's last, partial row block.
inline void load_tile_config(int last_rows = 16) {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  cfg.rows[0] = cfg.rows[1] = cfg.rows[4] = static_cast<uint8_t>(last_rows);
  // gcc does not see ldtilecfg read cfg and may drop the stores above without this.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

class AmxThread {
 public:
  AmxThread() { load_tile_config(); }
  ~AmxThread() { _tile_release(); }
};
#else
struct AmxThread {};
#endif

class PackedGemm {
 public:
  // Geometry for C[R x N] = A[R x K] . B[K x N]. It depends on (R, K) only
  // through A and on (K, N) only through B, so workers that share one A (and
  // own different columns) agree on its layout.
  void shape(int64_t R, int64_t K, int64_t N, bool bf16) {
    R_ = R, K_ = K, N_ = N, bf16_ = bf16;
    amx_ = bf16 && amx_ready();
    Npad_ = (N + 15) / 16 * 16;
    if (amx_) {
      Kpad_ = (K + 31) / 32 * 32;
      Rpad_ = (R + 15) / 16 * 16;
      lda_ = Kpad_;
      a_size_ = Rpad_ * lda_;
      b_size_ = Npad_ * Kpad_;
      return;
    }
    Kpad_ = K;
    if (R < 8) {
      mr_ = static_cast<int>(R);
    } else {  // MR in 8..12 with the fewest padded rows (ties: the larger MR)
      mr_ = 12;
      for (int m = 12; m >= 8; --m)
        if ((R + m - 1) / m * m < (R + mr_ - 1) / mr_ * mr_) mr_ = m;
    }
    Rpad_ = (R + mr_ - 1) / mr_ * mr_;
    a_size_ = Rpad_ * K;
    b_size_ = Npad_ * K;
  }

  // Packs B once into this object: b(k, n) is its element.
  template <typename F>
  void pack(F b) {
    std::vector<float> row(N_);
    if (amx_) {
      bpack16_.assign(b_size_, 0);
    } else {
      bpack_.assign(b_size_, 0.0f);
    }
    for (int64_t k = 0; k < K_; ++k) {
      for (int64_t n = 0; n < N_; ++n) row[n] = b(k, n);
      put_b_row(own_b(), k, 0, row.data(), N_);
    }
  }

  // Lets run() take the panel-outer float32 order for large C slices or deep K.
  void allow_panel_order(bool on) { panel_order_ = on; }

  bool a_bf16() const { return amx_; }        // A and B buffers hold bf16 (uint16), else float
  int64_t a_size() const { return a_size_; }  // elements of an A buffer (zero it once)
  int64_t b_size() const { return b_size_; }  // elements of a B buffer (zero it once)
  int64_t rows() const { return Rpad_; }      // rows of C
  int64_t ldc() const { return Npad_; }       // columns of C

  // Writes A[r, k0 + k] = v[k] for k < n.
  void put_row(void* a, int64_t r, int64_t k0, const float* v, int64_t n) const {
    if (amx_) {
      uint16_t* out = static_cast<uint16_t*>(a) + r * lda_ + k0;
      for (int64_t k = 0; k < n; ++k) out[k] = to_bf16(v[k]);
      return;
    }
    float* out = static_cast<float*>(a) + (r / mr_) * (K_ * mr_) + k0 * mr_ + r % mr_;
    if (bf16_) {
      for (int64_t k = 0; k < n; ++k) out[k * mr_] = bf16_round(v[k]);
    } else {
      for (int64_t k = 0; k < n; ++k) out[k * mr_] = v[k];
    }
  }

  // Rows that put_rows writes together: the float32 engine's row block (16 for AMX).
  int64_t block_rows() const { return amx_ ? 16 : mr_; }

  // Writes A[r0 + i, k0 + k] = v[i * ld + k] for i < m, k < n, where r0 is a
  // multiple of block_rows() and m <= block_rows(). For the float32 layout this is
  // a transpose into the block's k-major run: the stores go out in address order,
  // where row-by-row put_row calls would store every MR-th float of the same lines.
  void put_rows(void* a, int64_t r0, int64_t m, int64_t k0, const float* v, int64_t ld,
                int64_t n) const {
    if (amx_) {
      for (int64_t i = 0; i < m; ++i) put_row(a, r0 + i, k0, v + i * ld, n);
      return;
    }
    float* out = static_cast<float*>(a) + (r0 / mr_) * (K_ * mr_) + k0 * mr_;
    for (int64_t k = 0; k < n; ++k, out += mr_)
      for (int64_t i = 0; i < m; ++i) {
        const float x = v[i * ld + k];
        out[i] = bf16_ ? bf16_round(x) : x;
      }
  }

  // Writes A[r0 + i, k] = v[i * stride] for i < n (a column of A).
  void put_col(void* a, int64_t r0, int64_t k, const float* v, int64_t stride, int64_t n) const {
    if (amx_) {
      uint16_t* out = static_cast<uint16_t*>(a) + r0 * lda_ + k;
      for (int64_t i = 0; i < n; ++i) out[i * lda_] = to_bf16(v[i * stride]);
      return;
    }
    // Float32: the column is a run of up to MR contiguous floats in each row block
    // it crosses (the weight-gradient product writes one per row and step).
    for (int64_t r = r0, end = r0 + n; r < end;) {
      const int64_t block = r / mr_, in_block = r - block * mr_;
      const int64_t take = std::min<int64_t>(mr_ - in_block, end - r);
      float* out = static_cast<float*>(a) + block * (K_ * mr_) + k * mr_ + in_block;
      const float* src = v + (r - r0) * stride;
      if (bf16_) {
        for (int64_t j = 0; j < take; ++j) out[j] = bf16_round(src[j * stride]);
      } else {
        for (int64_t j = 0; j < take; ++j) out[j] = src[j * stride];
      }
      r += take;
    }
  }

  // Writes B[k, n0 + j] = v[j] for j < n into a B buffer.
  void put_b_row(void* b, int64_t k, int64_t n0, const float* v, int64_t n) const {
    if (amx_) {
      const int64_t nkc = Kpad_ / 32, kc = k / 32, kp = (k % 32) / 2, e = k % 2;
      uint16_t* base = static_cast<uint16_t*>(b) + kc * 512 + kp * 32 + e;
      int64_t j = 0;
#if defined(__AVX512BF16__)
      // 16 columns of one tile at a time: round to bf16, place each in its pair's
      // even or odd half, and store only those halves (the other row's stay).
      const __mmask32 half = e ? 0xAAAAAAAAu : 0x55555555u;
      for (; j + 16 <= n && (n0 + j) % 16 == 0; j += 16) {
        __m256i b16 = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(v + j)));
        __m512i wide = _mm512_cvtepu16_epi32(b16);
        if (e) wide = _mm512_slli_epi32(wide, 16);
        _mm512_mask_storeu_epi16(base - e + ((n0 + j) / 16) * nkc * 512, half, wide);
      }
#endif
      for (; j < n; ++j) {
        const int64_t col = n0 + j;
        base[(col / 16) * nkc * 512 + (col % 16) * 2] = to_bf16(v[j]);
      }
      return;
    }
    float* out = static_cast<float*>(b);
    for (int64_t j = 0; j < n;) {  // panel by panel (32 columns, the last may be 16)
      const int64_t col = n0 + j, p0 = col / 32 * 32, w = std::min<int64_t>(32, Npad_ - p0);
      const int64_t take = std::min(n - j, p0 + 32 - col);
      float* dst = out + p0 * K_ + k * w + (col - p0);
      for (int64_t i = 0; i < take; ++i) dst[i] = bf16_ ? bf16_round(v[j + i]) : v[j + i];
      j += take;
    }
  }

  // C[rows x ldc()] (+)= A[:rows, :k] . B[:k, :], with B packed in this object or
  // given. rows <= R (rounded up to the engine's row block) and k <= K trim the
  // product to the rows and depth in use: in a recurrence, rows whose sequence
  // has ended are ordered last and need no product. Rows of A and B up to the
  // rounded row / depth must be finite (B rows past k: zero, for AMX).
  void run(const void* a, float* c, int64_t rows) const {
    run(a, own_b_const(), c, false, rows, K_);
  }
  void run(const void* a, const void* b, float* c, bool add, int64_t rows, int64_t k) const {
    if (rows <= 0 || k <= 0) {
      if (!add) std::fill(c, c + Rpad_ * Npad_, 0.0f);
      return;
    }
    if (amx_) {
      run_amx(static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b), c, add,
              std::min(rows, Rpad_), (k + 31) / 32);
    } else {
      run_f32(static_cast<const float*>(a), static_cast<const float*>(b), c, add,
              (rows + mr_ - 1) / mr_ * mr_, k);
    }
  }

 private:
  void* own_b() { return amx_ ? static_cast<void*>(bpack16_.data()) : bpack_.data(); }
  const void* own_b_const() const {
    return amx_ ? static_cast<const void*>(bpack16_.data()) : bpack_.data();
  }

  // c (+)= a . b over K for MR rows and 16 NV columns (add: accumulate into c).
  template <int MR, int NV>
  static void micro(int64_t K, const float* __restrict a, const float* __restrict b,
                    float* __restrict c, int64_t ldc, bool add) {
#if defined(__AVX512F__)
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v)
        acc[r][v] = add ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
    for (int64_t k = 0; k < K; ++k, a += MR, b += 16 * NV) {
      __m512 bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
#else
    float acc[MR][16 * NV];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < 16 * NV; ++j) acc[r][j] = add ? c[r * ldc + j] : 0.0f;
    for (int64_t k = 0; k < K; ++k, a += MR, b += 16 * NV)
      for (int r = 0; r < MR; ++r)
        for (int j = 0; j < 16 * NV; ++j) acc[r][j] += a[r] * b[j];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < 16 * NV; ++j) c[r * ldc + j] = acc[r][j];
#endif
  }

  template <int NV>
  void block(int mr, int64_t kc, const float* a, const float* b, float* c, bool add) const {
    switch (mr) {
#define SKETCH_VAE_MR(m) \
  case m:                \
    return micro<m, NV>(kc, a, b, c, Npad_, add);
      SKETCH_VAE_MR(1) SKETCH_VAE_MR(2) SKETCH_VAE_MR(3) SKETCH_VAE_MR(4) SKETCH_VAE_MR(5)
      SKETCH_VAE_MR(6) SKETCH_VAE_MR(7) SKETCH_VAE_MR(8) SKETCH_VAE_MR(9) SKETCH_VAE_MR(10)
      SKETCH_VAE_MR(11) SKETCH_VAE_MR(12)
#undef SKETCH_VAE_MR
    }
  }

  // K in even slices of at most 256 so that a slice of a B panel (256 x 32) stays in L1;
  // a K up to 320 (a B panel slice of 40 KB, still inside the 48 KB L1) runs as one slice,
  // so C is written once: the encoder LSTM's K = 256 + 5 (two slices of ~130 before:
  // forward 77 -> 70-75 ms per call, 2026-11-25).
  // With panel order allowed (packed_matmul_cpu.cc; the LSTM kernels keep the
  // order they were measured with), when C is too large to stay in L2 between K
  // slices (the HyperLSTM 2048's [100 x 4608] per core: 1.8 MB) or K is deep, each
  // 32-column panel runs all its K slices before the next, so a C block is
  // written once instead of re-read per slice.
  void run_f32(const float* a, const float* b, float* c, bool add, int64_t rows, int64_t K) const {
    const int64_t slices = K <= 320 ? 1 : (K + 255) / 256, step = (K + slices - 1) / slices;
    auto panel_of = [&](int64_t n0, int64_t k0, int64_t w) { return b + n0 * K_ + k0 * w; };
    if (panel_order_ && (rows * Npad_ * 4 > (512 << 10) || K_ >= 4096)) {
      for (int64_t n0 = 0; n0 < Npad_; n0 += 32) {
        const int64_t w = std::min<int64_t>(32, Npad_ - n0);
        for (int64_t k0 = 0; k0 < K; k0 += step) {
          const int64_t kc = std::min(step, K - k0);
          // The next slice of B (streamed from memory once per step) is fetched
          // while this one is in use.
          row_blocks(a, panel_of(n0, k0, w), c, rows, n0, k0, kc, w, add, true);
        }
      }
      return;
    }
    for (int64_t k0 = 0; k0 < K; k0 += step) {
      const int64_t kc = std::min(step, K - k0);
      for (int64_t n0 = 0; n0 < Npad_; n0 += 32) {
        const int64_t w = std::min<int64_t>(32, Npad_ - n0);
        row_blocks(a, panel_of(n0, k0, w), c, rows, n0, k0, kc, w, add, false);
      }
    }
  }

  // One K slice of one B panel against every row block of A; with `prefetch`, the
  // panel's next K slice is fetched into cache, a share per row block.
  void row_blocks(const float* a, const float* panel, float* c, int64_t rows, int64_t n0,
                  int64_t k0, int64_t kc, int64_t w, bool add, bool prefetch) const {
    const char* next = reinterpret_cast<const char*>(panel + kc * w);
    const int64_t lines = prefetch ? kc * w / 16 : 0, blocks = (rows + mr_ - 1) / mr_;
    const int64_t per = (lines + blocks - 1) / blocks;
    for (int64_t r0 = 0, i = 0; r0 < rows; r0 += mr_, ++i) {
      for (int64_t l = i * per; l < std::min(lines, (i + 1) * per); ++l)
        __builtin_prefetch(next + 64 * l, 0, 3);
      const float* ablock = a + r0 * K_ + k0 * mr_;
      float* cblock = c + r0 * Npad_ + n0;
      if (w == 32) {
        block<2>(mr_, kc, ablock, panel, cblock, add || k0 > 0);
      } else {
        block<1>(mr_, kc, ablock, panel, cblock, add || k0 > 0);
      }
    }
  }

  // Rows in 16-row tiles, two row tiles x two column tiles per pass; a last partial
  // row block runs with tiles configured to its row count (AMX time follows rows).
  void run_amx(const uint16_t* a, const uint16_t* b, float* c, bool add, int64_t rows,
               int64_t nkc_used) const {
#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
    const int64_t nkc = Kpad_ / 32, nnt = Npad_ / 16;
    const int64_t sa = lda_ * 2, sc = Npad_ * 4;
    auto pass = [&](int64_t rt, bool two_r, int64_t nt) {
      const bool two_n = nt + 1 < nnt;
      const uint16_t* b0 = b + nt * nkc * 512;
      const uint16_t* b1 = b0 + nkc * 512;
      const uint16_t* a0 = a + rt * 16 * lda_;
      const uint16_t* a1 = a0 + 16 * lda_;
      float* c0 = c + rt * 16 * Npad_ + nt * 16;
      if (add) {
        _tile_loadd(0, c0, sc);
        if (two_n) _tile_loadd(1, c0 + 16, sc);
        if (two_r) _tile_loadd(2, c0 + 16 * Npad_, sc);
        if (two_r && two_n) _tile_loadd(3, c0 + 16 * Npad_ + 16, sc);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t kc = 0; kc < nkc_used; ++kc) {
        _tile_loadd(4, a0 + kc * 32, sa);
        _tile_loadd(6, b0 + kc * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two_n) {
          _tile_loadd(7, b1 + kc * 512, 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two_r) {
          _tile_loadd(5, a1 + kc * 32, sa);
          _tile_dpbf16ps(2, 5, 6);
          if (two_n) _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c0, sc);
      if (two_n) _tile_stored(1, c0 + 16, sc);
      if (two_r) {
        _tile_stored(2, c0 + 16 * Npad_, sc);
        if (two_n) _tile_stored(3, c0 + 16 * Npad_ + 16, sc);
      }
    };
    const int64_t full = rows / 16, rest = rows % 16;
    for (int64_t nt = 0; nt < nnt; nt += 2)
      for (int64_t rt = 0; rt < full; rt += 2) pass(rt, rt + 1 < full, nt);
    if (rest) {
      load_tile_config(static_cast<int>(rest));
      for (int64_t nt = 0; nt < nnt; nt += 2) pass(full, false, nt);
      load_tile_config();
    }
#endif
  }

  int64_t R_ = 0, K_ = 0, N_ = 0, Kpad_ = 0, Rpad_ = 0, Npad_ = 0, lda_ = 0, a_size_ = 0,
          b_size_ = 0;
  int mr_ = 1;
  bool bf16_ = false, amx_ = false, panel_order_ = false;
  std::vector<float> bpack_;
  std::vector<uint16_t> bpack16_;
};

}  // namespace sketch_vae
