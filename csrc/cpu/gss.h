// CPU GSS on the row kernels of lanes.h. The backward is fused: one pass
// over the channels gathers each warped moving feature once (value and its
// spatial derivative, kept for up to kKeep channels), the cosine's
// coefficients follow, and a second pass over the kept values writes the
// fixed-feature and displacement gradients and scatters the moving-feature
// gradient (slabs or per-thread buffers, see lanes.h). Float features of at
// least half a vector of channels go channel-innermost first (a copy; the
// moving-feature gradient scattered into another, then added back): a
// corner's channels are then vector loads instead of one gather each, and
// one cache line instead of one per channel (at 96^3, 16 channels, one
// thread, AVX-512: fwd+bwd 270 -> 148 ms). Huge planes take the per-voxel
// code of voxel_ops.h with a coefficient buffer.
#pragma once

#include <type_traits>

#include "lanes.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// Channels whose warped values stay in registers/stack between the passes;
// more channels gather a second time.
constexpr int kKeep = 32;

// The fixed features of the lanes from a voxel, channel j at
// fixed + j * stride, and where their gradient goes (grad: null when not
// wanted): the planes of the tensors, or rows copied out of them.
template <typename T>
struct FixedAt {
  const T* fixed;
  T* grad;
  int64_t stride;
};

// The planes of voxel v of batch b.
template <typename T>
FixedAt<T> fixed_planes(const GssArgs<T>& a, int64_t n, int64_t b, int64_t v) {
  const int64_t at = b * a.geo.channels * n + v;
  return {a.fixed + at, a.grad_fixed ? a.grad_fixed + at : nullptr, n};
}

// The cosine's sums over channels, per lane.
template <class S>
struct CosineSums {
  using F = typename S::F;
  F dot, nw2, nf2;
  CosineSums() : dot(S::set(typename S::E(0))), nw2(dot), nf2(dot) {}
  void add(F w, F f) {
    dot = S::fma(w, f, dot);
    nw2 = S::fma(w, w, nw2);
    nf2 = S::fma(f, f, nf2);
  }
};

// point_inside of the lanes' sample points: the nearest voxel (half to
// even) is inside.
template <int NDIM, class S>
typename S::M points_inside(const LinearLanes<NDIM, S>& s, const Extent<NDIM>& e) {
  using E = typename S::E;
  typename S::M in = S::all_lanes();
  for (int k = 0; k < NDIM; ++k) {
    const typename S::F r = S::round(S::min(S::max(s.point[k], S::set(E(-2))), S::set(E(e.size[k] + 1))));
    in = S::both(in, S::both(S::gt(r, S::set(E(-0.5))), S::lt(r, S::set(E(e.size[k]) - E(0.5)))));
  }
  return in;
}

// The forward's results of the lanes from voxel v: the cosine and the mask
// stored, or with a.mean, into row_sum (the sums of the lanes' row), the
// cosine where the mask is 1 and the mask added.
template <int NDIM, class S, typename T>
void gss_store_forward(const GssArgs<T>& a, const Extent<NDIM>& e, int64_t b, int64_t v,
                       const LinearLanes<NDIM, S>& s, const CosineSums<S>& sums, double* row_sum) {
  using F = typename S::F;
  using E = typename S::E;
  const int64_t n = e.numel();
  const F eps = S::set(static_cast<E>(a.eps)), zero = S::set(E(0));
  // max(x, eps) with x86 semantics: a NaN norm gives eps, as in gss_cosine
  const F cos = sums.dot / (S::max(S::sqrt(sums.nw2), eps) * S::max(S::sqrt(sums.nf2), eps));
  const typename S::M in = points_inside(s, e);
  if (row_sum) {
    alignas(64) E kept[S::L];
    S::store(kept, S::select(in, cos, zero));
    for (int l = 0; l < S::L; ++l) row_sum[0] += static_cast<double>(kept[l]);
    row_sum[1] += __builtin_popcount(S::bits(in));
    return;
  }
  S::store(a.cos + b * n + v, cos);
  S::store(a.mask + b * n + v, S::select(in, S::set(E(1)), zero));
}

