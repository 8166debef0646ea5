// The squaring steps of velocity integration on the CPU: u <- u + u o (id + u)
// and its adjoint. 3D float fields run on interleaved levels (B, *S, 4): a
// voxel's 3 components and a zero, so each corner of a sample is one 16-byte
// load of all components. A row of samples then reads 4 rows of one array,
// where plane-major fields read 12 (3 component planes x 4 corner rows) and
// gather each component on its own: at 96^3 on one thread this halves a step
// (benchmarks/RESULTS.md). The host loops (ops_impl.h) convert to and from
// the interleaved layout once per integration. Other fields (2D, double,
// the per-voxel sizes) are warps of the field by itself (square_as_warp).
#pragma once

#include <cstdint>
#include <type_traits>

#include "warp.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// Asks for the cache line of voxel v of an interleaved field, to be read
// (kWrite 0) or written (1); v may lie past the field (see prefetch_at).
template <int kWrite>
[[gnu::always_inline]] inline void prefetch_voxel(const float* field, int64_t v) {
  prefetch_at<kWrite>(field, v * 4);
}

// The sample points x + u(x) of the S::L voxels from voxel v (row start x)
// of an interleaved field.
template <class S>
[[gnu::always_inline]] inline LinearLanes<3, S> interleaved_lanes(const float* u, int padding, const Extent<3>& e,
                                                                  int64_t b, const int64_t* c, int64_t v, int64_t x) {
  typename S::F p[3];
  S::load_components(u + (b * e.numel() + v) * 4, p);
  return lanes_at<3, S>(p, padding, e, c, x);
}

// Lane l's sample where all its corners are inside: its 4 rows (z, y) of x
// pairs are one 8-value load each, interpolated along z and y as pairs,
// then along x; dv as in lerp_corners. LV: LaneVoxels or InteriorLanes.
template <class LV>
[[gnu::always_inline]] inline simd::Quad::F sample_interior(const LV& lv, int l, const float* u, simd::Quad::F* dv) {
  using P = simd::Pair;
  using Q = simd::Quad;
  const int64_t o = lv.off[l];
  P::F rows[4], fr[2], dc[2], d[2];
  for (int r = 0; r < 4; ++r) rows[r] = P::load(u + (o + lv.coff[2 * r]) * 4);
  for (int k = 0; k < 2; ++k) {
    fr[k] = P::set(lv.frac[k][l]);
    if (lv.clamps) dc[k] = P::set(lv.dclamp[k][l]);
  }
  const P::F zy = lerp_corners<2, P>(rows, fr, lv.clamps ? dc : nullptr, dv ? d : nullptr);
  const Q::F fx = Q::set(lv.frac[2][l]);
  const auto along_x = [&](P::F p) { return Q::fma(fx, P::high(p) - P::low(p), P::low(p)); };
  if (dv) {
    dv[0] = along_x(d[0]);
    dv[1] = along_x(d[1]);
    dv[2] = P::high(zy) - P::low(zy);
    if (lv.clamps) dv[2] = dv[2] * Q::set(lv.dclamp[2][l]);
  }
  return along_x(zy);
}

// What sample_interior and PairScatter read of lanes whose corners all lie
// inside (the usual case), without the corner masks that LaneVoxels forms
// (without them a forward step at 96^3 on one thread took 2.8 instead of
// 3.2 ms on AVX-512, 3.3 instead of 3.5 ms on AVX2).
template <class S>
struct InteriorLanes {
  alignas(64) int32_t off[S::L];
  alignas(64) float frac[3][S::L];
  alignas(64) float dclamp[3][S::L];  // when clamps
  alignas(64) float w[8][S::L];       // weights, for a scatter
  int32_t coff[8];
  bool clamps;

  InteriorLanes(const LinearLanes<3, S>& s, const Extent<3>& e, bool weights, bool border) : clamps(border) {
    S::store_int(off, s.off);
    for (int k = 0; k < 3; ++k) {
      S::store(frac[k], s.frac[k]);
      if (border) S::store(dclamp[k], s.dclamp[k]);
    }
    for (int k = 0; k < 8; ++k) coff[k] = LinearLanes<3, S>::corner_offset(e, k);
    if (weights) {
      typename S::F wk[8];
      s.weights(wk);
      for (int k = 0; k < 8; ++k) S::store(w[k], wk[k]);
    }
  }
};

