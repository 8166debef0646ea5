// CPU local NCC: OpenMP over lines for the box passes and over voxels for
// the pointwise passes; gemini/ncc_plan.h gives their order.
#include "gemini/ncc_plan.h"
#include "gemini/voxel_ops.h"
#include "parallel.h"

namespace gemini {
namespace {

template <int NDIM, typename T>
struct CpuNccRunner : NccGeometry<NDIM, T> {
  using A = acc_t<T>;
  using G = NccGeometry<NDIM, T>;
  using G::a;
  using G::e;
  using G::fs;
  using G::n;
  using G::r;

  CpuNccRunner(const NccArgs<T>& args, void*) : G(args) {}

  void products(const T* x, const T* y, A* out, int axis) {
    cpu::parallel_for(
        this->lines(1, axis), a.num_threads,
        [&](int64_t l) {
          const int64_t s = line_start(l, e, axis);
          box_products_line(x + s, y + s, out + s, fs, e.size[axis], e.stride[axis], r);
        },
        e.size[axis]);
  }
  void box(const A* in, A* out, int axis) {
    cpu::parallel_for(
        this->lines(5, axis), a.num_threads,
        [&](int64_t l) {
          const int64_t s = line_start(l, e, axis);
          box_line(in + s, out + s, e.size[axis], e.stride[axis], r);
        },
        e.size[axis]);
  }
  void value(const A* sums, T* out) {
    const A eps = static_cast<A>(a.eps);
    cpu::parallel_for(fs, a.num_threads, [&](int64_t i) { ncc_value_voxel(sums, out, fs, n, a.squared, eps, i); });
  }
  void sum_grads(const A* sums, const T* grad, A* out) {
    const A eps = static_cast<A>(a.eps);
    cpu::parallel_for(fs, a.num_threads,
                      [&](int64_t i) { ncc_sum_grads_voxel(sums, grad, out, fs, n, a.squared, eps, i); });
  }
  void input_grads(const A* bg) {
    cpu::parallel_for(fs, a.num_threads, [&](int64_t i) { ncc_input_grads_voxel(bg, a, fs, i); });
  }
};

}  // namespace

template <typename T>
void CpuBackend::ncc_forward(const NccArgs<T>& a, void* stream) {
  ncc_run<CpuNccRunner>(a, stream, false);
}

template <typename T>
void CpuBackend::ncc_backward(const NccArgs<T>& a, void* stream) {
  ncc_run<CpuNccRunner>(a, stream, true);
}

template void CpuBackend::ncc_forward<float>(const NccArgs<float>&, void*);
template void CpuBackend::ncc_forward<double>(const NccArgs<double>&, void*);
template void CpuBackend::ncc_backward<float>(const NccArgs<float>&, void*);
template void CpuBackend::ncc_backward<double>(const NccArgs<double>&, void*);

}  // namespace gemini
