// Per-voxel math shared by the CPU loops, the CUDA kernels and their host
// emulation: the one home of interpolation, bounds, and the forward/backward
// contribution of a voxel for every op. No torch, no CUDA runtime.
#pragma once

#include <cmath>
#include <cstdint>

#include "gemini/params.h"

// Runs the statement with a constexpr NDIM of 2 or 3.
#define GEMINI_DISPATCH_NDIM(ndim, ...) \
  if ((ndim) == 2) {                     \
    constexpr int NDIM = 2;              \
    __VA_ARGS__;                         \
  } else {                               \
    constexpr int NDIM = 3;              \
    __VA_ARGS__;                         \
  }

namespace gemini {
GEMINI_ISA_BEGIN

enum Mode : int { kBilinear = 0, kNearest = 1 };
enum Padding : int { kZeros = 0, kBorder = 1 };

// Spatial extent of one channel plane; NDIM axes in tensor order (D, H, W).
template <int NDIM>
struct Extent {
  int64_t size[NDIM];
  int64_t stride[NDIM];  // of a contiguous plane
  GEMINI_HD int64_t numel() const { return size[0] * stride[0]; }
};

template <int NDIM>
GEMINI_HD Extent<NDIM> make_extent(const int64_t* size) {
  Extent<NDIM> e;
  int64_t s = 1;
  for (int k = NDIM - 1; k >= 0; --k) {
    e.size[k] = size[k];
    e.stride[k] = s;
    s *= size[k];
  }
  return e;
}

// A voxel of a batch of planes: batch item b, flat index v in the plane, coordinates c.
template <int NDIM>
struct Voxel {
  int64_t b, v;
  int64_t c[NDIM];
  GEMINI_HD int64_t flat(int64_t n) const { return b * n + v; }
};

// The voxel with flat index i over the batch (divisions: once per thread on
// CUDA, once per chunk on the CPU).
template <int NDIM>
GEMINI_HD Voxel<NDIM> voxel_at(const Extent<NDIM>& e, int64_t i) {
  Voxel<NDIM> x;
  const int64_t n = e.numel();
  x.b = i / n;
  x.v = i - x.b * n;
  int64_t r = x.v;
  for (int k = 0; k < NDIM; ++k) {
    x.c[k] = r / e.stride[k];
    r -= x.c[k] * e.stride[k];
  }
  return x;
}

// The next voxel in flat order, without divisions.
template <int NDIM>
GEMINI_HD void advance(Voxel<NDIM>& x, const Extent<NDIM>& e) {
  ++x.v;
  for (int k = NDIM - 1; k >= 0; --k) {
    if (++x.c[k] < e.size[k]) return;
    x.c[k] = 0;
  }
  ++x.b;
  x.v = 0;
}

// floor and round-half-to-even of a coordinate already pulled into the int64
// range by safe_coord: on the host without SSE4.1, std::floor and
// std::nearbyint are library calls, far slower than the conversion.
template <typename A>
GEMINI_HD int64_t floor_index(A q) {
#ifdef __CUDA_ARCH__
  return static_cast<int64_t>(floor(q));
#else
  const int64_t i = static_cast<int64_t>(q);  // truncates toward zero
  return (static_cast<A>(i) > q) ? i - 1 : i;
#endif
}

template <typename A>
GEMINI_HD int64_t round_index(A q) {
  const int64_t i = floor_index(q);
  const A d = q - static_cast<A>(i);
  if (d > A(0.5)) return i + 1;
  if (d < A(0.5)) return i;
  return (i & 1) ? i + 1 : i;  // a tie goes to the even neighbour
}

// Coordinates far outside the volume (and NaN) are pulled to a value that is
// still outside, so the cast to an integer index never overflows.
template <typename A>
GEMINI_HD A safe_coord(A q, int64_t n) {
  const A lo = A(-2), hi = A(n + 1);
  if (!(q >= lo)) return lo;  // also catches NaN
  return q > hi ? hi : q;
}

// The 2^NDIM corners of (bi/tri)linear interpolation at one sample point.
// Out-of-volume corners carry weight 0 and inside == false (zeros padding);
// with border padding the point is clamped first and dclamp[k] is 0 where
// the clamp is active (no gradient to the coordinate, as in grid_sample).
template <int NDIM, typename A>
struct Linear {
  static constexpr int kCorners = 1 << NDIM;
  int64_t offset[kCorners];
  A weight[kCorners];
  bool inside[kCorners];
  A frac[NDIM];
  A dclamp[NDIM];