// d loss / d cos of the lanes from voxel v (with a.mean: grad[0] where the
// sample point counts, else 0).
template <int NDIM, class S, typename T>
typename S::F gss_lane_grad(const GssArgs<T>& a, const Extent<NDIM>& e, int64_t b, int64_t v,
                            const LinearLanes<NDIM, S>& s) {
  using E = typename S::E;
  if (!a.mean) return S::load(a.grad + b * e.numel() + v);
  return S::select(points_inside(s, e), S::set(static_cast<E>(a.grad[0])), S::set(E(0)));
}

template <int NDIM, class S, typename T>
void gss_forward_lanes(const GssArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v,
                       int64_t x, double* row_sum) {
  using L = LinearLanes<NDIM, S>;
  using F = typename S::F;
  const int64_t n = e.numel(), C = a.geo.channels;
  const L s = sample_lanes<NDIM, S>(a.ddf, kZeros, e, b, c, v, x);
  const Corners<NDIM, S> q(s, e, S::all_lanes());
  const int64_t ahead = prefetch_distance(e);
  const FixedAt<T> fx = fixed_planes(a, n, b, v);
  CosineSums<S> sums;
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t plane = (b * C + ch) * n;
    s.template prefetch<0>(a.moving + plane, q.coff, ahead);
    F vals[L::kCorners];
    s.gather(a.moving + plane, q.coff, q.mask, vals);
    sums.add(s.interpolate(vals, nullptr), S::load(fx.fixed + ch * fx.stride));
  }
  gss_store_forward(a, e, b, v, s, sums, row_sum);
}

// The forward on channel-innermost moving features mcl (cp values per
// voxel): per block of S::L channels, each lane's sample is one vector, and
// a transpose turns the lanes' vectors into one vector of lanes per channel.
template <int NDIM, class S>
void gss_forward_cl(const GssArgs<float>& a, const float* mcl, int64_t cp, const FixedAt<float>& fx,
                    const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v, int64_t x, double* row_sum) {
  using F = typename S::F;
  const int64_t n = e.numel(), C = a.geo.channels;
  const LinearLanes<NDIM, S> s = sample_lanes<NDIM, S>(a.ddf, kZeros, e, b, c, v, x);
  const LaneVoxels<NDIM, S> lv(s, Corners<NDIM, S>(s, e, S::all_lanes()), false);
  const float* base = mcl + b * n * cp;
  const int64_t ahead = prefetch_distance(e);
  for (int l = 0; l < S::L; ++l) lv.template prefetch<0>(l, base, cp, ahead);
  CosineSums<S> sums;
  for (int64_t c0 = 0; c0 < C; c0 += S::L) {
    F w[S::L];
    for (int l = 0; l < S::L; ++l) w[l] = lv.sample(l, base + c0, cp, nullptr);
    S::transpose(w);
    for (int j = 0; j < S::L && c0 + j < C; ++j) sums.add(w[j], S::load(fx.fixed + (c0 + j) * fx.stride));
  }
  gss_store_forward(a, e, b, v, s, sums, row_sum);
}

// The backward's per-lane coefficients (gss_coeffs) and the work of one
// channel: the fixed-feature gradient is written, the displacement gradient
// accumulated in gd, and the moving-feature gradient returned (to scatter).
template <class S, typename T>
struct GssLaneBackward {
  using F = typename S::F;
  using E = typename S::E;
  const GssArgs<T>& a;
  typename S::M live;
  F kw1, kw2, kf2, sm, sf;
  GssLaneBackward(const GssArgs<T>& args, F g, typename S::M live_lanes, const CosineSums<S>& r)
      : a(args), live(live_lanes) {
    const F zero = S::set(E(0)), eps = S::set(static_cast<E>(a.eps));
    const F nw = S::sqrt(r.nw2), nf = S::sqrt(r.nf2);
    const F an = S::max(nw, eps), bn = S::max(nf, eps);
    const F kk = g / (an * bn);
    kw1 = kk;
    kw2 = S::select(S::gt(nw, eps), kk * r.dot / (an * an), zero);
    kf2 = S::select(S::gt(nf, eps), kk * r.dot / (bn * bn), zero);
    sm = S::set(static_cast<E>(a.scale_moving));
    sf = S::set(static_cast<E>(a.scale_fixed));
  }
  template <int NDIM>
  F channel(const FixedAt<T>& fx, int64_t j, F w, const F* dv, F* gd) const {
    const F f = S::load(fx.fixed + j * fx.stride);
    const F dw = kw1 * f - kw2 * w;
    if (fx.grad) S::store(fx.grad + j * fx.stride, S::select(live, sf * (kw1 * w - kf2 * f), S::set(E(0))));
    for (int k = 0; k < NDIM; ++k) gd[k] = S::fma(dw, dv[k], gd[k]);
    return sm * dw;
  }
};

