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

// 64-bit grid-stride loop over [0, n)
#define GEMINI_KERNEL_LOOP(i, n)                                                     \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(blockDim.x) * gridDim.x)

}  // namespace GEMINI_KERNEL_NS
}  // namespace gemini
