// Row-parallel helpers shared by the per-step FFI kernels (lstm_cpu.cc, ln_lstm_cpu.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace sketch_vae {

// Runs fn(chunk, row_begin, row_end) over [0, rows) in chunks, on XLA's intra-op
// pool and this thread; returns the number of chunks (at most the pool's threads).
// Chunks are claimed, not assigned: this thread takes whatever chunks no pool
// thread has started, so the call finishes even when every pool thread is busy
// (XLA runs independent thunks at once, and two of these calls waiting for each
// other's scheduled tasks would otherwise deadlock). A task that starts after
// all chunks are claimed returns at once; it touches only the shared counters.
template <typename F>
int64_t parallel_rows(xla::ffi::ThreadPool& pool, int64_t rows, int64_t work_per_row, F fn) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Below ~64k elements a second thread costs more than it saves.
  int64_t chunks = std::min<int64_t>({threads, rows, std::max<int64_t>(1, rows * work_per_row / 65536)});
  if (chunks <= 1) {
    fn(0, 0, rows);
    return 1;
  }
  struct Counters {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto counters = std::make_shared<Counters>();
  const int64_t per = (rows + chunks - 1) / chunks;
  auto run = [counters, chunks, per, rows, &fn] {
    for (int64_t c; (c = counters->next.fetch_add(1, std::memory_order_acq_rel)) < chunks;) {
      const int64_t a = c * per, b = std::min(rows, a + per);
      if (a < b) fn(c, a, b);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t c = 1; c < chunks; ++c) pool.Schedule([run] { run(); });
  run();
  while (counters->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
  return chunks;
}

// The most chunks parallel_rows may use on this pool (for per-chunk scratch).
inline int64_t max_chunks(xla::ffi::ThreadPool& pool) {
  return std::max<int64_t>(1, pool.num_threads());
}

template <typename B>
int64_t rows_of(B& b, int64_t width) {
  return static_cast<int64_t>(b.element_count()) / width;
}

}  // namespace sketch_vae
