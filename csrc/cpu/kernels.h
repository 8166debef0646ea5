// The CPU kernels of one instruction set: included by csrc/cpu/isa_*.cpp
// after they set the target and define GEMINI_CPU_CAPABILITY (the inline
// namespace that keeps each set's copies apart) and GEMINI_ISA_LEVEL
// (0 portable, 1 AVX2 + FMA, 2 AVX-512). The library headers the kernels
// use are included before the target (portable_includes.h), so no inline
// function that the objects share is compiled with wider instructions than
// the CPU may have (tests/ops/test_portable_objects.py).
#pragma once

#include "capability.h"
#include "gss.h"
#include "ncc.h"
#include "square.h"

#define GEMINI_CAT2(a, b) a##b
#define GEMINI_CAT(a, b) GEMINI_CAT2(a, b)

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

template <typename T>
constexpr isa::KernelsOf<T> table_of() {
  return {&warp_forward<T>,   &warp_backward<T>, &square_forward<T>, &square_backward<T>,
          &gss_forward<T>,    &gss_backward<T>,  &ncc_forward<T>,    &ncc_backward<T>};
}

}  // namespace cpu
GEMINI_ISA_END

const isa::Kernels* isa::GEMINI_CAT(kernels_, GEMINI_CPU_CAPABILITY)() {
  static const Kernels k{cpu::table_of<float>(), cpu::table_of<double>()};
  return &k;
}

}  // namespace gemini
