// Row kernels of the CPU backend, shared by warp and GSS: linear sampling
// of S::L voxels at a time along rows (x innermost, simd.h lanes), and the
// scatter (adjoint of a gather) without atomics.
//
// The corners of the lanes are gathered with int32 offsets within a channel
// plane and with masks, so out-of-volume corners read nothing and count 0:
// no branch per corner. Where both x neighbours of every lane are inside
// (the interior), each x pair is one 64-bit gather and the scatter needs no
// mask. The scatter goes lane by lane, or on AVX-512 for 3 or more channels
// as vector read-modify-writes of groups of lanes (Scatter). Planes of 2^29
// voxels or more take the per-voxel code of voxel_ops.h.
//
// Scatters without full-size buffers: the sample of a voxel at first-axis
// index z lands on planes [z - m - 1, z + m + 1] with m = max |ddf_0|, so
// slabs of 2 ceil(m) + 2 planes along the first axis, all even slabs then all
// odd ones, never write the same place at the same time. Larger
// displacements (too few slabs for the threads) fall back to per-thread
// buffers.
#pragma once

#include <cmath>

#include "gemini/voxel_ops.h"
#include "parallel.h"
#include "simd.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// The row kernels take planes below the limit (int32 offsets within a
// plane); larger ones take the per-voxel code.
template <int NDIM>
bool row_kernels_take(const Extent<NDIM>& e) {
  return e.numel() < row_kernel_voxels();
}

// Linear interpolation of the corner values v (corner c takes the upper
// neighbour along axis k when bit NDIM - 1 - k is set) at fractions frac,
// and (when dv) the derivative along each axis, times dclamp (when given).
template <int NDIM, class S>
[[gnu::always_inline]] inline typename S::F lerp_corners(const typename S::F* v, const typename S::F* frac,
                                                        const typename S::F* dclamp, typename S::F* dv) {
  using F = typename S::F;
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
      dv[0] = dz;
      dv[1] = S::fma(fz, dy1 - dy0, dy0);
      dv[2] = S::fma(fz, ex1 - ex0, ex0);
    }
    if (dv && dclamp)
      for (int k = 0; k < 3; ++k) dv[k] = dv[k] * dclamp[k];
    return S::fma(fz, dz, b0);
  } else {
    const F fy = frac[0], fx = frac[1];
    const F dx0 = v[1] - v[0], dx1 = v[3] - v[2];
    const F a0 = S::fma(fx, dx0, v[0]), a1 = S::fma(fx, dx1, v[2]);
    const F dy = a1 - a0;
    if (dv) {
      dv[0] = dy;
      dv[1] = S::fma(fy, dx1 - dx0, dx0);
    }
    if (dv && dclamp)
      for (int k = 0; k < 2; ++k) dv[k] = dv[k] * dclamp[k];
    return S::fma(fy, dy, a0);
  }
}

// Floats per cache line (64 bytes on the x86 cores this targets).
constexpr int64_t kLineFloats = 64 / sizeof(float);

// Asks for the cache line of element i of base, to be read (kWrite 0) or
// written (1). i may lie outside the array: the address is formed as an
// integer, since a pointer past an array is undefined behaviour (which GCC
// -O3 did exploit in the squaring steps, dropping a scatter).
template <int kWrite, typename T>
[[gnu::always_inline]] inline void prefetch_at(const T* base, int64_t i) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(base) + i * sizeof(T)), kWrite);
}

