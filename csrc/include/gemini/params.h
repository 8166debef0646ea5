// Torch-free arguments of the kernel launchers, and the launcher interface
// that each backend (CPU loops, CUDA kernels, emulated CUDA kernels) provides.
#pragma once

#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define GEMINI_HD __host__ __device__ __forceinline__
#else
#define GEMINI_HD inline
#endif

// The CPU kernels are compiled once per instruction set (csrc/cpu/isa_*.cpp
// define GEMINI_CPU_CAPABILITY); the per-voxel code then lives in an inline
// namespace of that name, so the copies built with different -m flags never
// merge at link time (one definition each). Elsewhere these are empty.
#ifdef GEMINI_CPU_CAPABILITY
#define GEMINI_ISA_BEGIN inline namespace GEMINI_CPU_CAPABILITY {
#define GEMINI_ISA_END }
#else
#define GEMINI_ISA_BEGIN
#define GEMINI_ISA_END
#endif

namespace gemini {

// The CPU row kernels index a plane with int32 offsets (corners reach one
// plane past each side): planes of this many voxels or more take the
// per-voxel code.
constexpr int64_t kRowKernelVoxels = int64_t(1) << 29;
// The limit in force (csrc/cpu/dispatch.cpp): kRowKernelVoxels unless
// torch.ops.gemini.set_row_kernel_voxels lowered it, so that tests run the
// per-voxel code on small planes (it otherwise needs 2 GiB a channel).
int64_t row_kernel_voxels();

// Loads and stores between a tensor's element type and the accumulation
// type; explicit because torch builds CUDA code without the implicit half
// conversions (half_traits.h specialises them). Code, so in the ISA
// namespace like the per-voxel code: an out-of-line copy (a -O0 build) from
// the AVX-512 object must not serve the portable one.
GEMINI_ISA_BEGIN
template <typename T>
struct Convert {
  template <typename A>
  GEMINI_HD static A to(T x) {
    return static_cast<A>(x);
  }
  template <typename A>
  GEMINI_HD static T from(A x) {
    return static_cast<T>(x);
  }
};
template <typename A, typename T>
GEMINI_HD A load(T x) {
  return Convert<T>::template to<A>(x);
}
template <typename T, typename A>
GEMINI_HD T store(A x) {
  return Convert<T>::from(x);
}
GEMINI_ISA_END

// Accumulation type: float for half types (specialised in half_traits.h).
template <typename T>
struct Acc {
  using type = T;
};
template <typename T>
using acc_t = typename Acc<T>::type;

// Kernel-side type of a host scalar type (the CUDA glue maps torch's half types).
template <typename T>
struct KernelType {
  using type = T;
};

struct Geometry {
  int64_t batch;
  int64_t channels;
  int ndim;          // 2 or 3
  int64_t size[3];   // spatial sizes in tensor order; the first ndim are used
  int64_t nvox() const {
    int64_t n = 1;
    for (int k = 0; k < ndim; ++k) n *= size[k];
    return n;
  }
};

template <typename T>
struct WarpArgs {
  Geometry geo;              // channels: of image
  int mode = 0, padding = 0;
  const T* image = nullptr;  // (B, C, *S)
  const T* ddf = nullptr;    // (B, ndim, *S)
  T* out = nullptr;
  // backward: grad_ddf = d/d ddf (written first, may be null), then
  // grad_image += scatter (accumulated, may be null)
  const T* grad = nullptr;
  acc_t<T>* grad_image = nullptr;
  T* grad_ddf = nullptr;
  int num_threads = 1;       // CPU backends
  // Set by square_as_warp only (a squaring step): out = base + warp(...);
  // grad_ddf = grad_ddf_base + d/d ddf with grad_image aliasing grad_ddf.
  const T* base = nullptr;
  const T* grad_ddf_base = nullptr;
};

// One squaring step of scaling-and-squaring velocity integration on a field
// u (B, ndim, *S): forward out = u + u o (id + u); backward
// grad_field = grad + (d(u o (id + u))/du)^T grad. Always the working
// (accumulation) type.
template <typename T>
struct SquareArgs {
  Geometry geo;               // channels == ndim
  int padding = 0;
  // CPU, 3D float below kRowKernelVoxels: every field is (B, *S, 4), the 3
  // components of a voxel and a zero (csrc/cpu/square.h), and the backward
  // takes grad_field zeroed and leaves grad zeroed (the next step's
  // grad_field: no fill pass per step). Set by the host loops of ops_impl.h
  // only where their Policy says so.
  bool interleaved = false;
  const T* field = nullptr;   // u
  T* out = nullptr;           // forward
  T* grad = nullptr;          // backward: d loss / d out (only read unless interleaved)
  T* grad_field = nullptr;    // backward: d loss / d u, written
  int num_threads = 1;        // CPU backends
};

// A squaring step is a warp of the field by itself plus the identity term,
// so every backend runs it on its warp kernels; this is the one place that
// says how (the base pointers, and the backward's gradient buffer holding
// the displacement gradient first and then taking the scatter).
GEMINI_ISA_BEGIN
template <typename T>
GEMINI_HD WarpArgs<T> square_as_warp(const SquareArgs<T>& s) {
  static_assert(std::is_same<acc_t<T>, T>::value, "squaring steps run in the accumulation type");
  WarpArgs<T> a;
  a.geo = s.geo;
  a.mode = 0;  // bilinear
  a.padding = s.padding;
  a.image = s.field;
  a.ddf = s.field;
  a.num_threads = s.num_threads;
  if (s.out) {
    a.base = s.field;
    a.out = s.out;
  } else {
    a.grad = s.grad;
    a.grad_ddf_base = s.grad;
    a.grad_ddf = s.grad_field;
    a.grad_image = s.grad_field;
  }
  return a;
}
GEMINI_ISA_END

template <typename T>
struct GssArgs {
  Geometry geo;              // channels: of the features
  double eps = 1e-8;
  const T* moving = nullptr;  // (B, C, *S)
  const T* fixed = nullptr;   // (B, C, *S)
  const T* ddf = nullptr;     // (B, ndim, *S)
  T* cos = nullptr;           // forward (B, 1, *S); with mean one value: the masked mean
  T* mask = nullptr;          // forward (B, 1, *S); with mean one value: the mask's sum
  const T* grad = nullptr;    // backward: d loss / d cos (B, 1, *S); with mean one value, for each voxel in the mask
  // The mean over the voxels whose sample point counts (point_inside):
  // sum(cos * mask) / max(sum(mask), 1e-6). Forward: CPU only (kFusedMean).
  bool mean = false;
  double scale_moving = 1, scale_fixed = 1, scale_ddf = 1;
  acc_t<T>* grad_moving = nullptr;  // may be null; zeroed on entry unless kGssWritesMovingGrad (ops_impl.h)
  T* grad_fixed = nullptr;          // written, may be null
  T* grad_ddf = nullptr;            // written, may be null
  int num_threads = 1;
};

template <typename T>
struct NccArgs {
  Geometry geo;
  int window = 9;
  bool squared = true;
  double eps = 1e-5;
  const T* a = nullptr;       // (B, C, *S)
  const T* b = nullptr;
  T* out = nullptr;           // forward (B, C, *S), or one value with mean
  const T* grad = nullptr;    // backward (B, C, *S), or one value with mean
  // The fused CPU kernels only: out is the mean of the values over every
  // voxel, and grad the gradient of that mean.
  bool mean = false;
  T* grad_a = nullptr;        // may be null
  T* grad_b = nullptr;        // may be null
  // The box sums of a, b, aa, bb, ab, (5, B, C, *S): the forward keeps them
  // in kept_sums if set; the backward reads them from sums (autograd may run
  // it again on the same saved sums).
  acc_t<T>* kept_sums = nullptr;
  const acc_t<T>* sums = nullptr;
  acc_t<T>* buf0 = nullptr;   // scratch, 5 * B * C * nvox each (CUDA and emulated)
  acc_t<T>* buf1 = nullptr;
  int num_threads = 1;
};

// Each backend defines these static members (stream: a cudaStream_t, or null).
#define GEMINI_DECLARE_BACKEND(NAME)                                   \
  struct NAME {                                                        \
    template <typename T>                                              \
    static void warp_forward(const WarpArgs<T>& args, void* stream);   \
    template <typename T>                                              \
    static void warp_backward(const WarpArgs<T>& args, void* stream);  \
    template <typename T>                                              \
    static void square_forward(const SquareArgs<T>& args, void* stream); \
    template <typename T>                                              \
    static void square_backward(const SquareArgs<T>& args, void* stream); \
    template <typename T>                                              \
    static void gss_forward(const GssArgs<T>& args, void* stream);     \
    template <typename T>                                              \
    static void gss_backward(const GssArgs<T>& args, void* stream);    \
    template <typename T>                                              \
    static void ncc_forward(const NccArgs<T>& args, void* stream);     \
    template <typename T>                                              \
    static void ncc_backward(const NccArgs<T>& args, void* stream);    \
  };

GEMINI_DECLARE_BACKEND(CpuBackend)
GEMINI_DECLARE_BACKEND(CudaBackend)
GEMINI_DECLARE_BACKEND(EmulatedBackend)

#undef GEMINI_DECLARE_BACKEND

}  // namespace gemini
