// CPU warping (and the squaring steps of velocity integration, which are
// warps of a field by itself).
//
// Bilinear sampling runs along rows, x innermost, on lanes of S::L voxels
// (simd.h): the corners of the lanes are gathered with int32 offsets within
// a channel plane and with masks, so out-of-volume corners read nothing and
// count 0: no branch per corner, and a border costs what the interior does.
// Nearest sampling and planes of 2^29 voxels or more take the per-voxel code
// of voxel_ops.h.
//
// The backward scatters the image gradient without atomics and, when it
// can, without full-size buffers: the sample of a voxel at first-axis index
// z lands on planes [z - m - 1, z + m + 1] with m = max |ddf_0|, so slabs of
// 2 ceil(m) + 2 planes along the first axis, all even slabs then all odd
// ones, never write the same place at the same time. Larger displacements
// (too few slabs for the threads) fall back to per-thread buffers.
#pragma once

#include <cmath>

#include "gemini/voxel_ops.h"
#include "parallel.h"
#include "simd.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// int32 offsets within a plane (corners reach one plane past each side)
template <int NDIM>
bool fits_int32(const Extent<NDIM>& e) {
  return e.numel() < (int64_t(1) << 29);
}

// Linear interpolation weights and corners of S::L sample points.
template <int NDIM, class S>
struct LinearLanes {
  using E = typename S::E;
  using F = typename S::F;
  using I = typename S::I;
  using M = typename S::M;
  static constexpr int kCorners = 1 << NDIM;
  I off;            // corner 0, within a plane
  F frac[NDIM];
  F dclamp[NDIM];   // 0 where border padding clamps the point (no gradient)
  M lo_in[NDIM], hi_in[NDIM];
  bool x_inside;    // both x neighbours of every lane inside: pairs load as one

  LinearLanes(const F* p, const Extent<NDIM>& e, int padding) {
    off = S::seti(0);
    for (int k = 0; k < NDIM; ++k) {
      F q = p[k];
      dclamp[k] = S::set(E(1));
      if (padding == kBorder) {
        const F zero = S::set(E(0)), top = S::set(E(e.size[k] - 1));
        dclamp[k] = S::select(S::both(S::gt(q, zero), S::lt(q, top)), S::set(E(1)), zero);
        q = S::min(S::max(q, zero), top);  // a NaN becomes 0, as in Linear
      }
      // safe_coord: NaN and far points pulled to just outside
      q = S::min(S::max(q, S::set(E(-2))), S::set(E(e.size[k] + 1)));
      const F fl = S::floor(q);
      frac[k] = q - fl;
      const I lo = S::to_int(fl);
      const int32_t n = static_cast<int32_t>(e.size[k]);
      lo_in[k] = S::in_range(lo, n);
      hi_in[k] = S::in_range(S::addi(lo, S::seti(1)), n);
      off = S::addi(off, S::muli(lo, static_cast<int32_t>(e.stride[k])));
    }
    x_inside = S::bits(S::both(lo_in[NDIM - 1], hi_in[NDIM - 1])) == S::kAll;
  }

  // corner c takes the upper neighbour along axis k when bit (NDIM - 1 - k) is set
  static int32_t corner_offset(const Extent<NDIM>& e, int c) {
    int32_t o = 0;
    for (int k = 0; k < NDIM; ++k)
      if ((c >> (NDIM - 1 - k)) & 1) o += static_cast<int32_t>(e.stride[k]);
    return o;
  }
  M corner_mask(int c) const {
    M m = ((c >> (NDIM - 1)) & 1) ? hi_in[0] : lo_in[0];
    for (int k = 1; k < NDIM; ++k) m = S::both(m, ((c >> (NDIM - 1 - k)) & 1) ? hi_in[k] : lo_in[k]);
    return m;
  }

  void gather(const E* plane, const int32_t* coff, const M* mask, F* vals) const {
    if (x_inside) {  // the interior: corners c, c + 1 are x neighbours, one mask
      for (int c = 0; c < kCorners; c += 2)
        S::gather_pair(plane, S::addi(off, S::seti(coff[c])), mask[c], vals[c], vals[c + 1]);
      return;
    }
    for (int c = 0; c < kCorners; ++c) vals[c] = S::gather(plane, S::addi(off, S::seti(coff[c])), mask[c]);
  }

  void weights(F* w) const {
    w[0] = S::set(E(1));
    for (int k = 0, count = 1; k < NDIM; ++k, count *= 2)
      for (int c = count - 1; c >= 0; --c) {
        const F x = w[c];
        w[2 * c] = x - x * frac[k];
        w[2 * c + 1] = x * frac[k];
      }
  }

