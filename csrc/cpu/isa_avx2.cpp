// The CPU kernels for x86-64 CPUs with AVX2 and FMA: 8 float lanes.
#if defined(__x86_64__) || defined(_M_X64)
#include "portable_includes.h"
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,popcnt,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,bmi,bmi2,popcnt,f16c")
#endif
#define GEMINI_CPU_CAPABILITY cpu_avx2
#define GEMINI_ISA_LEVEL 1
#include "kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
