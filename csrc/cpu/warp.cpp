// CPU warping: OpenMP over voxels for the gathers; the image gradient is
// scattered without atomics (see parallel.h).
#include "gemini/voxel_ops.h"
#include "parallel.h"

namespace gemini {

template <typename T>
void CpuBackend::warp_forward(const WarpArgs<T>& a, void*) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    cpu::parallel_for(a.geo.batch * e.numel(), a.num_threads, [&](int64_t i) { warp_forward_voxel(a, e, i); });
  })
}

template <typename T>
void CpuBackend::warp_backward(const WarpArgs<T>& a, void*) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const int64_t items = a.geo.batch * e.numel();
    if (a.grad_ddf)
      cpu::parallel_for(items, a.num_threads, [&](int64_t i) { warp_backward_ddf_voxel(a, e, i); });
    if (a.grad_image)
      cpu::scatter_without_atomics(a.grad_image, items * a.geo.channels, items, a.geo.channels, a.num_threads,
                                   [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, acc_t<T>* target) {
                                     for (int64_t i = i0; i < i1; ++i)
                                       warp_backward_image_voxel(a, e, i, c0, c1, target, PlainAdd());
                                   });
  })
}

template void CpuBackend::warp_forward<float>(const WarpArgs<float>&, void*);
template void CpuBackend::warp_forward<double>(const WarpArgs<double>&, void*);
template void CpuBackend::warp_backward<float>(const WarpArgs<float>&, void*);
template void CpuBackend::warp_backward<double>(const WarpArgs<double>&, void*);

}  // namespace gemini
