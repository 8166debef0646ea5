// CPU GSS: the forward and the gather half of the backward run over voxels;
// the moving-feature gradient is then scattered from three stored
// coefficients per voxel, without atomics (see parallel.h).
#pragma once

#include "gemini/voxel_ops.h"
#include "parallel.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

template <typename T>
void gss_forward(const GssArgs<T>& a) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    cpu::for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { gss_forward_voxel(a, e, x); });
  })
}

template <typename T>
void gss_backward(const GssArgs<T>& a) {
  using A = acc_t<T>;
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const int64_t items = a.geo.batch * e.numel();
    A* coeffs = a.grad_moving ? a.scratch : nullptr;
    const int64_t n = e.numel();
    cpu::for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) {
      gss_backward_voxel(a, e, x, static_cast<A*>(nullptr), coeffs ? coeffs + 3 * x.flat(n) : nullptr, PlainAdd());
    });
    if (a.grad_moving)
      cpu::scatter_without_atomics(a.grad_moving, items * a.geo.channels, items, a.geo.channels, a.num_threads,
                                   [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, A* target) {
                                     cpu::for_voxel_range(e, i0, i1, [&](const Voxel<NDIM>& x) {
                                       gss_scatter_voxel(a, e, x, coeffs + 3 * x.flat(n), c0, c1, target, PlainAdd());
                                     });
                                   });
  })
}


}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
