// What the kernels of this folder share: the real CUDA runtime under nvcc,
// or the host shim when a file of csrc/emulated compiles them as C++
// (GEMINI_EMULATE). Kernels live in GEMINI_KERNEL_NS so one library can hold
// the real and the emulated builds side by side.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef GEMINI_EMULATE
#include "gemini/cuda_shim.h"
#define GEMINI_BACKEND EmulatedBackend
#define GEMINI_KERNEL_NS emu
#define GEMINI_LAUNCH(kernel, grid, block, stream, ...) \
  ::gemini::emu::launch(kernel, grid, block, 0, static_cast<cudaStream_t>(stream), __VA_ARGS__)
#else
#include <cuda_runtime.h>

#include "gemini/half_traits.h"
#define GEMINI_BACKEND CudaBackend
#define GEMINI_KERNEL_NS cuda_kernels
#define GEMINI_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#endif

#include "gemini/params.h"
#include "gemini/voxel_ops.h"

namespace gemini {
namespace GEMINI_KERNEL_NS {

constexpr int kThreads = 256;

inline dim3 blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b)));
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

struct AtomicAdd {
  template <typename G>
  __device__ void operator()(G* p, G v) const {
    atomicAdd(p, v);
  }
};

// The kernel's instantiations for every kernel-side type of this build
// (half types only in the real CUDA build: the shim has none).
#ifdef GEMINI_EMULATE
#define GEMINI_FOR_EACH_TYPE(M) M(float) M(double)
#else
#define GEMINI_FOR_EACH_TYPE(M) M(float) M(double) M(__half) M(__nv_bfloat16)
#endif

// Launches kernel<NDIM, T>(args, extent) over the batch's voxels.
#define GEMINI_LAUNCH_VOXELS(kernel, args, stream, what)                                        \
  do {                                                                                          \
    GEMINI_DISPATCH_NDIM((args).geo.ndim, {                                                     \
      const Extent<NDIM> e = make_extent<NDIM>((args).geo.size);                               \
      auto k = kernel<NDIM, T>;                                                                 \
      GEMINI_LAUNCH(k, blocks_for((args).geo.batch * e.numel()), dim3(kThreads), stream, args, e); \
      check_launch(what);                                                                       \
    })                                                                                          \
  } while (0)

// 64-bit grid-stride loop over [0, n)
#define GEMINI_KERNEL_LOOP(i, n)                                                     \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(blockDim.x) * gridDim.x)

}  // namespace GEMINI_KERNEL_NS
}  // namespace gemini