// How far ahead (in elements of a plane-major array) the row kernels ask for
// the corners that a later row of samples reads: two planes (along the first
// axis), measured best for the squaring steps and warp.
template <int NDIM>
int64_t prefetch_distance(const Extent<NDIM>& e) {
  return 2 * e.stride[0];
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
  F point[NDIM];    // the sample points as given

  LinearLanes(const F* p, const Extent<NDIM>& e, int padding) {
    off = S::seti(0);
    for (int k = 0; k < NDIM; ++k) {
      F q = point[k] = p[k];
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

  // Asks for the rows of corners (coff: corner_offset) of the first and the
  // last lane, `ahead` elements further on in plane: a row of lanes spans a
  // few cache lines per row of corners, and the hardware's stride
  // prefetchers missed them (warp forward at 128^3, one thread: 13 -> 9.5 ms
  // with AVX2, 10.5 -> 7.1 ms with AVX-512).
  template <int kWrite>
  void prefetch(const E* plane, const int32_t* coff, int64_t ahead) const {
    int32_t o[S::L];
    S::store_int(o, off);
    for (int c = 0; c < kCorners; c += 2) {
      prefetch_at<kWrite>(plane, o[0] + coff[c] + ahead);
      prefetch_at<kWrite>(plane, o[S::L - 1] + coff[c] + 1 + ahead);
    }
  }

  // the lanes whose corners all lie inside: bit l (what Corners' masks give
  // for every lane, without forming them)
  unsigned corners_inside() const {
    M m = S::both(lo_in[0], hi_in[0]);
    for (int k = 1; k < NDIM; ++k) m = S::both(m, S::both(lo_in[k], hi_in[k]));
    return S::bits(m);
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
  F interpolate(const F* v, F* dv) const { return lerp_corners<NDIM, S>(v, frac, dclamp, dv); }
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

// for_row over every row of `batch` planes, rows handed out on demand
// (channels: how many planes a voxel's work touches, for the chunk size).
template <int NDIM, typename T, typename Span>
void for_rows(int64_t batch, const Extent<NDIM>& e, int num_threads, int64_t channels, Span&& span) {
  const int64_t W = e.size[NDIM - 1], rows = batch * (e.numel() / W);
  parallel_for(rows, num_threads, [&](int64_t r) { for_row<NDIM, T>(e, r, span); }, W * channels);
}

// The sample points of the lanes starting at voxel x of a row (c: its other
// coordinates), given their displacements d (made the points in place).
template <int NDIM, class S>
[[gnu::always_inline]] inline LinearLanes<NDIM, S> lanes_at(typename S::F* d, int padding, const Extent<NDIM>& e,
                                                            const int64_t* c, int64_t x) {
  using E = typename S::E;
  for (int k = 0; k < NDIM - 1; ++k) d[k] = d[k] + S::set(E(c[k]));
  d[NDIM - 1] = d[NDIM - 1] + S::iota(E(x));
  return LinearLanes<NDIM, S>(d, e, padding);
}

// The sample points x + ddf(x) of the lanes starting at voxel x of a row.
template <int NDIM, class S, typename T>
LinearLanes<NDIM, S> sample_lanes(const T* ddf, int padding, const Extent<NDIM>& e, int64_t b, const int64_t* c,
                                  int64_t v, int64_t x) {
  const int64_t n = e.numel();
  const T* d = ddf + b * NDIM * n + v;
  typename S::F p[NDIM];
  for (int k = 0; k < NDIM; ++k) p[k] = S::load(d + k * n);
  return lanes_at<NDIM, S>(p, padding, e, c, x);
}

// Corner offsets and masks of the lanes (live: lanes that count at all).
template <int NDIM, class S>
struct Corners {
  static constexpr int K = 1 << NDIM;
  int32_t coff[K];
  typename S::M mask[K];
  bool interior;  // every corner of every lane inside (and live)
  typename S::I offv;  // corner 0 of each lane
  Corners(const LinearLanes<NDIM, S>& s, const Extent<NDIM>& e, typename S::M live) {
    unsigned all = S::kAll;
    for (int k = 0; k < K; ++k) {
      coff[k] = LinearLanes<NDIM, S>::corner_offset(e, k);
      mask[k] = S::both(s.corner_mask(k), live);
      all &= S::bits(mask[k]);
    }
    interior = all == S::kAll;
    offv = s.off;
  }
};

// The lanes of a scatter in groups of the same base = off - lane. Within
// a group the x pair (corners c, c + 1) of lane l lands on base + coff[c] + l
// and the next place, distinct places for distinct lanes, so each group and
// pair is one vector read-modify-write (S::add_pair). Smooth displacements
// give a few groups (at 96^3, max |u| 4: about 5 per 16 lanes), mostly runs
// of lanes: each group is found from the first lane of one of its runs.
template <int NDIM, class S>
struct ScatterGroups {
  unsigned starts = 0;  // the first lane of each run
  unsigned live = 0;    // lanes with a corner to scatter to
  typename S::I rel;
  alignas(64) int32_t base[S::L];
  ScatterGroups() = default;
  explicit ScatterGroups(const Corners<NDIM, S>& q) {
    for (int k = 0; k < Corners<NDIM, S>::K; ++k) live |= S::bits(q.mask[k]);
    rel = S::addi(q.offv, S::muli(S::lane_index(), -1));
    starts = S::run_starts(rel);
    S::store_int(base, rel);
  }
  // the lanes of the group of run start l, or none where an earlier run has it
  unsigned group(int l) const {
    const unsigned m = S::bits(S::eqi(rel, S::seti(base[l])));
    return (m & ((1u << l) - 1u)) ? 0u : m & live;
  }
};

// Channels of a block: the callers gather (and load) every channel of a
// block before scattering them all (Scatter::add), so the gathers issue back
// to back instead of behind each channel's stores.
constexpr int kScatterBlock = 8;
inline int scatter_block(int64_t channels, int64_t c0) {
  return static_cast<int>(channels - c0 < kScatterBlock ? channels - c0 : kScatterBlock);
}
// Channels from which lane types with kGroupedScatter group the lanes:
// finding the groups costs about what the vector adds save on one channel
// (measured at 96^3: slower on 1 channel, faster on 3).
constexpr int64_t kGroupFrom = 3;

// target[off + coff[k] + j * plane] += g[j] * w[k] for the channels j of a
// block, over the lanes and corners whose mask is set: vector groups (see
// ScatterGroups) or lane by lane.
template <int NDIM, class S>
struct Scatter {
  using F = typename S::F;
  static constexpr int K = Corners<NDIM, S>::K;
  const Corners<NDIM, S>& q;
  bool grouped;
  ScatterGroups<NDIM, S> groups;
  alignas(64) int32_t off[S::L];

  Scatter(const Corners<NDIM, S>& corners, int64_t channels)
      : q(corners), grouped(S::kGroupedScatter && channels >= kGroupFrom) {
    if constexpr (S::kGroupedScatter)
      if (grouped) {
        groups = ScatterGroups<NDIM, S>(q);
        return;
      }
    S::store_int(off, q.offv);
  }

  template <typename T>
  void add(T* t, int64_t plane, int channels, const F* g, const F* w) const {
    if constexpr (S::kGroupedScatter)
      if (grouped) {
        add_groups(t, plane, channels, g, w);
        return;
      }
    for (int j = 0; j < channels; ++j) add_lanes(t + j * plane, g[j], w);
  }

 private:
  // Channels and pairs innermost: the groups of one row overlap, and this
  // keeps a group's read-modify-writes of a place apart from the last group's.
  template <typename T>
  void add_groups(T* t, int64_t plane, int channels, const F* g, const F* w) const {
    for (unsigned left = groups.starts; left; left &= left - 1) {
      const int l = __builtin_ctz(left);
      const unsigned lanes_bits = groups.group(l);
      if (!lanes_bits) continue;
      const typename S::M lanes = S::from_bits(lanes_bits);
      typename S::M lo[K / 2], hi[K / 2];
      for (int k = 0; k < K; k += 2) {
        lo[k / 2] = hi[k / 2] = lanes;
        if (!q.interior) {
          lo[k / 2] = S::both(lo[k / 2], q.mask[k]);
          hi[k / 2] = S::both(hi[k / 2], q.mask[k + 1]);
        }
      }
      for (int j = 0; j < channels; ++j)
        for (int k = 0; k < K; k += 2)
          S::add_pair(t + j * plane + q.coff[k] + groups.base[l], lo[k / 2], g[j] * w[k], hi[k / 2], g[j] * w[k + 1]);
    }
  }

  // Corner by corner: consecutive adds go to different places (lane by lane,
  // one lane's upper x corner is the next lane's lower one, and each add
  // would wait for the previous store).
  template <typename T>
  void add_lanes(T* t, F g, const F* w) const {
    alignas(64) typename S::E contrib[K][S::L];
    for (int k = 0; k < K; ++k) S::store(contrib[k], g * w[k]);
    for (int k = 0; k < K; ++k) {
      T* tk = t + q.coff[k];
      if (q.interior) {
        for (int l = 0; l < S::L; ++l) tk[off[l]] += contrib[k][l];
      } else {
        const unsigned m = S::bits(q.mask[k]);
        for (int l = 0; l < S::L; ++l)
          if ((m >> l) & 1u) tk[off[l]] += contrib[k][l];
      }
    }
  }
};

// The first-axis displacements of a field: voxel v of batch item b at
// d[b * item + v * kStep] (plane-major (B, NDIM, *S): item NDIM * n, step 1).
template <typename T, int kStep = 1>
struct FirstAxis {
  const T* d;
  int64_t item;
};

// Slab thickness along the first axis that keeps the scatters of even (odd)
// slabs apart, or 0 when the displacements are not finite or too large:
// at least 2 ceil(max |ddf_0|) + 2 planes, thickened so that the slabs
// share evenly among nt threads in both colours where there are enough.
// (One thread: a memory-bound pass of one channel costs less than waking
// and joining the pool, which on shared cores can wait a time slice.)
template <typename T, int kStep>
int64_t scatter_slab(const FirstAxis<T, kStep>& f, int64_t batch, int64_t n, int64_t depth, int nt) {
  T m = T(0);
  int bad = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const T* d = f.d + b * f.item;
#pragma omp simd reduction(max : m) reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const T u = d[i * kStep] < T(0) ? -d[i * kStep] : d[i * kStep];
      bad |= !(u < T(1e6));  // NaN and inf too
      m = u > m ? u : m;
    }
  }
  if (bad) return 0;
  const int64_t thinnest = 2 * static_cast<int64_t>(std::ceil(m)) + 2;
  int64_t slabs = depth / thinnest;
  if (slabs >= 2 * nt) slabs -= slabs % (2 * nt);
  return slabs ? (depth + slabs - 1) / slabs : thinnest;
}

// run_rows(r0, r1, target) scatters what rows [r0, r1) of `batch` planes
// contribute into target (out_numel values, zeroed or accumulating), on nt
// threads kept apart by slabs (see the top of this file) or, failing that,
// by per-thread buffers summed at the end.
template <int NDIM, typename T, int kStep, typename G, typename RunRows>
void scatter_rows(const FirstAxis<T, kStep>& first_axis, int64_t batch, const Extent<NDIM>& e, int nt, G* target,
                  int64_t out_numel, RunRows&& run_rows) {
  const int64_t per_plane = e.numel() / e.size[NDIM - 1], rows = batch * per_plane;
  if (nt == 1) {
    run_rows(int64_t(0), rows, target);
    return;
  }
  const int64_t depth = e.size[0], rows_per_z = per_plane / depth;
  const int64_t slab = scatter_slab(first_axis, batch, e.numel(), depth, nt);
  const int64_t slabs = slab ? (depth + slab - 1) / slab : 0;
  if (slab && batch * (slabs / 2) >= nt) {
    for (int colour = 0; colour < 2; ++colour) {
      const int64_t per_item = (slabs - colour + 1) / 2;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
      for (int64_t t = 0; t < batch * per_item; ++t) {
        const int64_t b = t / per_item, s = colour + 2 * (t - b * per_item);
        const int64_t z0 = s * slab, z1 = z0 + slab < depth ? z0 + slab : depth;
        run_rows(b * per_plane + z0 * rows_per_z, b * per_plane + z1 * rows_per_z, target);
      }
    }
    return;
  }
  ThreadBuffers<G> own(nt - 1, out_numel);
  for_ranges(rows, nt, [&](int64_t r0, int64_t r1, int t) { run_rows(r0, r1, t == 0 ? target : own.of(t)); });
  reduce_into(target, own, nt);
}

// ---- channels innermost ----
// A copy of C-channel data with the channels of a voxel contiguous (stride
// cp >= C values per voxel, padded with zeros to whole vectors) turns the
// per-channel gathers of a sample's corners into vector loads of channels,
// one cache line per corner where a plane-major layout touches one per
// channel (csrc/cpu/gss.h).

// The lanes of a LinearLanes one voxel at a time over channel-innermost
// data: the lane's corners as vectors of Q::L channels (S's vectors, or
// the 4-channel voxels of square.h).
template <int NDIM, class S, class Q = S>
struct LaneVoxels {
  using F = typename Q::F;
  static constexpr int K = 1 << NDIM;
  alignas(64) int32_t off[S::L];
  alignas(64) float frac[NDIM][S::L];
  alignas(64) float dclamp[NDIM][S::L];  // when clamps: 0 where border padding clamps
  alignas(64) float w[K][S::L];          // weights, for a scatter
  unsigned mask[K];                      // corner k of lane l counts: bit l
  int32_t coff[K];
  bool clamps;

  LaneVoxels(const LinearLanes<NDIM, S>& s, const Corners<NDIM, S>& q, bool weights, bool border = false)
      : clamps(border) {
    S::store_int(off, s.off);
    for (int k = 0; k < NDIM; ++k) {
      S::store(frac[k], s.frac[k]);
      if (border) S::store(dclamp[k], s.dclamp[k]);
    }
    for (int k = 0; k < K; ++k) {
      mask[k] = S::bits(q.mask[k]);
      coff[k] = q.coff[k];
    }
    if (weights) {
      typename S::F wk[K];
      s.weights(wk);
      for (int k = 0; k < K; ++k) S::store(w[k], wk[k]);
    }
  }

  // Asks for lane l's first row of corners (both x neighbours, every cache
  // line) `ahead` voxels further on, in an array of cp values per voxel
  // (base: voxel 0). The first row only: the others are the first rows of
  // the samples a row or a plane on, which ask for them in turn (asking for
  // all four measured no better: GSS at 64^3 and 96^3, one thread).
  template <int kWrite>
  [[gnu::always_inline]] void prefetch(int l, const float* base, int64_t cp, int64_t ahead) const {
    for (int64_t j = 0; j < 2 * cp; j += kLineFloats) prefetch_at<kWrite>(base, (off[l] + ahead) * cp + j);
  }

  // the lanes whose corners are all inside: bit l
  unsigned all_inside() const {
    unsigned m = mask[0];
    for (int k = 1; k < K; ++k) m &= mask[k];
    return m;
  }

  // channels [c, c + Q::L) of lane l's sample and (when dv) its derivative
  // along each axis; base points at channel c of voxel 0, cp values per voxel
  [[gnu::always_inline]] F sample(int l, const float* base, int64_t cp, F* dv) const {
    F vals[K], fr[NDIM], dc[NDIM];
    const int64_t o = off[l];
    for (int k = 0; k < K; ++k) vals[k] = (mask[k] >> l) & 1u ? Q::load(base + (o + coff[k]) * cp) : Q::set(0.f);
    for (int k = 0; k < NDIM; ++k) {
      fr[k] = Q::set(frac[k][l]);
      if (clamps) dc[k] = Q::set(dclamp[k][l]);
    }
    return lerp_corners<NDIM, Q>(vals, fr, clamps ? dc : nullptr, dv);
  }

  // the adjoint of sample: g (channels [c, c + Q::L)) spread onto lane l's corners
  void scatter(int l, float* base, int64_t cp, F g) const {
    const int64_t o = off[l];
    for (int k = 0; k < K; ++k)
      if ((mask[k] >> l) & 1u) {
        float* t = base + (o + coff[k]) * cp;
        Q::store(t, Q::fma(Q::set(w[k][l]), g, Q::load(t)));
      }
  }
};

// Values per voxel of the channel-innermost copy of C channels: whole vectors.
inline int64_t channels_padded(int64_t channels) {
  constexpr int64_t L = simd::Widest<float>::type::L;
  return (channels + L - 1) / L * L;
}

// out (batch, n, cp) = in (batch, C, n) with channels innermost; kBack:
// out (batch, C, n) = in (batch, n, cp). Vectors of L voxels by L channels go
// through registers (S::transpose). The copy writes every value of out, its
// padding channels as zeros. A work item is a cache
// line of voxels (kLine) of each plane, used up before the next block of
// planes: planes whose size is a multiple of 128 KiB (64^3, 96^3, 128^3)
// share the cache sets, and 8-voxel items (AVX2) read each line twice, the
// second time after the other planes had evicted it.
template <bool kBack>
void convert_channels(const float* in, float* out, int64_t batch, int64_t C, int64_t n, int num_threads) {
  using V = typename simd::Widest<float>::type;
  using F = typename V::F;
  constexpr int L = V::L;
  constexpr int64_t kLine = kLineFloats > L ? kLineFloats : L;
  const int64_t cp = channels_padded(C), chunks = (n + kLine - 1) / kLine;
  parallel_for(
      batch * chunks, num_threads,
      [&](int64_t i) {
        const int64_t b = i / chunks, first = (i - b * chunks) * kLine;
        const float* planes = kBack ? nullptr : in + b * C * n;
        float* out_planes = kBack ? out + b * C * n : nullptr;
        const float* cl_in = kBack ? in + b * n * cp : nullptr;
        float* cl_out = kBack ? nullptr : out + b * n * cp;
        const int64_t whole = first + kLine <= n ? first + kLine : first + (n - first) / L * L;
        for (int64_t c0 = 0; c0 < cp; c0 += L)
          for (int64_t v0 = first; v0 < whole; v0 += L) {
            F r[L];
            if constexpr (kBack) {
              for (int l = 0; l < L; ++l) r[l] = V::load(cl_in + (v0 + l) * cp + c0);
              V::transpose(r);
              for (int j = 0; j < L && c0 + j < C; ++j) V::store(out_planes + (c0 + j) * n + v0, r[j]);
            } else {
              for (int j = 0; j < L; ++j) r[j] = c0 + j < C ? V::load(planes + (c0 + j) * n + v0) : V::set(0.f);
              V::transpose(r);
              for (int l = 0; l < L; ++l) V::store(cl_out + (v0 + l) * cp + c0, r[l]);
            }
          }
        for (int64_t v = whole; v < first + kLine && v < n; ++v)  // the last voxels, one at a time
          for (int64_t ch = 0; ch < (kBack ? C : cp); ++ch) {
            if constexpr (kBack)
              out_planes[ch * n + v] = cl_in[v * cp + ch];
            else
              cl_out[v * cp + ch] = ch < C ? planes[ch * n + v] : 0.f;
          }
      },
      kLine * cp);
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
