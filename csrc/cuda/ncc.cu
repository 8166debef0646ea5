// Local NCC by running box sums: one thread per line for the box passes, one
// per voxel for the pointwise passes; gemini/ncc_plan.h gives their order.
#include "common.cuh"
#include "gemini/ncc_plan.h"

namespace gemini {
namespace GEMINI_KERNEL_NS {

template <int NDIM, typename T>
__global__ void ncc_products_kernel(const T* a, const T* b, acc_t<T>* out, Extent<NDIM> e, int64_t fs, int axis,
                                    int64_t r) {
  GEMINI_KERNEL_LOOP(l, fs / e.size[axis]) {
    const int64_t s = line_start(l, e, axis);
    box_products_line(a + s, b + s, out + s, fs, e.size[axis], e.stride[axis], r);
  }
}

template <int NDIM, typename A>
__global__ void ncc_box_kernel(const A* in, A* out, Extent<NDIM> e, int64_t lines, int axis, int64_t r) {
  GEMINI_KERNEL_LOOP(l, lines) {
    const int64_t s = line_start(l, e, axis);
    box_line(in + s, out + s, e.size[axis], e.stride[axis], r);
  }
}

template <typename T>
__global__ void ncc_value_kernel(const acc_t<T>* sums, T* out, int64_t fs, acc_t<T> n, bool squared, acc_t<T> eps) {
  GEMINI_KERNEL_LOOP(i, fs) { ncc_value_voxel(sums, out, fs, n, squared, eps, i); }
}

template <typename T>
__global__ void ncc_sum_grads_kernel(const acc_t<T>* sums, const T* grad, acc_t<T>* out, int64_t fs, acc_t<T> n,
                                     bool squared, acc_t<T> eps) {
  GEMINI_KERNEL_LOOP(i, fs) { ncc_sum_grads_voxel(sums, grad, out, fs, n, squared, eps, i); }
}

template <typename T>
__global__ void ncc_input_grads_kernel(const acc_t<T>* bg, NccArgs<T> a, int64_t fs) {
  GEMINI_KERNEL_LOOP(i, fs) { ncc_input_grads_voxel(bg, a, fs, i); }
}

template <int NDIM, typename T>
struct NccRunner {
  using A = acc_t<T>;
  const NccGeometry<NDIM, T> g;
  void* stream;

  NccRunner(const NccArgs<T>& args, void* s) : g(args), stream(s) {}

  void products(const T* x, const T* y, A* out, int axis) {
    auto kernel = ncc_products_kernel<NDIM, T>;
    GEMINI_LAUNCH(kernel, blocks_for(g.lines(1, axis)), dim3(kThreads), stream, x, y, out, g.e, g.fs, axis, g.r);
    check_launch("gemini local_ncc (products)");
  }
  void box(const A* in, A* out, int axis) {
    auto kernel = ncc_box_kernel<NDIM, A>;
    const int64_t lines = g.lines(5, axis);
    GEMINI_LAUNCH(kernel, blocks_for(lines), dim3(kThreads), stream, in, out, g.e, lines, axis, g.r);
    check_launch("gemini local_ncc (box)");
  }
  void value(const A* sums, T* out) {
    auto kernel = ncc_value_kernel<T>;
    GEMINI_LAUNCH(kernel, blocks_for(g.fs), dim3(kThreads), stream, sums, out, g.fs, g.n, g.a.squared, g.eps);
    check_launch("gemini local_ncc (value)");
  }
  void sum_grads(const A* sums, const T* grad, A* out) {
    auto kernel = ncc_sum_grads_kernel<T>;
    GEMINI_LAUNCH(kernel, blocks_for(g.fs), dim3(kThreads), stream, sums, grad, out, g.fs, g.n, g.a.squared, g.eps);
    check_launch("gemini local_ncc (sum grads)");
  }
  void input_grads(const A* bg) {
    auto kernel = ncc_input_grads_kernel<T>;
    GEMINI_LAUNCH(kernel, blocks_for(g.fs), dim3(kThreads), stream, bg, g.a, g.fs);
    check_launch("gemini local_ncc (input grads)");
  }
};

}  // namespace GEMINI_KERNEL_NS

template <typename T>
void GEMINI_BACKEND::ncc_forward(const NccArgs<T>& a, void* stream) {
  ncc_run<GEMINI_KERNEL_NS::NccRunner>(a, stream, false);
}

template <typename T>
void GEMINI_BACKEND::ncc_backward(const NccArgs<T>& a, void* stream) {
  ncc_run<GEMINI_KERNEL_NS::NccRunner>(a, stream, true);
}

#define GEMINI_INSTANTIATE(T)                                              \
  template void GEMINI_BACKEND::ncc_forward<T>(const NccArgs<T>&, void*); \
  template void GEMINI_BACKEND::ncc_backward<T>(const NccArgs<T>&, void*);
GEMINI_FOR_EACH_TYPE(GEMINI_INSTANTIATE)
#undef GEMINI_INSTANTIATE

}  // namespace gemini
