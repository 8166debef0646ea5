// Op schemas of both namespaces, and the CPU kernels of torch.ops.gemini.
#include "cpu/capability.h"
#include "ops_impl.h"

namespace gemini {

void define_schemas(torch::Library& m) {
  m.def("warp(Tensor image, Tensor ddf, str mode, str padding_mode) -> Tensor");
  m.def(
      "warp_backward(Tensor grad, Tensor image, Tensor ddf, str mode, str padding_mode, bool image_grad, "
      "bool ddf_grad) -> (Tensor, Tensor)");
  m.def("integrate_velocity(Tensor velocity, int num_steps, str padding_mode) -> Tensor");
  m.def(
      "integrate_velocity_with_fields(Tensor velocity, int num_steps, int every, str padding_mode) -> "
      "(Tensor, Tensor)");
  m.def(
      "integrate_velocity_backward(Tensor grad, Tensor velocity, Tensor fields, int num_steps, int every, "
      "str padding_mode) -> Tensor");
  m.def(
      "gss(Tensor feat_moving, Tensor feat_fixed, Tensor ddf, float eps, float scale_moving, float scale_fixed, "
      "float scale_ddf, bool mean) -> (Tensor, Tensor)");
  m.def(
      "gss_backward(Tensor grad, Tensor feat_moving, Tensor feat_fixed, Tensor ddf, float eps, float scale_moving, "
      "float scale_fixed, float scale_ddf) -> (Tensor, Tensor, Tensor)");
  m.def(
      "local_ncc(Tensor a, Tensor b, int window, bool squared, float eps, bool keep_sums, bool mean) -> "
      "(Tensor, Tensor)");
  m.def(
      "local_ncc_backward(Tensor grad, Tensor a, Tensor b, Tensor sums, int window, bool squared, float eps, "
      "bool a_grad, bool b_grad) -> (Tensor, Tensor)");
}

}  // namespace gemini

TORCH_LIBRARY(gemini, m) {
  gemini::define_schemas(m);
  m.def("compiled_with_cuda() -> bool", []() {
#ifdef GEMINI_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  // the instruction set of the CPU kernels (see csrc/cpu/capability.h)
  m.def("cpu_capability() -> str", []() { return std::string(gemini::isa::name(gemini::isa::active())); });
  m.def("set_cpu_capability(str capability) -> str",
        [](const std::string& c) { return gemini::isa::set_capability(c); });
  // planes of this many voxels or more take the per-voxel CPU code (see
  // gemini/params.h); lowered by tests only
  m.def("row_kernel_voxels() -> int", []() { return gemini::row_kernel_voxels(); });
  m.def("set_row_kernel_voxels(int voxels) -> int",
        [](int64_t voxels) { return gemini::set_row_kernel_voxels(voxels); });
  // the host pages kept for reuse (see gemini/host_pages.h): unmapped, and their bytes
  m.def("empty_cache() -> int", []() { return static_cast<int64_t>(gemini::release_cached_host_pages()); });
  m.def("cached_bytes() -> int", []() { return static_cast<int64_t>(gemini::cached_host_page_bytes()); });
}

TORCH_LIBRARY(gemini_emulated, m) { gemini::define_schemas(m); }

TORCH_LIBRARY_IMPL(gemini, CPU, m) { gemini::Ops<gemini::CpuBackend, gemini::HostPolicy>::register_impls(m); }
