// OpenMP helpers of the CPU kernels.
//
// Shared cores: work is handed out in chunks on demand (dynamic schedules),
// never as one static share per thread, so a thread that the OS deschedules
// (another process on its core) delays only the chunk it holds; the others
// take the rest. Scatters (adjoints of a gather) run without atomics: threads
// own disjoint channels when there are enough of them, otherwise each thread
// adds into its own buffer and the buffers are summed once at the end (the
// warp kernels first try disjoint slabs, see warp.h).
#pragma once

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <new>

#include "gemini/voxel_math.h"
#include "gemini/host_pages.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// Below this many items a loop runs on one thread: waking the pool costs more.
constexpr int64_t kSerialBelow = 4096;
// Chunks per thread of a dynamic schedule: enough for one slow thread to be
// covered by the others, few enough that taking a chunk costs nothing.
constexpr int64_t kChunksPerThread = 16;

inline int threads_for(int64_t items, int num_threads) {
  return items < kSerialBelow ? 1 : (num_threads < 1 ? 1 : num_threads);
}

// Chunk size of n items (each `cost` voxels) shared by nt threads.
inline int64_t chunk_for(int64_t n, int nt, int64_t cost = 1) {
  const int64_t by_threads = n / (int64_t(nt) * kChunksPerThread);
  const int64_t by_cost = (kSerialBelow / 4 + cost - 1) / cost;  // a chunk holds >= 1k voxels of work
  const int64_t c = by_threads > by_cost ? by_cost : by_threads;
  return c < 1 ? 1 : c;
}

// f(i) for i in [0, n); cost: the work of one item, in voxels
template <typename F>
void parallel_for(int64_t n, int num_threads, F&& f, int64_t cost = 1) {
  const int nt = threads_for(n * cost, num_threads);
  if (nt == 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  const int64_t chunk = chunk_for(n, nt, cost);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t j = 0; j < (n + chunk - 1) / chunk; ++j) {
    const int64_t end = (j + 1) * chunk < n ? (j + 1) * chunk : n;
    for (int64_t i = j * chunk; i < end; ++i) f(i);
  }
}

// f(voxel) for the voxels [i0, i1) of the batch, walking coordinates without divisions
template <int NDIM, typename F>
void for_voxel_range(const Extent<NDIM>& e, int64_t i0, int64_t i1, F&& f) {
  if (i0 >= i1) return;
  Voxel<NDIM> x = voxel_at(e, i0);
  for (int64_t i = i0; i < i1; ++i, advance(x, e)) f(x);
}

// range(i0, i1, thread) over chunks of [0, items), dynamically scheduled
template <typename F>
void for_ranges(int64_t items, int nt, F&& range) {
  if (nt == 1) {
    range(int64_t(0), items, 0);
    return;
  }
  const int64_t chunk = chunk_for(items, nt);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t j = 0; j < (items + chunk - 1) / chunk; ++j) {
    const int64_t end = (j + 1) * chunk < items ? (j + 1) * chunk : items;
    range(j * chunk, end, omp_get_thread_num());
  }
}

// f(voxel) for every voxel of `batch` planes
template <int NDIM, typename F>
void for_voxels(int64_t batch, const Extent<NDIM>& e, int num_threads, F&& f) {
  const int64_t items = batch * e.numel();
  for_ranges(items, threads_for(items, num_threads),
             [&](int64_t i0, int64_t i1, int) { for_voxel_range(e, i0, i1, f); });
}

// p[0, count) = 0 on up to num_threads threads.
template <typename G>
void zero_fill(G* p, int64_t count, int num_threads) {
  parallel_for(count, num_threads, [&](int64_t j) { p[j] = G(0); });
}

// Whether scatter_without_atomics gives threads disjoint channels (else each
// thread owns a buffer of its own).
inline bool partitions_channels(int64_t channels, int nt) {
  return channels >= nt && (channels % nt == 0 || channels >= 4 * nt);
}

// A kernel's own buffer (gemini/host_pages.h; small ones from calloc or
// malloc), zero-filled when `zeroed`. Fresh pages fault in on the threads
// that touch them, in parallel, instead of one thread zero-filling them all
// first; reused ones are cleared on the OpenMP threads, so a buffer that is
// written whole before it is read asks for no zeros.
template <typename G>
class HostBuffer {
 public:
  // count 0: no memory (data() is null)
  HostBuffer(int64_t count, bool zeroed) {
    if (count <= 0) return;
    const size_t bytes = static_cast<size_t>(count) * sizeof(G);
    data_ = static_cast<G*>(map_host_pages(bytes, zeroed, &map_, &length_));
    if (!data_) data_ = static_cast<G*>(zeroed ? std::calloc(bytes, 1) : std::malloc(bytes));
    if (!data_) throw std::bad_alloc();
  }
  ~HostBuffer() {
    if (map_)
      unmap_host_pages(map_, length_);
    else
      std::free(data_);
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  G* data() const { return data_; }

 private:
  G* data_ = nullptr;
  void* map_ = nullptr;
  size_t length_ = 0;
};

// `width` sums per work item, added up in item order at the end: a total
// that does not depend on which thread ran which item. malloc, not
// std::vector: no other library's inline code in these kernels (kernels.h).
class ItemSums {
 public:
  ItemSums(int64_t items, int width) : items_(items), width_(width) {
    if (items <= 0) return;
    data_ = static_cast<double*>(std::calloc(static_cast<size_t>(items) * width, sizeof(double)));
    if (!data_) throw std::bad_alloc();
  }
  ~ItemSums() { std::free(data_); }
  ItemSums(const ItemSums&) = delete;
  ItemSums& operator=(const ItemSums&) = delete;
  // item i's sums (width of them, zero to start with)
  double* of(int64_t i) const { return data_ + i * width_; }
  double total(int k) const {
    double t = 0;
    for (int64_t i = 0; i < items_; ++i) t += data_[i * width_ + k];
    return t;
  }

 private:
  double* data_ = nullptr;
  int64_t items_;
  int width_;
};

// Zero-filled buffers, one per extra thread.
template <typename G>
struct ThreadBuffers {
  HostBuffer<G> all;
  int64_t numel;
  ThreadBuffers(int count, int64_t n) : all(static_cast<int64_t>(count) * n, true), numel(n) {}
  // thread t > 0 writes here (thread 0 writes into the output)
  G* of(int t) const { return all.data() + (t - 1) * numel; }
};

// out[j] += sum over threads of their buffers
template <typename G>
void reduce_into(G* out, const ThreadBuffers<G>& own, int nt) {
  parallel_for(own.numel, nt, [&](int64_t j) {
    G s = G(0);
    for (int t = 1; t < nt; ++t) s += own.of(t)[j];
    out[j] += s;
  });
}

// body(i0, i1, c0, c1, target) adds what items [i0, i1) contribute to
// channels [c0, c1) into target, a buffer shaped like out (out_numel values).
template <typename G, typename Body>
void scatter_without_atomics(G* out, int64_t out_numel, int64_t items, int64_t channels, int num_threads,
                             Body&& body) {
  const int nt = threads_for(items, num_threads);
  if (nt == 1) {
    body(int64_t(0), items, int64_t(0), channels, out);
    return;
  }
  if (partitions_channels(channels, nt)) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < channels; ++c) body(int64_t(0), items, c, c + 1, out);
    return;
  }
  ThreadBuffers<G> own(nt - 1, out_numel);
  for_ranges(items, nt, [&](int64_t i0, int64_t i1, int t) { body(i0, i1, int64_t(0), channels, t == 0 ? out : own.of(t)); });
  reduce_into(out, own, nt);
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
