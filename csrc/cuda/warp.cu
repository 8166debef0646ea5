// Warping kernels: one thread per output voxel (grid-stride, 64-bit indices).
// The forward gathers; the backward gathers the displacement gradient, then
// scatters the image gradient with atomics.
#include "common.cuh"

namespace gemini {
namespace GEMINI_KERNEL_NS {

template <int NDIM, typename T>
__global__ void warp_forward_kernel(WarpArgs<T> a, Extent<NDIM> e) {
  GEMINI_KERNEL_LOOP(i, a.geo.batch * e.numel()) { warp_forward_voxel(a, e, voxel_at(e, i)); }
}

template <int NDIM, typename T>
__global__ void warp_backward_ddf_kernel(WarpArgs<T> a, Extent<NDIM> e) {
  GEMINI_KERNEL_LOOP(i, a.geo.batch * e.numel()) { warp_backward_ddf_voxel(a, e, voxel_at(e, i)); }
}

template <int NDIM, typename T>
__global__ void warp_backward_image_kernel(WarpArgs<T> a, Extent<NDIM> e) {
  GEMINI_KERNEL_LOOP(i, a.geo.batch * e.numel()) {
    warp_backward_image_voxel(a, e, voxel_at(e, i), 0, a.geo.channels, a.grad_image, AtomicAdd());
  }
}

}  // namespace GEMINI_KERNEL_NS

template <typename T>
void GEMINI_BACKEND::warp_forward(const WarpArgs<T>& a, void* stream) {
  using namespace GEMINI_KERNEL_NS;
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    auto kernel = warp_forward_kernel<NDIM, T>;
    GEMINI_LAUNCH(kernel, blocks_for(a.geo.batch * e.numel()), dim3(kThreads), stream, a, e);
    check_launch("gemini warp_forward");
  })
}

template <typename T>
void GEMINI_BACKEND::warp_backward(const WarpArgs<T>& a, void* stream) {
  using namespace GEMINI_KERNEL_NS;
  GEMINI_DISPATCH_NDIM(a.geo.ndim, {
    const Extent<NDIM> e = make_extent<NDIM>(a.geo.size);
    const dim3 grid = blocks_for(a.geo.batch * e.numel());
    // the displacement gradient is written before the scatter, which may add
    // into the same buffer (the backward of a squaring step)
    if (a.grad_ddf) {
      auto kernel = warp_backward_ddf_kernel<NDIM, T>;
      GEMINI_LAUNCH(kernel, grid, dim3(kThreads), stream, a, e);
      check_launch("gemini warp_backward (ddf)");
    }
    if (a.grad_image) {
      auto kernel = warp_backward_image_kernel<NDIM, T>;
      GEMINI_LAUNCH(kernel, grid, dim3(kThreads), stream, a, e);
      check_launch("gemini warp_backward (image)");
    }
  })
}

#define GEMINI_INSTANTIATE(T)                                                 \
  template void GEMINI_BACKEND::warp_forward<T>(const WarpArgs<T>&, void*); \
  template void GEMINI_BACKEND::warp_backward<T>(const WarpArgs<T>&, void*);
GEMINI_INSTANTIATE(float)
GEMINI_INSTANTIATE(double)
#ifndef GEMINI_EMULATE
GEMINI_INSTANTIATE(__half)
GEMINI_INSTANTIATE(__nv_bfloat16)
#endif
#undef GEMINI_INSTANTIATE

}  // namespace gemini
