// The CUDA kernels of csrc/cuda/ncc.cu, compiled for the host (gemini_ops.emulated).
#define GEMINI_EMULATE 1
#include "../cuda/ncc.cu"
