// The order of passes of the local NCC, written once for the CUDA kernels
// and their emulation. A Runner executes each pass (kernel launches):
//   products(a, b, out, axis)   first box pass, summing a, b, aa, bb, ab
//   box(in, out, axis)          box pass of the five fields along axis
//   value(sums, out)            per voxel cc
//   sum_grads(sums, grad, out)  per voxel d loss / d sums
//   input_grads(bsums)          per voxel d loss / d a, d b
// Box sums of the five fields live in two scratch buffers used in turn (the
// forward's last pass may write the kept sums instead). The CPU kernels
// (csrc/cpu/ncc.h) run the same passes fused, without the scratch buffers.
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


// The forward: the box sums land in a.kept_sums if the backward is to read them
// (the passes start in the buffer that makes the last one end there), else
// in a scratch buffer; then the value.
template <typename T, typename Runner>
void ncc_forward_plan(const NccArgs<T>& a, Runner& run) {
  acc_t<T>* dest = a.kept_sums ? a.kept_sums : a.buf0;
  acc_t<T>* x = a.geo.ndim % 2 == 1 ? dest : a.buf1;
  acc_t<T>* y = x == dest ? a.buf1 : dest;
  run.products(a.a, a.b, x, a.geo.ndim - 1);
  for (int k = a.geo.ndim - 2; k >= 0; --k) {
    run.box(x, y, k);
    std::swap(x, y);
  }
  run.value(x, a.out);
}

// The backward from the forward's sums, which it leaves as they are.
template <typename T, typename Runner>
void ncc_backward_plan(const NccArgs<T>& a, Runner& run) {
  acc_t<T>* x = a.buf0;
  acc_t<T>* y = a.buf1;
  run.sum_grads(a.sums, a.grad, x);
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