// Lanes none of whose voxels carries a gradient: zero gradients, nothing scattered.
template <int NDIM, class S, typename T>
void gss_dead_lanes(const GssArgs<T>& a, const FixedAt<T>& fx, int64_t n, int64_t b, int64_t v) {
  const typename S::F zero = S::set(typename S::E(0));
  const int64_t C = a.geo.channels;
  if (fx.grad)
    for (int64_t ch = 0; ch < C; ++ch) S::store(fx.grad + ch * fx.stride, zero);
  if (a.grad_ddf)
    for (int k = 0; k < NDIM; ++k) S::store(a.grad_ddf + (b * NDIM + k) * n + v, zero);
}

template <int NDIM, class S, typename T>
void gss_store_grad_ddf(const GssArgs<T>& a, int64_t n, int64_t b, int64_t v, typename S::M live,
                        const typename S::F* gd) {
  if (!a.grad_ddf) return;
  const typename S::F sd = S::set(static_cast<typename S::E>(a.scale_ddf)), zero = S::set(typename S::E(0));
  for (int k = 0; k < NDIM; ++k) S::store(a.grad_ddf + (b * NDIM + k) * n + v, S::select(live, sd * gd[k], zero));
}

template <int NDIM, class S, typename T>
void gss_backward_lanes(const GssArgs<T>& a, const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v,
                        int64_t x, T* target) {
  using L = LinearLanes<NDIM, S>;
  using F = typename S::F;
  using E = typename S::E;
  constexpr int K = L::kCorners;
  const int64_t n = e.numel(), C = a.geo.channels;
  const L s = sample_lanes<NDIM, S>(a.ddf, kZeros, e, b, c, v, x);
  const F g = gss_lane_grad(a, e, b, v, s);
  const typename S::M live = S::nonzero(g);  // masked-out voxels: nothing flows
  const FixedAt<T> fx = fixed_planes(a, n, b, v);
  if (S::bits(live) == 0) return gss_dead_lanes<NDIM, S>(a, fx, n, b, v);
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
  const int64_t ahead = prefetch_distance(e);
  CosineSums<S> sums;
  for (int64_t ch = 0; ch < C; ++ch) {
    const int64_t plane = (b * C + ch) * n;
    s.template prefetch<0>(a.moving + plane, q.coff, ahead);
    if (target) s.template prefetch<1>(target + plane, q.coff, ahead);
    F vals[K], dv[NDIM];
    s.gather(a.moving + plane, q.coff, inside, vals);
    const F w = s.interpolate(vals, dv);
    if (ch < kKeep) {
      kept[ch][0] = w;
      for (int k = 0; k < NDIM; ++k) kept[ch][k + 1] = dv[k];
    }
    sums.add(w, S::load(fx.fixed + ch * fx.stride));
  }
  const GssLaneBackward<S, T> lane(a, g, live, sums);
  F w8[K];
  if (target) s.weights(w8);
  const Scatter<NDIM, S> scatter(q, target ? C : 0);
  F gd[NDIM];
  for (int k = 0; k < NDIM; ++k) gd[k] = S::set(E(0));
  for (int64_t c0 = 0; c0 < C; c0 += kScatterBlock) {
    const int block = scatter_block(C, c0);
    F gm[kScatterBlock];
    for (int j = 0; j < block; ++j) {
      F dv[NDIM];
      const F w = warped(c0 + j, dv);
      gm[j] = lane.template channel<NDIM>(fx, c0 + j, w, dv, gd);
    }
    if (target) scatter.add(target + (b * C + c0) * n, n, block, gm, w8);
  }
  gss_store_grad_ddf<NDIM, S>(a, n, b, v, live, gd);
}

