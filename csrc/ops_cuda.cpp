// CUDA kernels of torch.ops.gemini: the torch glue on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "gemini/half_traits.h"

// before ops_impl.h, whose dtype dispatch names these types
namespace gemini {
template <>
struct KernelType<c10::Half> {
  using type = __half;
};
template <>
struct KernelType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
}  // namespace gemini

#include "ops_impl.h"

namespace gemini {

struct CudaPolicy {
  struct Guard {
    explicit Guard(const at::Tensor& t) : guard(t.device()) {}
    c10::cuda::CUDAGuard guard;
  };
  static void* stream(const at::Tensor& t) { return at::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& o) { return at::empty(sizes, o); }
  static at::Tensor zeros(at::IntArrayRef sizes, const at::TensorOptions& o) { return at::zeros(sizes, o); }
  static constexpr bool kHalfTypes = true;
  static constexpr bool kGssWritesMovingGrad = false;
  static constexpr bool kNccBuffers = true;
  static constexpr bool kInterleavedLevels = false;
  static constexpr bool kFusedMean = false;
};

}  // namespace gemini

TORCH_LIBRARY_IMPL(gemini, CUDA, m) { gemini::Ops<gemini::CudaBackend, gemini::CudaPolicy>::register_impls(m); }