  GEMINI_HD Linear(const A* p, const Extent<NDIM>& e, int padding) {
    int64_t lo[NDIM];
    bool lo_in[NDIM], hi_in[NDIM];
    for (int k = 0; k < NDIM; ++k) {
      A q = p[k];
      dclamp[k] = A(1);
      if (padding == kBorder) {
        const A top = A(e.size[k] - 1);
        if (!(q > A(0))) {
          q = A(0);
          dclamp[k] = A(0);
        } else if (q >= top) {
          q = top;
          dclamp[k] = A(0);
        }
      }
      q = safe_coord(q, e.size[k]);
      lo[k] = floor_index(q);
      frac[k] = q - static_cast<A>(lo[k]);
      lo_in[k] = lo[k] >= 0 && lo[k] < e.size[k];
      hi_in[k] = lo[k] + 1 >= 0 && lo[k] + 1 < e.size[k];
    }
    // corners as a tensor product, one axis at a time: corner c has bit
    // (NDIM - 1 - k) set when it takes the upper neighbour along axis k
    offset[0] = 0;
    weight[0] = A(1);
    inside[0] = true;
    for (int k = 0, count = 1; k < NDIM; ++k, count *= 2) {
      for (int c = count - 1; c >= 0; --c) {
        const int64_t off = offset[c] + lo[k] * e.stride[k];
        const A w = weight[c];
        const bool in = inside[c];
        offset[2 * c] = off;
        weight[2 * c] = w * (A(1) - frac[k]);
        inside[2 * c] = in && lo_in[k];
        offset[2 * c + 1] = off + e.stride[k];
        weight[2 * c + 1] = w * frac[k];
        inside[2 * c + 1] = in && hi_in[k];
      }
    }
    for (int c = 0; c < kCorners; ++c) {
      if (!inside[c]) {
        offset[c] = 0;
        weight[c] = A(0);
      }
    }
  }

  // d weight[c] / d p[k], for every corner and axis
  GEMINI_HD void dweights(A (*dw)[NDIM]) const {
    for (int c = 0; c < kCorners; ++c)
      for (int k = 0; k < NDIM; ++k) {
        A r = ((c >> (NDIM - 1 - k)) & 1) ? A(1) : A(-1);
        for (int j = 0; j < NDIM; ++j)
          if (j != k) r *= ((c >> (NDIM - 1 - j)) & 1) ? frac[j] : A(1) - frac[j];
        dw[c][k] = r * dclamp[k];
      }
  }

  template <typename T>
  GEMINI_HD A value(const T* plane) const {
    A v = A(0);
    for (int c = 0; c < kCorners; ++c)
      if (inside[c]) v += weight[c] * load<A>(plane[offset[c]]);
    return v;
  }

  // value, and its gradient with respect to the sample point in grad[NDIM],
  // given dweights()
  template <typename T>
  GEMINI_HD A value_grad(const T* plane, const A (*dw)[NDIM], A* grad) const {
    A v = A(0);
    for (int k = 0; k < NDIM; ++k) grad[k] = A(0);
    for (int c = 0; c < kCorners; ++c) {
      if (!inside[c]) continue;
      const A x = load<A>(plane[offset[c]]);
      v += weight[c] * x;
      for (int k = 0; k < NDIM; ++k) grad[k] += dw[c][k] * x;
    }
    return v;
  }

  // plane[corner] += g * weight[corner], through the caller's add (plain or atomic)
  template <typename G, typename Add>
  GEMINI_HD void scatter(G* plane, A g, const Add& add) const {
    for (int c = 0; c < kCorners; ++c)
      if (inside[c]) add(plane + offset[c], static_cast<G>(g * weight[c]));
  }
};

// Nearest-voxel sampling (round half to even, like grid_sample); offset < 0
// when the rounded point lies outside the volume (zeros padding).
template <int NDIM, typename A>
struct Nearest {
  int64_t offset;

