// Runtime choice of the CPU kernels' instruction set, like ATen's
// CPU_CAPABILITY: csrc/cpu/isa_*.cpp compile the same kernel sources once
// per instruction set; at the first call the best one this CPU supports is
// chosen, and the environment variable GEMINI_CPU_CAPABILITY=default|avx2|avx512
// caps the choice (a path the CPU lacks falls back to the next lower one).
#pragma once

#include <string>

#include "gemini/params.h"

namespace gemini {
namespace isa {

enum class Capability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

template <typename T>
struct KernelsOf {
  void (*warp_forward)(const WarpArgs<T>&);
  void (*warp_backward)(const WarpArgs<T>&);
  void (*square_forward)(const SquareArgs<T>&);
  void (*square_backward)(const SquareArgs<T>&);
  void (*gss_forward)(const GssArgs<T>&);
  void (*gss_backward)(const GssArgs<T>&);
  void (*ncc_forward)(const NccArgs<T>&);
  void (*ncc_backward)(const NccArgs<T>&);
};

struct Kernels {
  KernelsOf<float> f32;
  KernelsOf<double> f64;
  template <typename T>
  const KernelsOf<T>& of() const {
    if constexpr (sizeof(T) == 4)
      return f32;
    else
      return f64;
  }
};

// one per csrc/cpu/isa_*.cpp (absent ones are null: not built for this target)
const Kernels* kernels_cpu_default();
const Kernels* kernels_cpu_avx2();
const Kernels* kernels_cpu_avx512();

const char* name(Capability c);
// The best path this CPU and build support.
Capability supported();
// The path in use (chosen at the first call from supported() and the environment).
Capability active();
const Kernels& active_kernels();
// Forces a path by name ("default", "avx2", "avx512"), capped by supported();
// returns the path now in use. For tests and benchmarks of every path.
std::string set_capability(const std::string& requested);

}  // namespace isa

// Sets row_kernel_voxels() (gemini/params.h), 1 to kRowKernelVoxels, and
// returns it. For tests of the per-voxel code.
int64_t set_row_kernel_voxels(int64_t voxels);

}  // namespace gemini
