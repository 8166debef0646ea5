// torch.ops.gemini_emulated: the CUDA kernels compiled for the host, on CPU tensors.
#include "ops_impl.h"

TORCH_LIBRARY_IMPL(gemini_emulated, CPU, m) {
  gemini::Ops<gemini::EmulatedBackend, gemini::EmulatedPolicy>::register_impls(m);
}