  GEMINI_HD Nearest(const A* p, const Extent<NDIM>& e, int padding) {
    offset = 0;
    for (int k = 0; k < NDIM; ++k) {
      A q = p[k];
      if (padding == kBorder) {
        const A top = A(e.size[k] - 1);
        q = q > A(0) ? (q < top ? q : top) : A(0);
      }
      const int64_t i = round_index(safe_coord(q, e.size[k]));
      if (i < 0 || i >= e.size[k]) {
        offset = -1;
        return;
      }
      offset += i * e.stride[k];
    }
  }

  template <typename T, typename A2>
  GEMINI_HD A2 value(const T* plane) const {
    return offset < 0 ? A2(0) : load<A2>(plane[offset]);
  }

  template <typename G, typename Add>
  GEMINI_HD void scatter(G* plane, A g, const Add& add) const {
    if (offset >= 0) add(plane + offset, static_cast<G>(g));
  }
};

// Sample point x + ddf(x) of voxel x; ddf is (B, NDIM, *S).
template <int NDIM, typename T, typename A>
GEMINI_HD void sample_point(const T* ddf, const Extent<NDIM>& e, const Voxel<NDIM>& x, A* p) {
  const int64_t n = e.numel();
  const T* d = ddf + x.b * NDIM * n + x.v;
  for (int k = 0; k < NDIM; ++k) p[k] = static_cast<A>(x.c[k]) + load<A>(d[k * n]);
}

// 1 where the nearest voxel of the sample point lies inside the volume.
template <int NDIM, typename A>
GEMINI_HD bool point_inside(const A* p, const Extent<NDIM>& e) {
  for (int k = 0; k < NDIM; ++k) {
    const int64_t r = round_index(safe_coord(p[k], e.size[k]));
    if (r < 0 || r > e.size[k] - 1) return false;
  }
  return true;
}

struct PlainAdd {
  template <typename G>
  GEMINI_HD void operator()(G* p, G v) const {
    *p += v;
  }
};

// ---- GSS: cosine along channels between warped moving and fixed features ----

template <typename A>
struct GssVoxel {
  A dot, nw2, nf2;
};

// Channel sums of one voxel; C planes of n voxels each from fm_b / ff_b.
template <int NDIM, typename T, typename A>
GEMINI_HD GssVoxel<A> gss_sums(const Linear<NDIM, A>& s, const T* fm_b, const T* ff_b, int64_t C, int64_t n,
                               int64_t v) {
  GssVoxel<A> r{A(0), A(0), A(0)};
  for (int64_t c = 0; c < C; ++c) {
    const A w = s.value(fm_b + c * n);
    const A f = load<A>(ff_b[c * n + v]);
    r.dot += w * f;
    r.nw2 += w * w;
    r.nf2 += f * f;
  }
  return r;
}

template <typename A>
GEMINI_HD A gss_cosine(const GssVoxel<A>& r, A eps) {
  const A a = std::sqrt(r.nw2), b = std::sqrt(r.nf2);
  return r.dot / ((a > eps ? a : eps) * (b > eps ? b : eps));
}

// Backward coefficients for upstream gradient g of the cosine:
// dL/dw_c = kw1 * f_c - kw2 * w_c;  dL/df_c = kw1 * w_c - kf2 * f_c.
template <typename A>
struct GssCoeffs {
  A kw1, kw2, kf2;
};

template <typename A>
GEMINI_HD GssCoeffs<A> gss_coeffs(const GssVoxel<A>& r, A g, A eps) {
  const A nw = std::sqrt(r.nw2), nf = std::sqrt(r.nf2);
  const A a = nw > eps ? nw : eps, b = nf > eps ? nf : eps;
  const A k = g / (a * b);
  return {k, nw > eps ? k * r.dot / (a * a) : A(0), nf > eps ? k * r.dot / (b * b) : A(0)};
}

// ---- local NCC over a box window ----

// Running box sum with zero padding along one line of len elements spaced by
// stride; out[i] = sum of in[j] for |j - i| <= r. Accumulates in double so a
// long line loses no precision to the add/subtract of the running sum.
template <typename TI, typename TO>
GEMINI_HD void box_line(const TI* in, TO* out, int64_t len, int64_t stride, int64_t r) {
  double acc = 0;
  for (int64_t j = 0; j <= r && j < len; ++j) acc += static_cast<double>(in[j * stride]);
  for (int64_t i = 0; i < len; ++i) {
    out[i * stride] = static_cast<TO>(acc);
    if (i + r + 1 < len) acc += static_cast<double>(in[(i + r + 1) * stride]);
    if (i - r >= 0) acc -= static_cast<double>(in[(i - r) * stride]);
  }
}

// The first box pass reads the two images and sums the five products
// (a, b, aa, bb, ab) into five output fields field_stride apart.
template <typename T, typename A>
GEMINI_HD void box_products_line(const T* a, const T* b, A* out, int64_t field_stride, int64_t len, int64_t stride,
                                 int64_t r) {
  double acc[5] = {0, 0, 0, 0, 0};
  auto add = [&](int64_t j, double sign) {
    const double x = static_cast<double>(load<A>(a[j * stride]));
    const double y = static_cast<double>(load<A>(b[j * stride]));
    acc[0] += sign * x;
    acc[1] += sign * y;
    acc[2] += sign * x * x;
    acc[3] += sign * y * y;
    acc[4] += sign * x * y;
  };
  for (int64_t j = 0; j <= r && j < len; ++j) add(j, 1.0);
  for (int64_t i = 0; i < len; ++i) {
    for (int f = 0; f < 5; ++f) out[f * field_stride + i * stride] = static_cast<A>(acc[f]);
    if (i + r + 1 < len) add(i + r + 1, 1.0);
    if (i - r >= 0) add(i - r, -1.0);
  }
}

// Start of line l of the lines that run along axis k of volumes of extent e.
template <int NDIM>
GEMINI_HD int64_t line_start(int64_t l, const Extent<NDIM>& e, int k) {
  const int64_t len = e.size[k], inner = e.stride[k];
  const int64_t per_volume = e.numel() / len;
  const int64_t vol = l / per_volume, rem = l % per_volume;
  return vol * e.numel() + (rem / inner) * len * inner + rem % inner;
}

template <typename A>
struct NccSums {
  A a, b, aa, bb, ab;
};

template <typename A>
GEMINI_HD NccSums<A> ncc_load(const A* s, int64_t field_stride, int64_t i) {
  return {s[i], s[field_stride + i], s[2 * field_stride + i], s[3 * field_stride + i], s[4 * field_stride + i]};
}

template <typename A>
GEMINI_HD void ncc_store(const NccSums<A>& v, A* s, int64_t field_stride, int64_t i) {
  s[i] = v.a;
  s[field_stride + i] = v.b;
  s[2 * field_stride + i] = v.aa;
  s[3 * field_stride + i] = v.bb;
  s[4 * field_stride + i] = v.ab;
}

// One division per voxel: 1 / n is the same for every voxel, and a loop
// over voxels computes it once (divisions are the slowest vector operation,
// and the backward had nine).
template <typename A>
GEMINI_HD A ncc_value(const NccSums<A>& s, A n, bool squared, A eps) {
  const A inv_n = A(1) / n;
  const A cross = s.ab - s.a * s.b * inv_n;
  const A va = s.aa - s.a * s.a * inv_n, vb = s.bb - s.b * s.b * inv_n;
  const A den = va * vb + eps;
  return squared ? cross * cross / den : cross / std::sqrt(den);
}

// d cc / d (S_a, S_b, S_aa, S_bb, S_ab), times g
template <typename A>
GEMINI_HD NccSums<A> ncc_sum_grads(const NccSums<A>& s, A n, bool squared, A eps, A g) {
  const A inv_n = A(1) / n;
  const A cross = s.ab - s.a * s.b * inv_n;
  const A va = s.aa - s.a * s.a * inv_n, vb = s.bb - s.b * s.b * inv_n;
  const A den = va * vb + eps;
  A gc, q;
  if (squared) {
    const A c = cross / den;
    gc = A(2) * c;
    q = -c * c;
  } else {
    const A rs = A(1) / std::sqrt(den);
    gc = rs;
    q = -A(0.5) * cross * rs * rs * rs;
  }
  gc *= g;
  const A gva = q * vb * g, gvb = q * va * g;
  return {-(gc * s.b + A(2) * gva * s.a) * inv_n, -(gc * s.a + A(2) * gvb * s.b) * inv_n, gva, gvb, gc};
}

GEMINI_ISA_END
}  // namespace gemini