// The backward on channel-innermost moving features mcl, its moving-feature
// gradient scattered into target with the same layout (when not null). Only
// live lanes are sampled: a dead lane's results would be discarded.
template <int NDIM, class S>
void gss_backward_cl(const GssArgs<float>& a, const float* mcl, int64_t cp, const FixedAt<float>& fx,
                     const Extent<NDIM>& e, int64_t b, const int64_t* c, int64_t v, int64_t x, float* target) {
  using F = typename S::F;
  constexpr int W = S::L;
  const int64_t n = e.numel(), C = a.geo.channels;
  const LinearLanes<NDIM, S> s = sample_lanes<NDIM, S>(a.ddf, kZeros, e, b, c, v, x);
  const F g = gss_lane_grad(a, e, b, v, s);
  const typename S::M live = S::nonzero(g);
  const unsigned live_bits = S::bits(live);
  if (live_bits == 0) return gss_dead_lanes<NDIM, S>(a, fx, n, b, v);
  const LaneVoxels<NDIM, S> lv(s, Corners<NDIM, S>(s, e, live), target != nullptr);
  const float* base = mcl + b * n * cp;
  const int64_t ahead = prefetch_distance(e);
  for (int l = 0; l < W; ++l) {
    if (!((live_bits >> l) & 1u)) continue;
    lv.template prefetch<0>(l, base, cp, ahead);
    if (target) lv.template prefetch<1>(l, target + b * n * cp, cp, ahead);
  }
  // channels [c0, c0 + W): w[j] and dv[j][k] of channel c0 + j, vectors of lanes
  auto block = [&](int64_t c0, F* w, F (*dv)[NDIM]) {
    F d[NDIM][W];
    for (int l = 0; l < W; ++l) {
      F dl[NDIM];
      w[l] = lv.sample(l, base + c0, cp, dl);
      for (int k = 0; k < NDIM; ++k) d[k][l] = dl[k];
    }
    S::transpose(w);
    for (int k = 0; k < NDIM; ++k) {
      S::transpose(d[k]);
      for (int j = 0; j < W; ++j) dv[j][k] = d[k][j];
    }
  };
  static_assert(kKeep % W == 0, "kept channels are whole blocks");
  F kept_w[kKeep], kept_dv[kKeep][NDIM];
  CosineSums<S> sums;
  for (int64_t c0 = 0; c0 < C; c0 += W) {
    F w[W], dv[W][NDIM];
    block(c0, w, dv);
    for (int j = 0; j < W && c0 + j < C; ++j) {
      sums.add(w[j], S::load(fx.fixed + (c0 + j) * fx.stride));
      if (c0 + j < kKeep) {
        kept_w[c0 + j] = w[j];
        for (int k = 0; k < NDIM; ++k) kept_dv[c0 + j][k] = dv[j][k];
      }
    }
  }
  const GssLaneBackward<S, float> lane(a, g, live, sums);
  F gd[NDIM];
  for (int k = 0; k < NDIM; ++k) gd[k] = S::set(0.f);
  for (int64_t c0 = 0; c0 < C; c0 += W) {
    F w[W], dv[W][NDIM], gm[W];
    if (c0 >= kKeep) block(c0, w, dv);
    for (int j = 0; j < W; ++j) {
      const int64_t ch = c0 + j;
      if (ch >= C) {
        gm[j] = S::set(0.f);
        continue;
      }
      const F wj = ch < kKeep ? kept_w[ch] : w[j];
      const F* dvj = ch < kKeep ? kept_dv[ch] : dv[j];
      gm[j] = lane.template channel<NDIM>(fx, ch, wj, dvj, gd);
    }
    if (target) {
      S::transpose(gm);
      for (int l = 0; l < W; ++l)
        if ((live_bits >> l) & 1u) lv.scatter(l, target + b * n * cp + c0, cp, gm[l]);
    }
  }
  gss_store_grad_ddf<NDIM, S>(a, n, b, v, live, gd);
}

// Whether float features go channel-innermost (see lanes.h): where the
// build has vector lanes and a voxel's channels fill at least half a vector.
inline bool gss_channels_last(int64_t channels) {
  constexpr int L = simd::Widest<float>::type::L;
  return L > 1 && 2 * channels >= L;
}

// The moving features of one call, channel-innermost.
struct MovingChannelsLast {
  int64_t cp;
  HostBuffer<float> buffer;  // written whole by the conversion
  explicit MovingChannelsLast(const GssArgs<float>& a, int64_t n)
      : cp(channels_padded(a.geo.channels)), buffer(a.geo.batch * n * cp, false) {
    convert_channels<false>(a.moving, buffer.data(), a.geo.batch, a.geo.channels, n, a.num_threads);
  }
  const float* data() const { return buffer.data(); }
};

