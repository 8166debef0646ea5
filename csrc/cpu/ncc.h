// CPU local NCC: gemini/ncc_plan.h gives the order of the passes.
//
// Box passes along an outer axis (y, z) run the running sums of a whole
// block of contiguous x positions at once, in double, so the inner loops are
// vector loops over x and read each row once. Passes along x run running
// sums in double too, kLines lines interleaved so that their dependency
// chains overlap. Each output equals box_line's (same additions, same order).
#pragma once

#include "gemini/ncc_plan.h"
#include "gemini/voxel_ops.h"
#include "parallel.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// Contiguous x positions summed together by box_block (the double running
// sums stay in L1), and lines interleaved by box_lines_x.
constexpr int64_t kBlock = 256;
constexpr int64_t kLines = 8;

// box_line for `width` neighbouring lines along an outer axis: line x starts
// at in + x, its elements `stride` apart.
template <typename A>
void box_block(const A* in, A* out, int64_t len, int64_t stride, int64_t r, int64_t width) {
  double acc[kBlock];
  for (int64_t x = 0; x < width; ++x) acc[x] = 0;
  for (int64_t j = 0; j <= r && j < len; ++j) {
    const A* p = in + j * stride;
    for (int64_t x = 0; x < width; ++x) acc[x] += static_cast<double>(p[x]);
  }
  for (int64_t i = 0; i < len; ++i) {
    A* o = out + i * stride;
    for (int64_t x = 0; x < width; ++x) o[x] = static_cast<A>(acc[x]);
    if (i + r + 1 < len) {
      const A* p = in + (i + r + 1) * stride;
      for (int64_t x = 0; x < width; ++x) acc[x] += static_cast<double>(p[x]);
    }
    if (i - r >= 0) {
      const A* p = in + (i - r) * stride;
      for (int64_t x = 0; x < width; ++x) acc[x] -= static_cast<double>(p[x]);
    }
  }
}

// box_line for `count` <= kLines contiguous lines of len elements, one after another.
template <typename A>
void box_lines_x(const A* in, A* out, int64_t count, int64_t len, int64_t r) {
  double acc[kLines] = {};
  for (int64_t j = 0; j <= r && j < len; ++j)
    for (int64_t l = 0; l < count; ++l) acc[l] += static_cast<double>(in[l * len + j]);
  for (int64_t i = 0; i < len; ++i) {
    for (int64_t l = 0; l < count; ++l) out[l * len + i] = static_cast<A>(acc[l]);
    if (i + r + 1 < len)
      for (int64_t l = 0; l < count; ++l) acc[l] += static_cast<double>(in[l * len + i + r + 1]);
    if (i - r >= 0)
      for (int64_t l = 0; l < count; ++l) acc[l] -= static_cast<double>(in[l * len + i - r]);
  }
}

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
    const int64_t len = e.size[axis], r = g.r;
    if (axis == NDIM - 1) {
      const int64_t lines = g.lines(5, axis), groups = (lines + kLines - 1) / kLines;
      cpu::parallel_for(
          groups, g.a.num_threads,
          [&](int64_t q) {
            const int64_t l0 = q * kLines, count = lines - l0 < kLines ? lines - l0 : kLines;
            box_lines_x(in + l0 * len, out + l0 * len, count, len, r);
          },
          kLines * len);
      return;
    }
    const int64_t inner = e.stride[axis], units = 5 * g.fs / (len * inner);
    const int64_t chunks = (inner + kBlock - 1) / kBlock;
    cpu::parallel_for(
        units * chunks, g.a.num_threads,
        [&](int64_t t) {
          const int64_t u = t / chunks, x0 = (t - u * chunks) * kBlock;
          const int64_t base = u * len * inner + x0;
          box_block(in + base, out + base, len, inner, r, inner - x0 < kBlock ? inner - x0 : kBlock);
        },
        len * kBlock);
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
