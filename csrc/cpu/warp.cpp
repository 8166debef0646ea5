// CPU warping: OpenMP over voxels for the gathers; the image gradient is
// scattered without atomics (see parallel.h).
#include "gemini/voxel_ops.h"
#include "parallel.h"

namespace gemini {

template <typename T>
void CpuBackend::warp_forward(const WarpArgs<T>& a, void*) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    cpu::for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { warp_forward_voxel(a, e, x); });
  })
}

template <typename T>
void CpuBackend::warp_backward(const WarpArgs<T>& a, void*) {
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const int64_t items = a.geo.batch * e.numel();
    if (a.grad_ddf)
      cpu::for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { warp_backward_ddf_voxel(a, e, x); });
    if (a.grad_image)
      cpu::scatter_without_atomics(a.grad_image, items * a.geo.channels, items, a.geo.channels, a.num_threads,
                                   [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, acc_t<T>* target) {
                                     cpu::for_voxel_range(e, i0, i1, [&](const Voxel<NDIM>& x) {
                                       warp_backward_image_voxel(a, e, x, c0, c1, target, PlainAdd());
                                     });
                                   });
  })
}

template void CpuBackend::warp_forward<float>(const WarpArgs<float>&, void*);
template void CpuBackend::warp_forward<double>(const WarpArgs<double>&, void*);
template void CpuBackend::warp_backward<float>(const WarpArgs<float>&, void*);
template void CpuBackend::warp_backward<double>(const WarpArgs<double>&, void*);

}  // namespace gemini
