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
  using A = acc_t<T>;
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const int64_t items = a.geo.batch * e.numel(), C = a.geo.channels;
    const int nt = cpu::threads_for(items, a.num_threads);
    if (a.grad_image && a.grad_ddf && a.mode != kNearest && !cpu::partitions_channels(C, nt)) {
      // threads own whole voxels: one pass for both gradients
      const bool alias = static_cast<void*>(a.grad_ddf) == static_cast<void*>(a.grad_image);
      if (alias) cpu::parallel_for(items * C, a.num_threads, [&](int64_t j) { a.grad_image[j] = A(0); });
      cpu::scatter_without_atomics(a.grad_image, items * C, items, C, a.num_threads,
                                   [&](int64_t i0, int64_t i1, int64_t, int64_t, A* target) {
                                     cpu::for_voxel_range(e, i0, i1, [&](const Voxel<NDIM>& x) {
                                       warp_backward_fused_voxel(a, e, x, target, alias, PlainAdd());
                                     });
                                   });
      return;
    }
    if (a.grad_ddf)
      cpu::for_voxels(a.geo.batch, e, a.num_threads, [&](const Voxel<NDIM>& x) { warp_backward_ddf_voxel(a, e, x); });
    if (a.grad_image)
      cpu::scatter_without_atomics(a.grad_image, items * C, items, C, a.num_threads,
                                   [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, A* target) {
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
