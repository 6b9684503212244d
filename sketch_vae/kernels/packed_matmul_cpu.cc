// C[R x N] = A[R x K] . B[K x N] with B packed once, for recurrences run as an
// XLA scan (split_scan.py: the layer-norm LSTM and the HyperLSTM).
//
// Why: XLA:CPU's product for a [100 x 2048] x [2048 x 9216] step (the HyperLSTM
// 2048 of config C) re-lays out the 38 MB (bfloat16) or 75 MB (float32) weight
// on every call: ~8 ms per step in bfloat16 on 2 cores against ~3 ms on
// pre-packed AMX tiles (profile of 2026-11-25). Here `pack` lays B out once per
// sequence for gemm_cpu.h's engines (AVX-512 float32 micro-kernel, AMX
// bfloat16 tiles) in `parts` column slices, one per core, and each step's call
// runs one slice per thread of XLA's intra-op pool.
//
// The packed buffer is raw bytes: its size comes from SketchVaePackedBytes,
// which Python calls (ctypes) to shape the pack call's output.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ffi_rows.h"
#include "gemm_cpu.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using namespace sketch_vae;

namespace {

// Column slice p of N split `parts` ways, on 32-column boundaries.
inline void slice(int64_t N, int64_t parts, int64_t p, int64_t* n0, int64_t* n1) {
  auto edge = [&](int64_t q) { return std::min(N, (N * q / parts + 31) / 32 * 32); };
  *n0 = edge(p);
  *n1 = p + 1 == parts ? N : edge(p + 1);
}

// Geometry of slice p (R only shapes A; 16 is a placeholder).
inline PackedGemm geometry(int64_t R, int64_t K, int64_t N, bool bf16, int64_t parts, int64_t p) {
  int64_t n0, n1;
  slice(N, parts, p, &n0, &n1);
  PackedGemm g;
  g.shape(R, K, std::max<int64_t>(1, n1 - n0), bf16);
  g.allow_panel_order(true);
  return g;
}

inline int64_t slice_bytes(const PackedGemm& g) {
  return g.b_size() * (g.a_bf16() ? 2 : 4);
}

int64_t packed_bytes(int64_t K, int64_t N, bool bf16, int64_t parts) {
  int64_t total = 0;
  for (int64_t p = 0; p < parts; ++p) total += (slice_bytes(geometry(16, K, N, bf16, parts, p)) + 63) / 64 * 64;
  return total;
}

// Runs fn(p) for p in [0, parts) on the pool's threads and this one (AMX tiles
// configured on each thread that runs a part).
template <typename F>
void each_part(ffi::ThreadPool& pool, int64_t parts, bool amx, F fn) {
  parallel_rows(pool, parts, int64_t{1} << 30, [&](int64_t, int64_t p0, int64_t p1) {
    if (amx) {
      AmxThread tiles;
      for (int64_t p = p0; p < p1; ++p) fn(p);
    } else {
      for (int64_t p = p0; p < p1; ++p) fn(p);
    }
  });
}

std::vector<int64_t> slice_offsets(int64_t K, int64_t N, bool bf16, int64_t parts) {
  std::vector<int64_t> offsets(parts + 1, 0);
  for (int64_t p = 0; p < parts; ++p)
    offsets[p + 1] = offsets[p] + (slice_bytes(geometry(16, K, N, bf16, parts, p)) + 63) / 64 * 64;
  return offsets;
}

// Leading axes (vmapped calls, e.g. the encoder's two directions) are groups:
// B [G, K, N] packs into [G, bytes]; A [G or 1, R, K] and packed [G or 1, bytes]
// give C [G, R, N].
ffi::Error Pack(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> b, int64_t parts, bool bf16,
                ffi::ResultBuffer<ffi::U8> out) {
  auto dims = b.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("packed matmul: B must be [..., K, N]");
  const int64_t K = dims[dims.size() - 2], N = dims[dims.size() - 1];
  const int64_t groups = rows_of(b, K * N), bytes = packed_bytes(K, N, bf16, parts);
  if (static_cast<int64_t>(out->element_count()) != groups * bytes)
    return ffi::Error::InvalidArgument("packed matmul: packed buffer size mismatch");
  const std::vector<int64_t> offsets = slice_offsets(K, N, bf16, parts);
  each_part(pool, groups * parts, false, [&](int64_t task) {
    const int64_t grp = task / parts, p = task % parts;
    int64_t n0, n1;
    slice(N, parts, p, &n0, &n1);
    PackedGemm g = geometry(16, K, N, bf16, parts, p);
    uint8_t* dst = out->typed_data() + grp * bytes + offsets[p];
    std::memset(dst, 0, offsets[p + 1] - offsets[p]);
    const float* src = b.typed_data() + grp * K * N;
    for (int64_t k = 0; k < K; ++k) g.put_b_row(dst, k, 0, src + k * N + n0, n1 - n0);
  });
  return ffi::Error::Success();
}

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::U8> packed,
                  int64_t n_cols, int64_t parts, bool bf16, ffi::ResultBuffer<ffi::F32> c_out) {
  auto dims = a.dimensions();
  const int64_t K = dims[dims.size() - 1], N = n_cols;
  const int64_t bytes = packed_bytes(K, N, bf16, parts);
  const int64_t groups = static_cast<int64_t>(packed.element_count()) / bytes;
  if (groups < 1 || groups * bytes != static_cast<int64_t>(packed.element_count()))
    return ffi::Error::InvalidArgument("packed matmul: packed buffer does not match A's width");
  // One weight: all rows form one group. Several: the output's rows split evenly
  // between them, and A has rows for each group or one set shared by all.
  const int64_t R = static_cast<int64_t>(c_out->element_count()) / N / groups, rows_a = rows_of(a, K);
  if (rows_a != R && rows_a != R * groups)
    return ffi::Error::InvalidArgument("packed matmul: A's rows do not match the weights' groups");
  const bool a_shared = rows_a != R * groups;
  const std::vector<int64_t> offsets = slice_offsets(K, N, bf16, parts);
  float* cv = c_out->typed_data();
  const bool amx = bf16 && amx_ready();
  each_part(pool, groups * parts, amx, [&](int64_t task) {
    const int64_t grp = task / parts, p = task % parts;
    int64_t n0, n1;
    slice(N, parts, p, &n0, &n1);
    if (n1 <= n0) return;
    PackedGemm g = geometry(R, K, N, bf16, parts, p);
    const float* av = a.typed_data() + (a_shared ? 0 : grp * R * K);
    // Per-thread scratch, kept between calls (a step's A and C slices: ~2 MB).
    thread_local std::vector<uint8_t> a_buf, c_buf;
    const int64_t a_bytes = g.a_size() * (g.a_bf16() ? 2 : 4);
    if (static_cast<int64_t>(a_buf.size()) < a_bytes) a_buf.resize(a_bytes);
    std::memset(a_buf.data(), 0, a_bytes);  // padded rows and columns must be finite
    for (int64_t r = 0; r < R; ++r) g.put_row(a_buf.data(), r, 0, av + r * K, K);
    const int64_t c_floats = g.rows() * g.ldc();
    if (static_cast<int64_t>(c_buf.size()) < c_floats * 4) c_buf.resize(c_floats * 4);
    float* c = reinterpret_cast<float*>(c_buf.data());
    g.run(a_buf.data(), packed.typed_data() + grp * bytes + offsets[p], c, false, R, K);
    float* out = cv + grp * R * N;
    for (int64_t r = 0; r < R; ++r) std::memcpy(out + r * N + n0, c + r * g.ldc(), (n1 - n0) * sizeof(float));
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" int64_t SketchVaePackedBytes(int64_t K, int64_t N, bool bf16, int64_t parts) {
  return packed_bytes(K, N, bf16, parts);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaePackB, Pack,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // B [K, N]
                                  .Attr<int64_t>("parts")
                                  .Attr<bool>("bf16")
                                  .Ret<ffi::Buffer<ffi::U8>>());  // packed bytes

XLA_FFI_DEFINE_HANDLER_SYMBOL(SketchVaePackedMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // A [..., K]
                                  .Arg<ffi::Buffer<ffi::U8>>()   // packed B
                                  .Attr<int64_t>("n_cols")
                                  .Attr<int64_t>("parts")
                                  .Attr<bool>("bf16")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // C [..., N]
