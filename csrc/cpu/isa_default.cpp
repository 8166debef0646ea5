// The CPU kernels for any x86-64 (or other) CPU: portable C++, one voxel at a time.
#define GEMINI_CPU_CAPABILITY cpu_default
#define GEMINI_ISA_LEVEL 0
#include "kernels.h"