template <class LV>
constexpr bool kAllInside = false;
template <class S>
constexpr bool kAllInside<InteriorLanes<S>> = true;

// Lane l's sample (dv as in lerp_corners). LV: InteriorLanes where every
// lane's corners are inside, else LaneVoxels (inside: bit l set where lane
// l's are).
template <class LV>
[[gnu::always_inline]] inline simd::Quad::F sample_lane(const LV& lv, unsigned inside, int l, const float* u,
                                                        simd::Quad::F* dv) {
  if constexpr (!kAllInside<LV>)
    if (!((inside >> l) & 1u)) return lv.sample(l, u, 4, dv);
  return sample_interior(lv, l, u, dv);
}

template <int L, class LV>
[[gnu::always_inline]] inline void square_forward_of(const LV& lv, unsigned inside, const SquareArgs<float>& a,
                                                     const Extent<3>& e, int64_t b, int64_t v) {
  using Q = simd::Quad;
  const float* u = a.field + b * e.numel() * 4;
  const float* self = u + v * 4;
  float* out = a.out + (b * e.numel() + v) * 4;
  const int64_t ahead = prefetch_distance(e);
  for (int l = 0; l < L; ++l) {
    prefetch_voxel<0>(u, lv.off[l] + ahead);
    Q::store(out + 4 * l, Q::load(self + 4 * l) + sample_lane(lv, inside, l, u, nullptr));
  }
}

template <class S>
void square_forward_lanes(const SquareArgs<float>& a, const Extent<3>& e, int64_t b, const int64_t* c, int64_t v,
                          int64_t x) {
  const LinearLanes<3, S> s = interleaved_lanes<S>(a.field, a.padding, e, b, c, v, x);
  if (s.corners_inside() == S::kAll)
    return square_forward_of<S::L>(InteriorLanes<S>(s, e, false, a.padding == kBorder), S::kAll, a, e, b, v);
  const LaneVoxels<3, S, simd::Quad> lv(s, Corners<3, S>(s, e, S::all_lanes()), false);
  square_forward_of<S::L>(lv, lv.all_inside(), a, e, b, v);
}

// The scatter of one chunk's lanes whose corners are all inside. Where a
// lane's lower x corners are the upper ones of the lane before (off + 1,
// the usual case along a row of samples), the two adds to a place go as one:
// each row of corners takes one read-modify-write per lane, and the upper
// corners' part waits in `upper` until the next lane or a flush.
template <class LV>
struct PairScatter {
  using Q = simd::Quad;
  const LV& lv;
  float* t;
  Q::F upper[4] = {};  // read only after a lane has set them (at >= 0)
  int64_t at = -1;  // offset (voxels) of the upper corners waiting, or -1

  PairScatter(const LV& lanes, float* target) : lv(lanes), t(target) {}
  ~PairScatter() { flush(); }

  void flush() {
    if (at < 0) return;
    for (int r = 0; r < 4; ++r) add(at + lv.coff[2 * r], upper[r]);
    at = -1;
  }
  void add(int64_t voxel, Q::F x) { Q::store(t + voxel * 4, Q::load(t + voxel * 4) + x); }

  [[gnu::always_inline]] void lane(int l, Q::F g) {
    const int64_t o = lv.off[l];
    const bool joins = at == o;
    for (int r = 0; r < 4; ++r) {
      const Q::F lower = Q::set(lv.w[2 * r][l]) * g;
      add(o + lv.coff[2 * r], joins ? lower + upper[r] : lower);
    }
    if (!joins) flush();
    for (int r = 0; r < 4; ++r) upper[r] = Q::set(lv.w[2 * r + 1][l]) * g;
    at = o + 1;
  }
};

