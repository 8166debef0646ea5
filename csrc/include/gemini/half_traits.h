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
}  // namespace gemini
