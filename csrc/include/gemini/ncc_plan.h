// The order of passes of the local NCC, written once for the CUDA kernels
// and their emulation. A Runner executes each pass (kernel launches):
//   products(a, b, out, axis)   first box pass, summing a, b, aa, bb, ab
//   box(in, out, axis)          box pass of the five fields along axis
//   value(sums, out)            per voxel cc
//   sum_grads(sums, grad, out)  per voxel d loss / d sums
//   input_grads(bsums)          per voxel d loss / d a, d b
// Box sums of the five fields live in two scratch buffers used in turn.
// The CPU kernels (csrc/cpu/ncc.h) run the same passes fused, without them.
#pragma once

#include <utility>

#include "gemini/params.h"
#include "gemini/voxel_math.h"

namespace gemini {
GEMINI_ISA_BEGIN

// Sizes every runner needs: fs = B * C * nvox voxels per field, r = window / 2.
template <int NDIM, typename T>
struct NccGeometry {
  using A = acc_t<T>;
  const NccArgs<T>& a;
  Extent<NDIM> e;
  int64_t vols, fs, r;
  A n;    // window ** NDIM
  A eps;

  explicit NccGeometry(const NccArgs<T>& args) : a(args), e(make_extent<NDIM>(args.geo.size)) {
    vols = a.geo.batch * a.geo.channels;
    fs = vols * e.numel();
    r = a.window / 2;
    n = A(1);
    for (int k = 0; k < NDIM; ++k) n *= A(a.window);
    eps = static_cast<A>(a.eps);
  }
  int64_t lines(int64_t fields, int axis) const { return fields * fs / e.size[axis]; }
};


template <typename T, typename Runner>
acc_t<T>* ncc_box_sums(const NccArgs<T>& a, Runner& run) {
  acc_t<T>* x = a.buf0;
  acc_t<T>* y = a.buf1;
  run.products(a.a, a.b, x, a.geo.ndim - 1);
  for (int k = a.geo.ndim - 2; k >= 0; --k) {
    run.box(x, y, k);
    std::swap(x, y);
  }
  return x;
}

template <typename T, typename Runner>
void ncc_forward_plan(const NccArgs<T>& a, Runner& run) {
  run.value(ncc_box_sums(a, run), a.out);
}

template <typename T, typename Runner>
void ncc_backward_plan(const NccArgs<T>& a, Runner& run) {
  acc_t<T>* sums = ncc_box_sums(a, run);
  acc_t<T>* x = sums == a.buf0 ? a.buf1 : a.buf0;
  acc_t<T>* y = sums;
  run.sum_grads(sums, a.grad, x);
  // a centred box with zero padding is its own adjoint
  for (int k = a.geo.ndim - 1; k >= 0; --k) {
    run.box(x, y, k);
    std::swap(x, y);
  }
  run.input_grads(x);
}

// Runs the plan with Runner<NDIM, T> (constructed from the args and a stream).
template <template <int, typename> class Runner, typename T>
void ncc_run(const NccArgs<T>& a, void* stream, bool backward) {
  if (a.geo.ndim == 2) {
    Runner<2, T> run(a, stream);
    backward ? ncc_backward_plan(a, run) : ncc_forward_plan(a, run);
  } else {
    Runner<3, T> run(a, stream);
    backward ? ncc_backward_plan(a, run) : ncc_forward_plan(a, run);
  }
}

GEMINI_ISA_END
}  // namespace gemini
