// OpenMP helpers of the CPU backend. Scatters (adjoints of a gather) run
// without atomics: threads own disjoint channels when there are enough of
// them, otherwise each thread adds into its own buffer and the buffers are
// summed once at the end.
#pragma once

#include <omp.h>

#include <cstdint>
#include <vector>

#include "gemini/voxel_math.h"

namespace gemini {
namespace cpu {

// Below this many items a loop runs on one thread: waking the pool costs more.
constexpr int64_t kSerialBelow = 4096;

inline int threads_for(int64_t items, int num_threads) { return items < kSerialBelow ? 1 : (num_threads < 1 ? 1 : num_threads); }

// f(i) for i in [0, n); cost: the work of one item, in voxels
template <typename F>
void parallel_for(int64_t n, int num_threads, F&& f, int64_t cost = 1) {
#pragma omp parallel for num_threads(threads_for(n * cost, num_threads)) schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

// f(voxel) for the voxels [i0, i1) of the batch, walking coordinates without divisions
template <int NDIM, typename F>
void for_voxel_range(const Extent<NDIM>& e, int64_t i0, int64_t i1, F&& f) {
  if (i0 >= i1) return;
  Voxel<NDIM> x = voxel_at(e, i0);
  for (int64_t i = i0; i < i1; ++i, advance(x, e)) f(x);
}

// f(voxel) for every voxel of `batch` planes, in one contiguous chunk per thread
template <int NDIM, typename F>
void for_voxels(int64_t batch, const Extent<NDIM>& e, int num_threads, F&& f) {
  const int64_t items = batch * e.numel();
#pragma omp parallel num_threads(threads_for(items, num_threads))
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    for_voxel_range(e, items * t / T, items * (t + 1) / T, f);
  }
}

// Whether scatter_without_atomics gives threads disjoint channels (else each
// thread owns a range of items and a buffer of its own).
inline bool partitions_channels(int64_t channels, int nt) {
  return channels >= nt && (channels % nt == 0 || channels >= 4 * nt);
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
#pragma omp parallel num_threads(nt)
    {
      const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      body(int64_t(0), items, channels * t / T, channels * (t + 1) / T, out);
    }
    return;
  }
  std::vector<G> own(static_cast<size_t>(nt - 1) * out_numel, G(0));
  int used = 1;
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
#pragma omp single
    used = static_cast<int>(T);
    body(items * t / T, items * (t + 1) / T, int64_t(0), channels, t == 0 ? out : own.data() + (t - 1) * out_numel);
  }
  parallel_for(out_numel, nt, [&](int64_t j) {
    G s = G(0);
    for (int t = 1; t < used; ++t) s += own[(t - 1) * out_numel + j];
    out[j] += s;
  });
}

}  // namespace cpu
}  // namespace gemini
