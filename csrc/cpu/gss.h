// CPU GSS on the row kernels of lanes.h. The backward is fused: one pass
// over the channels gathers each warped moving feature once (value and its
// spatial derivative, kept for up to kKeep channels), the cosine's
// coefficients follow, and a second pass over the kept values writes the
// fixed-feature and displacement gradients and scatters the moving-feature
// gradient (slabs or per-thread buffers, see lanes.h). Huge planes take the
// per-voxel code of voxel_ops.h with a coefficient buffer.
#pragma once

#include "lanes.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// Channels whose warped values stay in registers/stack between the passes;
// more channels gather a second time.
constexpr int kKeep = 32;

template <class S>
struct CosineSums {
  typename S::F dot, nw2, nf2;
};

template <int NDIM, class S, typename T>
void gss_forward_lanes(const GssArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v,
                       int64_t x) {
  using L = LinearLanes<NDIM, S>;
  using F = typename S::F;
  using E = typename S::E;
  const int64_t n = e.numel(), C = a.geo.channels;
  const L s = sample_lanes<NDIM, S>(a.ddf, kZeros, e, b, c, v, x);
  const Corners<NDIM, S> q(s, e, S::all_lanes());
  F dot = S::set(E(0)), nw2 = dot, nf2 = dot;
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t plane = (b * C + ch) * n;
    F vals[L::kCorners];
    s.gather(a.moving + plane, q.coff, q.mask, vals);
    const F w = s.interpolate(vals, nullptr), f = S::load(a.fixed + plane + v);
    dot = S::fma(w, f, dot);
    nw2 = S::fma(w, w, nw2);
    nf2 = S::fma(f, f, nf2);
  }
  const F eps = S::set(static_cast<E>(a.eps));
  // max(x, eps) with x86 semantics: a NaN norm gives eps, as in gss_cosine
  S::store(a.cos + b * n + v, dot / (S::max(S::sqrt(nw2), eps) * S::max(S::sqrt(nf2), eps)));
  // point_inside: the nearest voxel (half to even) of the point is inside
  const typename S::F* p = s.point;
  typename S::M in = S::all_lanes();
  for (int k = 0; k < NDIM; ++k) {
    const F r = S::round(S::min(S::max(p[k], S::set(E(-2))), S::set(E(e.size[k] + 1))));
    in = S::both(in, S::both(S::gt(r, S::set(E(-0.5))), S::lt(r, S::set(E(e.size[k]) - E(0.5)))));
  }
  S::store(a.mask + b * n + v, S::select(in, S::set(E(1)), S::set(E(0))));
}

