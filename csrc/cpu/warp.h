// CPU warping (also the squaring steps of plane-major fields, square.h):
// bilinear sampling on the row kernels of lanes.h; nearest sampling and
// huge planes per voxel (voxel_ops.h).
#pragma once

#include "lanes.h"
namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

template <int NDIM, class S, typename T>
void warp_forward_lanes(const WarpArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v,
                        int64_t x) {
  using L = LinearLanes<NDIM, S>;
  const int64_t n = e.numel(), C = a.geo.channels;
  const L s = sample_lanes<NDIM, S>(a.ddf, a.padding, e, b, c, v, x);
  int32_t coff[L::kCorners];
  typename S::M mask[L::kCorners];
  for (int k = 0; k < L::kCorners; ++k) {
    coff[k] = L::corner_offset(e, k);
    mask[k] = s.corner_mask(k);
  }
  const int64_t ahead = prefetch_distance(e);
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t plane = (b * C + ch) * n;
    s.template prefetch<0>(a.image + plane, coff, ahead);
    typename S::F vals[L::kCorners];
    s.gather(a.image + plane, coff, mask, vals);
    typename S::F y = s.interpolate(vals, nullptr);
    if (a.base) y = y + S::load(a.base + plane + v);
    S::store(a.out + plane + v, y);
  }
}

// Both gradients of S::L voxels: the image gradient scattered into target
// (when not null), the displacement gradient added into target's first
// NDIM channels (ddf_into_target, a squaring step) or written to grad_ddf.
template <int NDIM, class S, typename T>
void warp_backward_lanes(const WarpArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v,
                         int64_t x, T* target, bool ddf_into_target) {
  using L = LinearLanes<NDIM, S>;
  using F = typename S::F;
  using E = typename S::E;
  constexpr int K = L::kCorners;
  const int64_t n = e.numel(), C = a.geo.channels;
  const bool want_ddf = a.grad_ddf != nullptr;
  const L s = sample_lanes<NDIM, S>(a.ddf, a.padding, e, b, c, v, x);
  const Corners<NDIM, S> q(s, e, S::all_lanes());
  F w[K];
  if (target) s.weights(w);
  const Scatter<NDIM, S> scatter(q, target ? C : 0);
  F acc[NDIM];
  for (int k = 0; k < NDIM; ++k) acc[k] = S::set(E(0));
  const int64_t ahead = prefetch_distance(e);
  for (int64_t c0 = 0; c0 < C; c0 += kScatterBlock) {
    const int block = scatter_block(C, c0);
    F g[kScatterBlock];
    for (int j = 0; j < block; ++j) {
      const int64_t plane = (b * C + c0 + j) * n;
      g[j] = S::load(a.grad + plane + v);
      if (target) s.template prefetch<1>(target + plane, q.coff, ahead);
      if (want_ddf) {
        s.template prefetch<0>(a.image + plane, q.coff, ahead);
        F vals[K], dv[NDIM];
        s.gather(a.image + plane, q.coff, q.mask, vals);
        s.interpolate(vals, dv);
        for (int k = 0; k < NDIM; ++k) acc[k] = S::fma(g[j], dv[k], acc[k]);
      }
    }
    if (target) scatter.add(target + (b * C + c0) * n, n, block, g, w);
  }
  if (!want_ddf) return;
  for (int k = 0; k < NDIM; ++k) {
    const int64_t at = (b * NDIM + k) * n + v;
    F r = acc[k];
    if (a.grad_ddf_base) r = r + S::load(a.grad_ddf_base + at);
    if (ddf_into_target)
      S::store(target + at, S::load(target + at) + r);
    else
      S::store(a.grad_ddf + at, r);
  }
}

// The per-voxel path (nearest sampling, huge planes), as on CUDA.
template <int NDIM, typename T>
void warp_backward_voxels(const WarpArgs<T>& a, const Extent<NDIM>& e) {
  using A = acc_t<T>;
  const int64_t items = a.geo.batch * e.numel(), C = a.geo.channels;
  const int nt = threads_for(items, a.num_threads);
  if (a.grad_image && a.grad_ddf && a.mode != kNearest && !partitions_channels(C, nt)) {
    // threads own whole voxels: one pass for both gradients
    const bool alias = static_cast<void*>(a.grad_ddf) == static_cast<void*>(a.grad_image);
    if (alias) zero_fill(a.grad_image, items * C, a.num_threads);
    scatter_without_atomics(a.grad_image, items * C, items, C, a.num_threads,
                            [&](int64_t i0, int64_t i1, int64_t, int64_t, A* target) {
                              for_voxel_range(e, i0, i1, [&](const Voxel<NDIM>& x) {
                                warp_backward_fused_voxel(a, e, x, target, alias, PlainAdd());
                              });
                            });
    return;
  }
  if (a.grad_ddf)
    for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { warp_backward_ddf_voxel(a, e, x); });
  if (a.grad_image)
    scatter_without_atomics(a.grad_image, items * C, items, C, a.num_threads,
                            [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, A* target) {
                              for_voxel_range(e, i0, i1, [&](const Voxel<NDIM>& x) {
                                warp_backward_image_voxel(a, e, x, c0, c1, target, PlainAdd());
                              });
                            });
}

template <int NDIM, typename T>
void warp_backward_rows(const WarpArgs<T>& a, const Extent<NDIM>& e) {
  const int64_t items = a.geo.batch * e.numel(), C = a.geo.channels;
  const int nt = threads_for(items, a.num_threads);
  T* target = a.grad_image;  // float and double accumulate in themselves
  const bool alias = target && static_cast<void*>(a.grad_ddf) == static_cast<void*>(target);
  if (alias) zero_fill(target, items * C, nt);
  auto run_rows = [&](int64_t r0, int64_t r1, T* into) {
    for (int64_t r = r0; r < r1; ++r)
      for_row<NDIM, T>(e, r, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
        warp_backward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x, into, alias);
      });
  };
  if (target)
    scatter_rows(FirstAxis<T>{a.ddf, NDIM * e.numel()}, a.geo.batch, e, nt, target, items * C, run_rows);
  else  // gathers only: no writers to keep apart
    for_rows<NDIM, T>(a.geo.batch, e, nt, C, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
      warp_backward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x, static_cast<T*>(nullptr), false);
    });
}

template <typename T>
void warp_forward(const WarpArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    if (a.mode != kNearest && row_kernels_take(e)) {
      for_rows<NDIM, T>(a.geo.batch, e, a.num_threads, a.geo.channels,
                        [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
                          warp_forward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x);
                        });
    } else {
      for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { warp_forward_voxel(a, e, x); });
    }
  })
}

template <typename T>
void warp_backward(const WarpArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    if (a.mode != kNearest && row_kernels_take(e))
      warp_backward_rows(a, e);
    else
      warp_backward_voxels(a, e);
  })
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