// Adds into target (zeroed) what the S::L voxels from v contribute to
// d loss / d u: their own gradient and its path through the sample point at
// the voxel, and the sample's adjoint at the corners (LV and inside as in
// sample_lane).
template <int L, class LV>
[[gnu::always_inline]] inline void square_backward_of(const LV& lv, unsigned inside, const SquareArgs<float>& a,
                                                      const Extent<3>& e, int64_t b, int64_t v, float* target) {
  using Q = simd::Quad;
  using F = Q::F;
  const int64_t n = e.numel();
  const float* u = a.field + b * n * 4;
  float* grad = a.grad + (b * n + v) * 4;
  float* t = target + b * n * 4;
  PairScatter<LV> pairs(lv, t);
  const int64_t ahead = prefetch_distance(e);
  for (int l = 0; l < L; ++l) {
    prefetch_voxel<0>(u, lv.off[l] + ahead);
    prefetch_voxel<1>(t, lv.off[l] + ahead);
    const F g = Q::load(grad + 4 * l);
    Q::store(grad + 4 * l, Q::set(0.f));
    F dv[3];
    sample_lane(lv, inside, l, u, dv);
    const bool in = kAllInside<LV> || ((inside >> l) & 1u);
    const F m0 = g * dv[0], m1 = g * dv[1], m2 = g * dv[2], zero = {};
    // through_point[k] = m_k[0] + m_k[1] + m_k[2] (a 4 x 4 transpose; the
    // fourth values are zeros, their products are left out, not summed)
    const F lo = __builtin_shufflevector(m0, m1, 0, 4, 1, 5), hi = __builtin_shufflevector(m0, m1, 2, 6, 3, 7);
    const F lo2 = __builtin_shufflevector(m2, zero, 0, 4, 1, 5), hi2 = __builtin_shufflevector(m2, zero, 2, 6, 3, 7);
    const F through_point = __builtin_shufflevector(lo, lo2, 0, 1, 4, 5) +
                            __builtin_shufflevector(lo, lo2, 2, 3, 6, 7) + __builtin_shufflevector(hi, hi2, 0, 1, 4, 5);
    pairs.add(v + l, g + through_point);
    if (in) {
      pairs.lane(l, g);
    } else if constexpr (!kAllInside<LV>) {
      pairs.flush();
      lv.scatter(l, t, 4, g);
    }
  }
}

template <class S>
void square_backward_lanes(const SquareArgs<float>& a, const Extent<3>& e, int64_t b, const int64_t* c, int64_t v,
                           int64_t x, float* target) {
  const LinearLanes<3, S> s = interleaved_lanes<S>(a.field, a.padding, e, b, c, v, x);
  const bool border = a.padding == kBorder;
  if (s.corners_inside() == S::kAll)
    return square_backward_of<S::L>(InteriorLanes<S>(s, e, true, border), S::kAll, a, e, b, v, target);
  const LaneVoxels<3, S, simd::Quad> lv(s, Corners<3, S>(s, e, S::all_lanes()), true, border);
  square_backward_of<S::L>(lv, lv.all_inside(), a, e, b, v, target);
}

inline void square_forward_interleaved(const SquareArgs<float>& a) {
  const Extent<3> e = make_extent<3>(a.geo.size);
  for_rows<3, float>(a.geo.batch, e, a.num_threads, 4, [&](auto lanes, int64_t b, const int64_t* c, int64_t v,
                                                          int64_t x) {
    square_forward_lanes<decltype(lanes)>(a, e, b, c, v, x);
  });
}

inline void square_backward_interleaved(const SquareArgs<float>& a) {
  const Extent<3> e = make_extent<3>(a.geo.size);
  const int64_t values = a.geo.batch * e.numel() * 4;
  const int nt = threads_for(a.geo.batch * e.numel(), a.num_threads);
  float* target = a.grad_field;
  scatter_rows(FirstAxis<float, 4>{a.field, 4 * e.numel()}, a.geo.batch, e, nt, target, values,
               [&](int64_t r0, int64_t r1, float* into) {
                 for (int64_t r = r0; r < r1; ++r)
                   for_row<3, float>(e, r, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
                     square_backward_lanes<decltype(lanes)>(a, e, b, c, v, x, into);
                   });
               });
}

template <typename T>
void square_forward(const SquareArgs<T>& a) {
  if constexpr (std::is_same<T, float>::value)
    if (a.interleaved) return square_forward_interleaved(a);
  warp_forward(square_as_warp(a));
}

template <typename T>
void square_backward(const SquareArgs<T>& a) {
  if constexpr (std::is_same<T, float>::value)
    if (a.interleaved) return square_backward_interleaved(a);
  warp_backward(square_as_warp(a));
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