  // value at the points, and (when dv) its derivative along each axis
  F interpolate(const F* v, F* dv) const {
    if constexpr (NDIM == 3) {
      const F fz = frac[0], fy = frac[1], fx = frac[2];
      const F dx00 = v[1] - v[0], dx01 = v[3] - v[2], dx10 = v[5] - v[4], dx11 = v[7] - v[6];
      const F a00 = S::fma(fx, dx00, v[0]), a01 = S::fma(fx, dx01, v[2]);
      const F a10 = S::fma(fx, dx10, v[4]), a11 = S::fma(fx, dx11, v[6]);
      const F dy0 = a01 - a00, dy1 = a11 - a10;
      const F b0 = S::fma(fy, dy0, a00), b1 = S::fma(fy, dy1, a10);
      const F dz = b1 - b0;
      if (dv) {
        const F ex0 = S::fma(fy, dx01 - dx00, dx00), ex1 = S::fma(fy, dx11 - dx10, dx10);
        dv[0] = dz * dclamp[0];
        dv[1] = S::fma(fz, dy1 - dy0, dy0) * dclamp[1];
        dv[2] = S::fma(fz, ex1 - ex0, ex0) * dclamp[2];
      }
      return S::fma(fz, dz, b0);
    } else {
      const F fy = frac[0], fx = frac[1];
      const F dx0 = v[1] - v[0], dx1 = v[3] - v[2];
      const F a0 = S::fma(fx, dx0, v[0]), a1 = S::fma(fx, dx1, v[2]);
      const F dy = a1 - a0;
      if (dv) {
        dv[0] = dy * dclamp[0];
        dv[1] = S::fma(fy, dx1 - dx0, dx0) * dclamp[1];
      }
      return S::fma(fy, dy, a0);
    }
  }
};

// Calls span(lanes_tag, b, coords, v, x) along row r of a batch of planes:
// full lanes of the widest type, then the tail one voxel at a time. coords
// are the row's first NDIM - 1 coordinates, v the flat index of voxel x.
template <int NDIM, typename T, typename Span>
void for_row(const Extent<NDIM>& e, int64_t r, Span&& span) {
  using V = typename simd::Widest<T>::type;
  const int64_t W = e.size[NDIM - 1], per_plane = e.numel() / W;
  const int64_t b = r / per_plane, q = r - b * per_plane;
  int64_t c[2];
  if constexpr (NDIM == 3) {
    c[0] = q / e.size[1];
    c[1] = q - c[0] * e.size[1];
  } else {
    c[0] = q;
  }
  const int64_t v0 = q * W;
  int64_t x = 0;
  for (; x + V::L <= W; x += V::L) span(V{}, b, c, v0 + x, x);
  for (; x < W; ++x) span(simd::Scalar<T>{}, b, c, v0 + x, x);
}

template <int NDIM, class S, typename T>
LinearLanes<NDIM, S> sample_lanes(const WarpArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c,
                                  int64_t v, int64_t x) {
  using E = typename S::E;
  const int64_t n = e.numel();
  const T* d = a.ddf + b * NDIM * n + v;
  typename S::F p[NDIM];
  for (int k = 0; k < NDIM - 1; ++k) p[k] = S::load(d + k * n) + S::set(E(c[k]));
  p[NDIM - 1] = S::load(d + (NDIM - 1) * n) + S::iota(E(x));
  return LinearLanes<NDIM, S>(p, e, a.padding);
}

