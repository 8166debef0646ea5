// Host emulation of the CUDA launch model, so that the kernels of csrc/cuda
// compile as plain C++ and run on the CPU (gemini_ops.emulated).
//
// Blocks run on OpenMP threads, the threads of a block one after another.
// Deliberately absent: __shared__, __syncthreads, warp intrinsics and
// cooperative groups: running threads sequentially cannot emulate them, so a
// kernel that uses them fails to compile here instead of running wrongly.
#pragma once

#ifdef __CUDACC__
#error "cuda_shim.h emulates CUDA for host compilers; nvcc builds the real kernels"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace gemini {
namespace emu {

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// Returns the old value, like CUDA; a CAS loop so several host threads may
// add to one address.
template <typename T>
inline T atomicAdd(T* address, T value) {
  T expected;
  __atomic_load(address, &expected, __ATOMIC_RELAXED);
  T desired;
  do {
    desired = expected + value;
  } while (!__atomic_compare_exchange(address, &expected, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return expected;
}

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t, Args... args) {
  (void)shared_bytes;
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < blocks; ++b) {
    gridDim = grid;
    blockDim = block;
    blockIdx = dim3(unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (int64_t(grid.x) * grid.y)));
    for (unsigned tz = 0; tz < block.z; ++tz)
      for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx) {
          threadIdx = dim3(tx, ty, tz);
          kernel(args...);
        }
  }
}

}  // namespace emu
}  // namespace gemini
