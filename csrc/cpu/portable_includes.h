// The library headers of the CPU kernels, which each csrc/cpu/isa_*.cpp
// includes before its target pragma: their inline functions (std::sqrt,
// std::min, std::bad_alloc's constructor, ...) are then compiled for the
// baseline CPU in every object. An unoptimised build emits such functions
// out of line in each object and the linker keeps one copy for all; an
// AVX-512 copy would stop the portable kernels on an older CPU (illegal
// instruction). Our own inline code is kept apart by GEMINI_ISA_BEGIN.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