template <int NDIM, class S, typename T>
void warp_forward_lanes(const WarpArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v,
                        int64_t x) {
  using L = LinearLanes<NDIM, S>;
  const int64_t n = e.numel(), C = a.geo.channels;
  const L s = sample_lanes<NDIM, S>(a, e, b, c, v, x);
  int32_t coff[L::kCorners];
  typename S::M mask[L::kCorners];
  for (int k = 0; k < L::kCorners; ++k) {
    coff[k] = L::corner_offset(e, k);
    mask[k] = s.corner_mask(k);
  }
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t plane = (b * C + ch) * n;
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
  const L s = sample_lanes<NDIM, S>(a, e, b, c, v, x);
  int32_t coff[K];
  typename S::M mask[K];
  unsigned all = S::kAll;
  for (int k = 0; k < K; ++k) {
    coff[k] = L::corner_offset(e, k);
    mask[k] = s.corner_mask(k);
    all &= S::bits(mask[k]);
  }
  const bool interior = all == S::kAll;
  F w[K];
  alignas(64) int32_t off[S::L];
  S::store_int(off, s.off);
  if (target) s.weights(w);
  F acc[NDIM];
  for (int k = 0; k < NDIM; ++k) acc[k] = S::set(E(0));
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t plane = (b * C + ch) * n;
    const F g = S::load(a.grad + plane + v);
    if (want_ddf) {
      F vals[K], dv[NDIM];
      s.gather(a.image + plane, coff, mask, vals);
      s.interpolate(vals, dv);
      for (int k = 0; k < NDIM; ++k) acc[k] = S::fma(g, dv[k], acc[k]);
    }
    if (target) {
      // corner by corner: consecutive adds go to different places (lane by
      // lane, one lane's upper x corner is the next lane's lower one, and
      // each add would wait for the previous store)
      T* t = target + plane;
      alignas(64) E contrib[K][S::L];
      for (int k = 0; k < K; ++k) S::store(contrib[k], g * w[k]);
      for (int k = 0; k < K; ++k) {
        T* tk = t + coff[k];
        if (interior) {
          for (int l = 0; l < S::L; ++l) tk[off[l]] += contrib[k][l];
        } else {
          const unsigned m = S::bits(mask[k]);
          for (int l = 0; l < S::L; ++l)
            if ((m >> l) & 1u) tk[off[l]] += contrib[k][l];
        }
      }
    }
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
    if (alias) parallel_for(items * C, a.num_threads, [&](int64_t j) { a.grad_image[j] = A(0); });
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

// Slab thickness along the first axis that keeps the scatters of even (odd)
// slabs apart, or 0 when the displacements are not finite or too large.
template <int NDIM, typename T>
int64_t scatter_slab(const WarpArgs<T>& a, const Extent<NDIM>& e, int nt) {
  const int64_t n = e.numel();
  T m = T(0);
  int bad = 0;
  for (int64_t b = 0; b < a.geo.batch; ++b) {
    const T* d = a.ddf + b * NDIM * n;  // channel 0: the first axis
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8192) reduction(max : m) reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const T u = d[i] < T(0) ? -d[i] : d[i];
      bad |= !(u < T(1e6));  // NaN and inf too
      m = u > m ? u : m;
    }
  }
  if (bad) return 0;
  return 2 * static_cast<int64_t>(std::ceil(m)) + 2;
}

template <int NDIM, typename T>
void warp_forward_rows(const WarpArgs<T>& a, const Extent<NDIM>& e) {
  const int64_t W = e.size[NDIM - 1], rows = a.geo.batch * (e.numel() / W);
  parallel_for(
      rows, a.num_threads,
      [&](int64_t r) {
        for_row<NDIM, T>(e, r, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
          warp_forward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x);
        });
      },
      W * a.geo.channels);
}

template <int NDIM, typename T>
void warp_backward_rows(const WarpArgs<T>& a, const Extent<NDIM>& e) {
  const int64_t W = e.size[NDIM - 1], per_plane = e.numel() / W, rows = a.geo.batch * per_plane;
  const int64_t items = a.geo.batch * e.numel(), C = a.geo.channels;
  const int nt = threads_for(items, a.num_threads);
  T* target = a.grad_image;  // float and double accumulate in themselves
  const bool alias = target && static_cast<void*>(a.grad_ddf) == static_cast<void*>(target);
  if (alias) parallel_for(items * C, nt, [&](int64_t j) { target[j] = T(0); });
  auto run_rows = [&](int64_t r0, int64_t r1, T* into) {
    for (int64_t r = r0; r < r1; ++r)
      for_row<NDIM, T>(e, r, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
        warp_backward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x, into, alias);
      });
  };
  if (!target || nt == 1) {  // gathers only, or one thread: no writer to keep apart
    parallel_for(rows, target ? 1 : nt, [&](int64_t r) { run_rows(r, r + 1, target); }, W * C);
    return;
  }
  const int64_t slab = scatter_slab(a, e, nt), depth = e.size[0], rows_per_z = per_plane / depth;
  const int64_t slabs = slab ? (depth + slab - 1) / slab : 0;
  if (slab && a.geo.batch * (slabs / 2) >= nt) {
    for (int colour = 0; colour < 2; ++colour) {
      const int64_t per_item = (slabs - colour + 1) / 2;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
      for (int64_t t = 0; t < a.geo.batch * per_item; ++t) {
        const int64_t b = t / per_item, s = colour + 2 * (t - b * per_item);
        const int64_t z0 = s * slab, z1 = z0 + slab < depth ? z0 + slab : depth;
        run_rows(b * per_plane + z0 * rows_per_z, b * per_plane + z1 * rows_per_z, target);
      }
    }
    return;
  }
  ThreadBuffers<T> own(nt - 1, items * C);
  for_ranges(rows, nt, [&](int64_t r0, int64_t r1, int t) { run_rows(r0, r1, t == 0 ? target : own.of(t)); });
  reduce_into(target, own, nt);
}

template <typename T>
void warp_forward(const WarpArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    if (a.mode != kNearest && fits_int32(e)) {
      warp_forward_rows(a, e);
    } else {
      for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { warp_forward_voxel(a, e, x); });
    }
  })
}

template <typename T>
void warp_backward(const WarpArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    if (a.mode != kNearest && fits_int32(e))
      warp_backward_rows(a, e);
    else
      warp_backward_voxels(a, e);
  })
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