// With a.mean each row of voxels sums its cosines (where the mask is 1) and
// its mask; the rows' sums are added in row order (ItemSums).
// The fixed features of a row of voxels, copied to `slots` rows (C, W) of
// the kernel's own, and room for their gradient (with_grad), copied back out
// to grad_fixed. The planes of the channels lie n floats apart; at 64^3
// (n = 2^18) reading the 16 channels' rows in step cost the AVX2 forward
// about 10 ns a voxel on one thread (46 against 31 ns with rows of 72:
// planes 1.125 MiB apart).
struct StagedRows {
  int64_t C, W, n, per_batch;
  bool with_grad;
  HostBuffer<float> buffer;
  template <int NDIM>
  StagedRows(const GssArgs<float>& a, const Extent<NDIM>& e, int slots, bool grad)
      : C(a.geo.channels),
        W(e.size[NDIM - 1]),
        n(e.numel()),
        per_batch(n / W),
        with_grad(grad),
        buffer(slots * (grad ? 2 : 1) * C * W, false) {}
  // row r's fixed features, copied to slot t (voxel x of the row: at_voxel)
  FixedAt<float> load(const GssArgs<float>& a, int t, int64_t r) const {
    float* fixed = buffer.data() + t * (with_grad ? 2 : 1) * C * W;
    const float* from = a.fixed + first(r);
    // the next row's lines arrive while this row is computed
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t j = 0; j < W; j += kLineFloats) prefetch_at<0>(from, ch * n + W + j);
    for (int64_t ch = 0; ch < C; ++ch) copy_row(fixed + ch * W, from + ch * n);
    return {fixed, with_grad ? fixed + C * W : nullptr, W};
  }
  void store_grad(const GssArgs<float>& a, const FixedAt<float>& row, int64_t r) const {
    float* to = a.grad_fixed + first(r);
    for (int64_t ch = 0; ch < C; ++ch) copy_row(to + ch * n, row.grad + ch * W);
  }
  // W floats, inline: a call of memcpy per channel and row cost more than the copy
  void copy_row(float* to, const float* from) const {
    using V = typename simd::Widest<float>::type;
    int64_t x = 0;
    for (; x + V::L <= W; x += V::L) V::store(to + x, V::load(from + x));
    for (; x < W; ++x) to[x] = from[x];
  }
  // the flat index of channel 0 of row r's first voxel
  int64_t first(int64_t r) const {
    const int64_t b = r / per_batch;
    return b * C * n + (r - b * per_batch) * W;
  }
};

// FixedAt of voxel x of a row staged at `row`.
inline FixedAt<float> at_voxel(const FixedAt<float>& row, int64_t x) {
  return {row.fixed + x, row.grad ? row.grad + x : nullptr, row.stride};
}

template <typename T>
void gss_forward(const GssArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const int64_t batch = a.geo.batch, C = a.geo.channels, n = e.numel(), W = e.size[NDIM - 1], per_batch = n / W;
    const ItemSums rows(a.mean ? batch * per_batch : 0, 2);
    const auto row_sum = [&](int64_t b, int64_t v) { return a.mean ? rows.of(b * per_batch + v / W) : nullptr; };
    [&] {
      if (!row_kernels_take(e)) {
        if (!a.mean)
          return for_voxels(batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { gss_forward_voxel(a, e, x); });
        parallel_for(batch * per_batch, a.num_threads, [&](int64_t r) {
          for_voxel_range(e, r * W, (r + 1) * W, [&](const Voxel<NDIM>& x) {
            bool inside;
            const double cos = gss_voxel_cosine(a, e, x, &inside);
            rows.of(r)[0] += inside ? cos : 0.0;
            rows.of(r)[1] += inside;
          });
        }, W * C);
        return;
      }
      if constexpr (std::is_same_v<T, float>) {
        if (gss_channels_last(C)) {
          const MovingChannelsLast mcl(a, n);
          const int nt = threads_for(batch * n, a.num_threads);
          const StagedRows staged(a, e, nt, false);
          return for_ranges(batch * per_batch, nt, [&](int64_t r0, int64_t r1, int t) {
            for (int64_t r = r0; r < r1; ++r) {
              const FixedAt<float> row = staged.load(a, t, r);
              for_row<NDIM, T>(e, r, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
                gss_forward_cl<NDIM, decltype(lanes)>(a, mcl.data(), mcl.cp, at_voxel(row, x), e, b, c, v, x,
                                                      row_sum(b, v));
              });
            }
          });
        }
      }
      for_rows<NDIM, T>(batch, e, a.num_threads, C, [&](auto lanes, int64_t b, const int64_t* c, int64_t v, int64_t x) {
        gss_forward_lanes<NDIM, decltype(lanes)>(a, e, b, c, v, x, row_sum(b, v));
      });
    }();
    if (a.mean) {
      const double count = rows.total(1);
      a.cos[0] = store<T>(static_cast<acc_t<T>>(rows.total(0) / (count > 1e-6 ? count : 1e-6)));
      a.mask[0] = store<T>(static_cast<acc_t<T>>(count));
    }
  })
}

