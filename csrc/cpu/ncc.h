// CPU local NCC: OpenMP over lines for the box passes and over voxels for
// the pointwise passes; gemini/ncc_plan.h gives their order.
#pragma once

#include "gemini/ncc_plan.h"
#include "gemini/voxel_ops.h"
#include "parallel.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

template <int NDIM, typename T>
struct CpuNccRunner {
  using A = acc_t<T>;
  const NccGeometry<NDIM, T> g;

  CpuNccRunner(const NccArgs<T>& args, void*) : g(args) {}

  void products(const T* x, const T* y, A* out, int axis) {
    const Extent<NDIM>& e = g.e;
    cpu::parallel_for(
        g.lines(1, axis), g.a.num_threads,
        [&](int64_t l) {
          const int64_t s = line_start(l, e, axis);
          box_products_line(x + s, y + s, out + s, g.fs, e.size[axis], e.stride[axis], g.r);
        },
        e.size[axis]);
  }
  void box(const A* in, A* out, int axis) {
    const Extent<NDIM>& e = g.e;
    cpu::parallel_for(
        g.lines(5, axis), g.a.num_threads,
        [&](int64_t l) {
          const int64_t s = line_start(l, e, axis);
          box_line(in + s, out + s, e.size[axis], e.stride[axis], g.r);
        },
        e.size[axis]);
  }
  void value(const A* sums, T* out) {
    cpu::parallel_for(g.fs, g.a.num_threads,
                      [&](int64_t i) { ncc_value_voxel(sums, out, g.fs, g.n, g.a.squared, g.eps, i); });
  }
  void sum_grads(const A* sums, const T* grad, A* out) {
    cpu::parallel_for(g.fs, g.a.num_threads,
                      [&](int64_t i) { ncc_sum_grads_voxel(sums, grad, out, g.fs, g.n, g.a.squared, g.eps, i); });
  }
  void input_grads(const A* bg) {
    cpu::parallel_for(g.fs, g.a.num_threads, [&](int64_t i) { ncc_input_grads_voxel(bg, g.a, g.fs, i); });
  }
};


template <typename T>
void ncc_forward(const NccArgs<T>& a) {
  ncc_run<CpuNccRunner>(a, nullptr, false);
}

template <typename T>
void ncc_backward(const NccArgs<T>& a) {
  ncc_run<CpuNccRunner>(a, nullptr, true);
}


}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
