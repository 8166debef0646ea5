// Kernel-side half types accumulate in float. Included by the CUDA kernels
// and the CUDA glue (both see the same specialisations).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemini/params.h"

namespace gemini {
template <>
struct Acc<__half> {
  using type = float;
};
template <>
struct Acc<__nv_bfloat16> {
  using type = float;
};
template <>
struct Convert<__half> {
  template <typename A>
  GEMINI_HD static A to(__half x) {
    return static_cast<A>(__half2float(x));
  }
  template <typename A>
  GEMINI_HD static __half from(A x) {
    return __float2half(static_cast<float>(x));
  }
};
template <>
struct Convert<__nv_bfloat16> {
  template <typename A>
  GEMINI_HD static A to(__nv_bfloat16 x) {
    return static_cast<A>(__bfloat162float(x));
  }
  template <typename A>
  GEMINI_HD static __nv_bfloat16 from(A x) {
    return __float2bfloat16(static_cast<float>(x));
  }
};
}  // namespace gemini
