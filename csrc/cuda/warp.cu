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
  GEMINI_LAUNCH_VOXELS(warp_forward_kernel, a, stream, "gemini warp_forward");
}

// The displacement gradient is written before the scatter, which may add
// into the same buffer (the backward of a squaring step).
template <typename T>
void GEMINI_BACKEND::warp_backward(const WarpArgs<T>& a, void* stream) {
  using namespace GEMINI_KERNEL_NS;
  if (a.grad_ddf) GEMINI_LAUNCH_VOXELS(warp_backward_ddf_kernel, a, stream, "gemini warp_backward (ddf)");
  if (a.grad_image) GEMINI_LAUNCH_VOXELS(warp_backward_image_kernel, a, stream, "gemini warp_backward (image)");
}

template <typename T>
void GEMINI_BACKEND::square_forward(const SquareArgs<T>& a, void* stream) {
  warp_forward(square_as_warp(a), stream);
}
template <typename T>
void GEMINI_BACKEND::square_backward(const SquareArgs<T>& a, void* stream) {
  warp_backward(square_as_warp(a), stream);
}

#define GEMINI_INSTANTIATE(T)                                                 \
  template void GEMINI_BACKEND::warp_forward<T>(const WarpArgs<T>&, void*); \
  template void GEMINI_BACKEND::warp_backward<T>(const WarpArgs<T>&, void*);
GEMINI_FOR_EACH_TYPE(GEMINI_INSTANTIATE)
#undef GEMINI_INSTANTIATE

// squaring steps run in the accumulation type only (float, double)
template void GEMINI_BACKEND::square_forward<float>(const SquareArgs<float>&, void*);
template void GEMINI_BACKEND::square_backward<float>(const SquareArgs<float>&, void*);
template void GEMINI_BACKEND::square_forward<double>(const SquareArgs<double>&, void*);
template void GEMINI_BACKEND::square_backward<double>(const SquareArgs<double>&, void*);

}  // namespace gemini