// The per-voxel path: gathers, then the moving-feature scatter from three
// coefficients per voxel, kept in a buffer of the batch's voxels (the
// gradient may be one value, the mean's).
template <int NDIM, typename T>
void gss_backward_voxels(const GssArgs<T>& a, const Extent<NDIM>& e) {
  using A = acc_t<T>;
  const int64_t items = a.geo.batch * e.numel(), n = e.numel();
  const HostBuffer<A> kept(a.grad_moving ? 3 * items : 0, false);
  A* coeffs = kept.data();
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

// The row kernels' backward: rows(r0, r1, target) over the rows of the
// batch, the moving-feature gradient scattered (slabs or per-thread buffers,
// see lanes.h) into `out` (items * values_per_item values; target null
// without it).
template <int NDIM, typename T, typename G, typename Rows>
void gss_backward_rows(const GssArgs<T>& a, const Extent<NDIM>& e, G* out, int64_t out_numel, Rows&& rows) {
  const int64_t items = a.geo.batch * e.numel();
  const int nt = threads_for(items, a.num_threads);
  if (out)
    scatter_rows(FirstAxis<T>{a.ddf, NDIM * e.numel()}, a.geo.batch, e, nt, out, out_numel, rows);
  else
    for_ranges(items / e.size[NDIM - 1], nt,
               [&](int64_t r0, int64_t r1, int) { rows(r0, r1, static_cast<G*>(nullptr)); });
}

// grad_moving may start uninitialised (kGssWritesMovingGrad in ops_impl.h):
// the channel-innermost path writes all of it by converting its own
// gradient back; the scatters into it start from zeros.
template <typename T>
void gss_backward(const GssArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const int64_t batch = a.geo.batch, C = a.geo.channels, n = e.numel();
    const auto zero_grad_moving = [&] {
      if (a.grad_moving) zero_fill(a.grad_moving, batch * C * n, a.num_threads);
    };
    if (!row_kernels_take(e)) {
      zero_grad_moving();
      gss_backward_voxels(a, e);
      return;
    }
    if constexpr (std::is_same_v<T, float>) {
      if (gss_channels_last(C)) {
        const MovingChannelsLast mcl(a, n);
        const int64_t cp = mcl.cp;
        const HostBuffer<float> gcl(a.grad_moving ? batch * n * cp : 0, true);
        gss_backward_rows(a, e, gcl.data(), batch * n * cp, [&](int64_t r0, int64_t r1, float* into) {
          const StagedRows staged(a, e, 1, a.grad_fixed != nullptr);
          for (int64_t r = r0; r < r1; ++r) {
            const FixedAt<float> row = staged.load(a, 0, r);
            for_row<NDIM, T>(e, r, [&](auto tag, int64_t b, const int64_t* c, int64_t v, int64_t x) {
              gss_backward_cl<NDIM, decltype(tag)>(a, mcl.data(), cp, at_voxel(row, x), e, b, c, v, x, into);
            });
            if (row.grad) staged.store_grad(a, row, r);
          }
        });
        if (gcl.data()) convert_channels<true>(gcl.data(), a.grad_moving, batch, C, n, a.num_threads);
        return;
      }
    }
    zero_grad_moving();
    gss_backward_rows(a, e, a.grad_moving, batch * C * n, [&](int64_t r0, int64_t r1, acc_t<T>* into) {
      for (int64_t r = r0; r < r1; ++r)
        for_row<NDIM, T>(e, r, [&](auto tag, int64_t b, const int64_t* c, int64_t v, int64_t x) {
          gss_backward_lanes<NDIM, decltype(tag)>(a, e, b, c, v, x, into);
        });
    });
  })
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
