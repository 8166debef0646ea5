// What one voxel (or one line) contributes to each op, forward and backward.
// The CUDA kernels call these once per thread; the CPU loops once per
// iteration. Scatters go through the caller's add (atomic on CUDA, plain on
// the CPU where the caller keeps writers apart).
#pragma once

#include "gemini/params.h"
#include "gemini/voxel_math.h"

namespace gemini {
GEMINI_ISA_BEGIN

// ---- warp ----------------------------------------------------------------

template <int NDIM, typename T>
GEMINI_HD void warp_forward_voxel(const WarpArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x) {
  using A = acc_t<T>;
  const int64_t n = e.numel(), C = a.geo.channels;
  const int64_t b = x.b, v = x.v;
  A p[NDIM];
  sample_point<NDIM, T, A>(a.ddf, e, x, p);
  const T* img = a.image + b * C * n;
  const T* base = a.base ? a.base + b * C * n : nullptr;
  T* out = a.out + b * C * n;
  if (a.mode == kNearest) {
    const Nearest<NDIM, A> s(p, e, a.padding);
    for (int64_t c = 0; c < C; ++c) {
      const A y = s.template value<T, A>(img + c * n) + (base ? load<A>(base[c * n + v]) : A(0));
      out[c * n + v] = store<T>(y);
    }
  } else {
    const Linear<NDIM, A> s(p, e, a.padding);
    for (int64_t c = 0; c < C; ++c) {
      const A y = s.value(img + c * n) + (base ? load<A>(base[c * n + v]) : A(0));
      out[c * n + v] = store<T>(y);
    }
  }
}

// grad_ddf = grad_ddf_base + sum_c grad_c * d image_c(x + ddf) / d ddf
template <int NDIM, typename T>
GEMINI_HD void warp_backward_ddf_voxel(const WarpArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x) {
  using A = acc_t<T>;
  const int64_t n = e.numel(), C = a.geo.channels;
  const int64_t b = x.b, v = x.v;
  A acc[NDIM];
  for (int k = 0; k < NDIM; ++k)
    acc[k] = a.grad_ddf_base ? load<A>(a.grad_ddf_base[(b * NDIM + k) * n + v]) : A(0);
  if (a.mode != kNearest) {  // nearest sampling is piecewise constant in ddf
    A p[NDIM];
    sample_point<NDIM, T, A>(a.ddf, e, x, p);
    const Linear<NDIM, A> s(p, e, a.padding);
    A dw[Linear<NDIM, A>::kCorners][NDIM];
    s.dweights(dw);
    for (int64_t c = 0; c < C; ++c) {
      const A g = load<A>(a.grad[(b * C + c) * n + v]);
      A dv[NDIM];
      s.value_grad(a.image + (b * C + c) * n, dw, dv);
      for (int k = 0; k < NDIM; ++k) acc[k] += g * dv[k];
    }
  }
  for (int k = 0; k < NDIM; ++k) a.grad_ddf[(b * NDIM + k) * n + v] = store<T>(acc[k]);
}

// target[b, c] += grad[b, c, v] at the corners sampled by voxel i, c in [c0, c1)
template <int NDIM, typename T, typename Add>
GEMINI_HD void warp_backward_image_voxel(const WarpArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x,
                                         int64_t c0, int64_t c1, acc_t<T>* target, const Add& add) {
  using A = acc_t<T>;
  const int64_t n = e.numel(), C = a.geo.channels;
  const int64_t b = x.b, v = x.v;
  A p[NDIM];
  sample_point<NDIM, T, A>(a.ddf, e, x, p);
  if (a.mode == kNearest) {
    const Nearest<NDIM, A> s(p, e, a.padding);
    for (int64_t c = c0; c < c1; ++c)
      s.scatter(target + (b * C + c) * n, load<A>(a.grad[(b * C + c) * n + v]), add);
  } else {
    const Linear<NDIM, A> s(p, e, a.padding);
    for (int64_t c = c0; c < c1; ++c)
      s.scatter(target + (b * C + c) * n, load<A>(a.grad[(b * C + c) * n + v]), add);
  }
}

// Both gradients of voxel i in one pass (bilinear): scatters into target
// and, when ddf_into_target, adds the displacement gradient into target too
// (target then holds C == NDIM channels: a squaring step's backward), else
// writes it to a.grad_ddf. For callers whose threads own whole voxels.
template <int NDIM, typename T, typename Add>
GEMINI_HD void warp_backward_fused_voxel(const WarpArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x,
                                         acc_t<T>* target, bool ddf_into_target, const Add& add) {
  using A = acc_t<T>;
  const int64_t n = e.numel(), C = a.geo.channels;
  const int64_t b = x.b, v = x.v;
  A p[NDIM];
  sample_point<NDIM, T, A>(a.ddf, e, x, p);
  const Linear<NDIM, A> s(p, e, a.padding);
  A dw[Linear<NDIM, A>::kCorners][NDIM];
  s.dweights(dw);
  A acc[NDIM];
  for (int k = 0; k < NDIM; ++k)
    acc[k] = a.grad_ddf_base ? load<A>(a.grad_ddf_base[(b * NDIM + k) * n + v]) : A(0);
  for (int64_t c = 0; c < C; ++c) {
    const A g = load<A>(a.grad[(b * C + c) * n + v]);
    A dv[NDIM];
    s.value_grad(a.image + (b * C + c) * n, dw, dv);
    for (int k = 0; k < NDIM; ++k) acc[k] += g * dv[k];
    s.scatter(target + (b * C + c) * n, g, add);
  }
  for (int k = 0; k < NDIM; ++k) {
    if (ddf_into_target)
      add(target + (b * NDIM + k) * n + v, acc[k]);
    else
      a.grad_ddf[(b * NDIM + k) * n + v] = store<T>(acc[k]);
  }
}

// ---- GSS -----------------------------------------------------------------

// The cosine at voxel x, and whether its sample point counts (*inside).
template <int NDIM, typename T>
GEMINI_HD acc_t<T> gss_voxel_cosine(const GssArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x, bool* inside) {
  using A = acc_t<T>;
  const int64_t n = e.numel(), C = a.geo.channels;
  A p[NDIM];
  sample_point<NDIM, T, A>(a.ddf, e, x, p);
  const Linear<NDIM, A> s(p, e, kZeros);
  *inside = point_inside(p, e);
  return gss_cosine(gss_sums(s, a.moving + x.b * C * n, a.fixed + x.b * C * n, C, n, x.v), static_cast<A>(a.eps));
}

template <int NDIM, typename T>
GEMINI_HD void gss_forward_voxel(const GssArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x) {
  using A = acc_t<T>;
  const int64_t i = x.flat(e.numel());
  bool inside;
  a.cos[i] = store<T>(gss_voxel_cosine(a, e, x, &inside));
  a.mask[i] = store<T>(inside ? A(1) : A(0));
}

// Writes grad_fixed and grad_ddf of voxel i; scatters grad_moving into
// target when it is not null; stores (kw1, kw2, 1 if active) in coeffs[3]
// when not null, for a later scatter pass.
template <int NDIM, typename T, typename Add>
GEMINI_HD void gss_backward_voxel(const GssArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x,
                                  acc_t<T>* target, acc_t<T>* coeffs, const Add& add) {
  using A = acc_t<T>;
  const int64_t n = e.numel(), C = a.geo.channels;
  const int64_t b = x.b, v = x.v, i = x.flat(n);
  A p[NDIM];
  sample_point<NDIM, T, A>(a.ddf, e, x, p);
  const A g = !a.mean ? load<A>(a.grad[i]) : point_inside(p, e) ? load<A>(a.grad[0]) : A(0);
  A gd[NDIM];
  for (int k = 0; k < NDIM; ++k) gd[k] = A(0);
  if (coeffs) coeffs[0] = coeffs[1] = coeffs[2] = A(0);
  if (g == A(0)) {  // masked-out voxel: nothing flows
    if (a.grad_fixed)
      for (int64_t c = 0; c < C; ++c) a.grad_fixed[(b * C + c) * n + v] = store<T>(A(0));
  } else {
    const Linear<NDIM, A> s(p, e, kZeros);
    A dwt[Linear<NDIM, A>::kCorners][NDIM];
    s.dweights(dwt);
    const T* fm = a.moving + b * C * n;
    const T* ff = a.fixed + b * C * n;
    const GssCoeffs<A> k = gss_coeffs(gss_sums(s, fm, ff, C, n, v), g, static_cast<A>(a.eps));
    const A sm = static_cast<A>(a.scale_moving), sf = static_cast<A>(a.scale_fixed);
    if (coeffs) {
      coeffs[0] = k.kw1;
      coeffs[1] = k.kw2;
      coeffs[2] = A(1);
    }
    for (int64_t c = 0; c < C; ++c) {
      A dv[NDIM];
      const A w = s.value_grad(fm + c * n, dwt, dv);
      const A f = load<A>(ff[c * n + v]);
      const A dw = k.kw1 * f - k.kw2 * w;
      if (a.grad_fixed) a.grad_fixed[(b * C + c) * n + v] = store<T>(sf * (k.kw1 * w - k.kf2 * f));
      if (target) s.scatter(target + (b * C + c) * n, sm * dw, add);
      for (int d = 0; d < NDIM; ++d) gd[d] += dw * dv[d];
    }
  }
  if (a.grad_ddf) {
    const A sd = static_cast<A>(a.scale_ddf);
    for (int d = 0; d < NDIM; ++d) a.grad_ddf[(b * NDIM + d) * n + v] = store<T>(sd * gd[d]);
  }
}

// The moving-feature scatter of voxel i from stored coefficients, channels [c0, c1).
template <int NDIM, typename T, typename Add>
GEMINI_HD void gss_scatter_voxel(const GssArgs<T>& a, const Extent<NDIM>& e, const Voxel<NDIM>& x,
                                 const acc_t<T>* coeffs, int64_t c0, int64_t c1, acc_t<T>* target, const Add& add) {
  using A = acc_t<T>;
  if (coeffs[2] == A(0)) return;
  const int64_t n = e.numel(), C = a.geo.channels;
  const int64_t b = x.b, v = x.v;
  A p[NDIM];
  sample_point<NDIM, T, A>(a.ddf, e, x, p);
  const Linear<NDIM, A> s(p, e, kZeros);
  const T* fm = a.moving + b * C * n;
  const T* ff = a.fixed + b * C * n;
  const A sm = static_cast<A>(a.scale_moving);
  for (int64_t c = c0; c < c1; ++c) {
    const A dw = coeffs[0] * load<A>(ff[c * n + v]) - coeffs[1] * s.value(fm + c * n);
    s.scatter(target + (b * C + c) * n, sm * dw, add);
  }
}

// ---- local NCC: pointwise passes over fs = B * C * nvox voxels -------------

template <typename T>
GEMINI_HD void ncc_value_voxel(const acc_t<T>* sums, T* out, int64_t fs, acc_t<T> n, bool squared, acc_t<T> eps,
                               int64_t i) {
  out[i] = store<T>(ncc_value(ncc_load(sums, fs, i), n, squared, eps));
}

template <typename T>
GEMINI_HD void ncc_sum_grads_voxel(const acc_t<T>* sums, const T* grad, acc_t<T>* out, int64_t fs, acc_t<T> n,
                                   bool squared, acc_t<T> eps, int64_t i) {
  using A = acc_t<T>;
  ncc_store(ncc_sum_grads(ncc_load(sums, fs, i), n, squared, eps, load<A>(grad[i])), out, fs, i);
}

// d loss / d a = G_a + 2 a G_aa + b G_ab (G: box sums of d loss / d sums)
template <typename T>
GEMINI_HD void ncc_input_grads_voxel(const acc_t<T>* bg, const NccArgs<T>& a, int64_t fs, int64_t i) {
  using A = acc_t<T>;
  const NccSums<A> g = ncc_load(bg, fs, i);
  const A x = load<A>(a.a[i]), y = load<A>(a.b[i]);
  if (a.grad_a) a.grad_a[i] = store<T>(g.a + A(2) * x * g.aa + y * g.ab);
  if (a.grad_b) a.grad_b[i] = store<T>(g.b + A(2) * y * g.bb + x * g.ab);
}

GEMINI_ISA_END
}  // namespace gemini
