// CPU GSS: the forward and the gather half of the backward run over voxels;
// the moving-feature gradient is then scattered from three stored
// coefficients per voxel, without atomics (see parallel.h).
#include "gemini/voxel_ops.h"
#include "parallel.h"

namespace gemini {

template <typename T>
void CpuBackend::gss_forward(const GssArgs<T>& a, void*) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    cpu::parallel_for(a.geo.batch * e.numel(), a.num_threads, [&](int64_t i) { gss_forward_voxel(a, e, i); });
  })
}

template <typename T>
void CpuBackend::gss_backward(const GssArgs<T>& a, void*) {
  using A = acc_t<T>;
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const int64_t items = a.geo.batch * e.numel();
    A* coeffs = a.grad_moving ? a.scratch : nullptr;
    cpu::parallel_for(items, a.num_threads, [&](int64_t i) {
      gss_backward_voxel(a, e, i, static_cast<A*>(nullptr), coeffs ? coeffs + 3 * i : nullptr, PlainAdd());
    });
    if (a.grad_moving)
      cpu::scatter_without_atomics(a.grad_moving, items * a.geo.channels, items, a.geo.channels, a.num_threads,
                                   [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, A* target) {
                                     for (int64_t i = i0; i < i1; ++i)
                                       gss_scatter_voxel(a, e, i, coeffs + 3 * i, c0, c1, target, PlainAdd());
                                   });
  })
}

template void CpuBackend::gss_forward<float>(const GssArgs<float>&, void*);
template void CpuBackend::gss_forward<double>(const GssArgs<double>&, void*);
template void CpuBackend::gss_backward<float>(const GssArgs<float>&, void*);
template void CpuBackend::gss_backward<double>(const GssArgs<double>&, void*);

}  // namespace gemini
