// The CPU kernels for x86-64 CPUs with AVX-512 (F, BW, DQ, VL): 16 float lanes.
#if defined(__x86_64__) || defined(_M_X64)
#include "portable_includes.h"
#if defined(__clang__)
// clang-format off
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,popcnt,f16c"))), apply_to = function)
// clang-format on
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,popcnt,f16c")
#endif
#define GEMINI_CPU_CAPABILITY cpu_avx512
#define GEMINI_ISA_LEVEL 2
#include "kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
