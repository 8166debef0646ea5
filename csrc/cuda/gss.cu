// Fused GSS similarity: one thread per voxel computes the cosine along
// channels between the bilinearly warped moving features and the fixed
// features, and the mask of valid sample points. The warped C-channel tensor
// is never stored: the backward samples the moving features again and
// scatters their gradient with atomics.
#include "common.cuh"

namespace gemini {
namespace GEMINI_KERNEL_NS {

template <int NDIM, typename T>
__global__ void gss_forward_kernel(GssArgs<T> a, Extent<NDIM> e) {
  GEMINI_KERNEL_LOOP(i, a.geo.batch * e.numel()) { gss_forward_voxel(a, e, voxel_at(e, i)); }
}

template <int NDIM, typename T>
__global__ void gss_backward_kernel(GssArgs<T> a, Extent<NDIM> e) {
  GEMINI_KERNEL_LOOP(i, a.geo.batch * e.numel()) {
    gss_backward_voxel(a, e, voxel_at(e, i), a.grad_moving, static_cast<acc_t<T>*>(nullptr), AtomicAdd());
  }
}

}  // namespace GEMINI_KERNEL_NS

template <typename T>
void GEMINI_BACKEND::gss_forward(const GssArgs<T>& a, void* stream) {
  using namespace GEMINI_KERNEL_NS;
  GEMINI_LAUNCH_VOXELS(gss_forward_kernel, a, stream, "gemini gss_forward");
}

template <typename T>
void GEMINI_BACKEND::gss_backward(const GssArgs<T>& a, void* stream) {
  using namespace GEMINI_KERNEL_NS;
  GEMINI_LAUNCH_VOXELS(gss_backward_kernel, a, stream, "gemini gss_backward");
}

#define GEMINI_INSTANTIATE(T)                                              \
  template void GEMINI_BACKEND::gss_forward<T>(const GssArgs<T>&, void*); \
  template void GEMINI_BACKEND::gss_backward<T>(const GssArgs<T>&, void*);
GEMINI_FOR_EACH_TYPE(GEMINI_INSTANTIATE)
#undef GEMINI_INSTANTIATE

}  // namespace gemini
