// CpuBackend: forwards each launcher to the kernels of the chosen
// instruction set (see capability.h).
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "capability.h"

namespace gemini {
namespace isa {

#if !(defined(__x86_64__) || defined(_M_X64))
const Kernels* kernels_cpu_avx2() { return nullptr; }
const Kernels* kernels_cpu_avx512() { return nullptr; }
#endif

namespace {

const Kernels* kernels_of(Capability c) {
  switch (c) {
    case Capability::kAvx512:
      return kernels_cpu_avx512();
    case Capability::kAvx2:
      return kernels_cpu_avx2();
    default:
      return kernels_cpu_default();
  }
}

Capability parse(const std::string& s, const char* source) {
  if (s == "default") return Capability::kDefault;
  if (s == "avx2") return Capability::kAvx2;
  if (s == "avx512") return Capability::kAvx512;
  TORCH_CHECK_VALUE(false, "gemini: ", source, " must be 'default', 'avx2' or 'avx512', got '", s, "'");
}

std::atomic<int> g_active{-1};
std::mutex g_choose;

Capability choose(Capability requested) {
  const Capability best = supported();
  return static_cast<int>(requested) < static_cast<int>(best) ? requested : best;
}

}  // namespace

const char* name(Capability c) {
  switch (c) {
    case Capability::kAvx512:
      return "avx512";
    case Capability::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

Capability supported() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (avx512 && kernels_cpu_avx512()) return Capability::kAvx512;
  if (avx2 && kernels_cpu_avx2()) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

Capability active() {
  int c = g_active.load(std::memory_order_acquire);
  if (c < 0) {
    std::lock_guard<std::mutex> lock(g_choose);
    c = g_active.load(std::memory_order_relaxed);
    if (c < 0) {
      const char* env = std::getenv("GEMINI_CPU_CAPABILITY");
      const Capability want = env && *env ? parse(env, "the environment variable GEMINI_CPU_CAPABILITY")
                                          : Capability::kAvx512;
      c = static_cast<int>(choose(want));
      g_active.store(c, std::memory_order_release);
    }
  }
  return static_cast<Capability>(c);
}

const Kernels& active_kernels() { return *kernels_of(active()); }

std::string set_capability(const std::string& requested) {
  const Capability c = choose(parse(requested, "capability"));
  std::lock_guard<std::mutex> lock(g_choose);
  g_active.store(static_cast<int>(c), std::memory_order_release);
  return name(c);
}

}  // namespace isa

namespace {
std::atomic<int64_t> g_row_kernel_voxels{kRowKernelVoxels};
}  // namespace

int64_t row_kernel_voxels() { return g_row_kernel_voxels.load(std::memory_order_relaxed); }

int64_t set_row_kernel_voxels(int64_t voxels) {
  TORCH_CHECK_VALUE(voxels >= 1 && voxels <= kRowKernelVoxels, "gemini: set_row_kernel_voxels: voxels must be in [1, ",
                    kRowKernelVoxels, "], got ", voxels);
  g_row_kernel_voxels.store(voxels, std::memory_order_relaxed);
  return voxels;
}

template <typename T>
void CpuBackend::warp_forward(const WarpArgs<T>& a, void*) {
  isa::active_kernels().of<T>().warp_forward(a);
}
template <typename T>
void CpuBackend::warp_backward(const WarpArgs<T>& a, void*) {
  isa::active_kernels().of<T>().warp_backward(a);
}
template <typename T>
void CpuBackend::square_forward(const SquareArgs<T>& a, void*) {
  isa::active_kernels().of<T>().square_forward(a);
}
template <typename T>
void CpuBackend::square_backward(const SquareArgs<T>& a, void*) {
  isa::active_kernels().of<T>().square_backward(a);
}
template <typename T>
void CpuBackend::gss_forward(const GssArgs<T>& a, void*) {
  isa::active_kernels().of<T>().gss_forward(a);
}
template <typename T>
void CpuBackend::gss_backward(const GssArgs<T>& a, void*) {
  isa::active_kernels().of<T>().gss_backward(a);
}
template <typename T>
void CpuBackend::ncc_forward(const NccArgs<T>& a, void*) {
  isa::active_kernels().of<T>().ncc_forward(a);
}
template <typename T>
void CpuBackend::ncc_backward(const NccArgs<T>& a, void*) {
  isa::active_kernels().of<T>().ncc_backward(a);
}

#define GEMINI_INSTANTIATE(T)                                              \
  template void CpuBackend::warp_forward<T>(const WarpArgs<T>&, void*);  \
  template void CpuBackend::warp_backward<T>(const WarpArgs<T>&, void*); \
  template void CpuBackend::square_forward<T>(const SquareArgs<T>&, void*); \
  template void CpuBackend::square_backward<T>(const SquareArgs<T>&, void*); \
  template void CpuBackend::gss_forward<T>(const GssArgs<T>&, void*);    \
  template void CpuBackend::gss_backward<T>(const GssArgs<T>&, void*);   \
  template void CpuBackend::ncc_forward<T>(const NccArgs<T>&, void*);    \
  template void CpuBackend::ncc_backward<T>(const NccArgs<T>&, void*);
GEMINI_INSTANTIATE(float)
GEMINI_INSTANTIATE(double)
#undef GEMINI_INSTANTIATE

}  // namespace gemini