template <int NDIM, class S, typename T>
void gss_backward_lanes(const GssArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v,
                        int64_t x, T* target) {
  using L = LinearLanes<NDIM, S>;
  using F = typename S::F;
  using E = typename S::E;
  constexpr int K = L::kCorners;
  const int64_t n = e.numel(), C = a.geo.channels;
  const F zero = S::set(E(0));
  const F g = S::load(a.grad + b * n + v);
  const typename S::M live = S::nonzero(g);  // masked-out voxels: nothing flows
  if (S::bits(live) == 0) {
    if (a.grad_fixed)
      for (int64_t ch = 0; ch < C; ++ch) S::store(a.grad_fixed + (b * C + ch) * n + v, zero);
    if (a.grad_ddf)
      for (int k = 0; k < NDIM; ++k) S::store(a.grad_ddf + (b * NDIM + k) * n + v, zero);
    return;
  }
  const L s = sample_lanes<NDIM, S>(a.ddf, kZeros, e, b, c, v, x);
  const Corners<NDIM, S> q(s, e, live);
  // gathers read the moving features wherever the corner is inside (dead
  // lanes included: their results are discarded), scatters only live lanes
  typename S::M inside[K];
  for (int k = 0; k < K; ++k) inside[k] = s.corner_mask(k);
  F kept[kKeep][NDIM + 1];
  auto warped = [&](int64_t ch, F* dv) {
    if (ch < kKeep) {
      for (int k = 0; k < NDIM; ++k) dv[k] = kept[ch][k + 1];
      return kept[ch][0];
    }
    F vals[K];
    s.gather(a.moving + (b * C + ch) * n, q.coff, inside, vals);
    return s.interpolate(vals, dv);
  };
  F dot = zero, nw2 = zero, nf2 = zero;
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t plane = (b * C + ch) * n;
    F vals[K], dv[NDIM];
    s.gather(a.moving + plane, q.coff, inside, vals);
    const F w = s.interpolate(vals, dv), f = S::load(a.fixed + plane + v);
    if (ch < kKeep) {
      kept[ch][0] = w;
      for (int k = 0; k < NDIM; ++k) kept[ch][k + 1] = dv[k];
    }
    dot = S::fma(w, f, dot);
    nw2 = S::fma(w, w, nw2);
    nf2 = S::fma(f, f, nf2);
  }
  // gss_coeffs
  const F eps = S::set(static_cast<E>(a.eps));
  const F nw = S::sqrt(nw2), nf = S::sqrt(nf2);
  const F an = S::max(nw, eps), bn = S::max(nf, eps);
  const F kk = g / (an * bn);
  const F kw1 = kk, kw2 = S::select(S::gt(nw, eps), kk * dot / (an * an), zero);
  const F kf2 = S::select(S::gt(nf, eps), kk * dot / (bn * bn), zero);
  const F sm = S::set(static_cast<E>(a.scale_moving)), sf = S::set(static_cast<E>(a.scale_fixed));
  F w8[K];
  if (target) s.weights(w8);
  const Scatter<NDIM, S> scatter(q, target ? C : 0);
  F gd[NDIM];
  for (int k = 0; k < NDIM; ++k) gd[k] = zero;
  for (int64_t c0 = 0; c0 < C; c0 += kScatterBlock) {
    const int block = scatter_block(C, c0);
    F gm[kScatterBlock];
    for (int j = 0; j < block; ++j) {
      const int64_t plane = (b * C + c0 + j) * n;
      F dv[NDIM];
      const F w = warped(c0 + j, dv), f = S::load(a.fixed + plane + v);
      const F dw = kw1 * f - kw2 * w;
      if (a.grad_fixed) S::store(a.grad_fixed + plane + v, S::select(live, sf * (kw1 * w - kf2 * f), zero));
      gm[j] = sm * dw;
      for (int k = 0; k < NDIM; ++k) gd[k] = S::fma(dw, dv[k], gd[k]);
    }
    if (target) scatter.add(target + (b * C + c0) * n, n, block, gm, w8);
  }
  if (a.grad_ddf) {
    const F sd = S::set(static_cast<E>(a.scale_ddf));
    for (int k = 0; k < NDIM; ++k) S::store(a.grad_ddf + (b * NDIM + k) * n + v, S::select(live, sd * gd[k], zero));
  }
}

template <typename T>
void gss_forward(const GssArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    if (fits_int32(e)) {
      for_rows<NDIM, T>(a.geo.batch, e, a.num_threads, a.geo.channels,
                        [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
                          gss_forward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x);
                        });
    } else {
      for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { gss_forward_voxel(a, e, x); });
    }
  })
}

// The per-voxel path: gathers, then the moving-feature scatter from three
// stored coefficients per voxel.
template <int NDIM, typename T>
void gss_backward_voxels(const GssArgs<T>& a, const Extent<NDIM>& e) {
  using A = acc_t<T>;
  const int64_t items = a.geo.batch * e.numel(), n = e.numel();
  A* coeffs = a.grad_moving ? a.scratch : nullptr;
  for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) {
    gss_backward_voxel(a, e, x, static_cast<A*>(nullptr), coeffs ? coeffs + 3 * x.flat(n) : nullptr, PlainAdd());
  });
  if (a.grad_moving)
    scatter_without_atomics(a.grad_moving, items * a.geo.channels, items, a.geo.channels, a.num_threads,
                            [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, A* target) {
                              for_voxel_range(e, i0, i1, [&](const Voxel<NDIM>& x) {
                                gss_scatter_voxel(a, e, x, coeffs + 3 * x.flat(n), c0, c1, target, PlainAdd());
                              });
                            });
}

template <typename T>
void gss_backward(const GssArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    if (!fits_int32(e)) {
      gss_backward_voxels(a, e);
    } else {
      const int64_t items = a.geo.batch * e.numel();
      const int nt = threads_for(items, a.num_threads);
      auto run_rows = [&](int64_t r0, int64_t r1, T* into) {
        for (int64_t r = r0; r < r1; ++r)
          for_row<NDIM, T>(e, r, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
            gss_backward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x, into);
          });
      };
      if (a.grad_moving)
        scatter_rows(a.ddf, a.geo.batch, e, nt, a.grad_moving, items * a.geo.channels, run_rows);
      else
        for_rows<NDIM, T>(a.geo.batch, e, nt, a.geo.channels,
                          [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
                            gss_backward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x, static_cast<T*>(nullptr));
                          });
    }
  })
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
