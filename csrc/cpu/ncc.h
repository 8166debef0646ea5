// CPU local NCC: the box passes of gemini/ncc_plan.h (x, then y, then z),
// fused so that no full-size intermediate exists.
//
// A work item is one volume's columns [x0, x1) (a tile) and planes [z0, z1)
// (a slab). It also pushes the r planes either side of its slab, so that
// the z sums of its planes are complete without the neighbouring items.
// Plane by plane, the x pass (box_x5) and the y pass (a running sum) run on
// a plane buffer, and each row they emit goes straight into the z pass: a
// running z sum per voxel and a ring of the last `window` xy-summed planes,
// whose oldest plane is subtracted as the newest replaces it. The sums of
// plane z - r are then complete and are consumed at once (the value, and
// the sums kept for the backward). The backward runs one such pipeline on
// the gradients of the sums, which it computes from the kept sums as it
// fills each row (with the r columns either side of the tile).
//
// The y and z passes are running sums in double, rounded to the
// accumulation type A after each pass, in box_line's order. The x pass sums
// each window afresh (no running error), in A: with float, its sums of a
// window of 9 are within a few float roundings of box_line's double sums,
// against one. At 64^3, window 9, 2 threads, a forward and backward took
// 0.1 ms (AVX-512) to 0.3 ms (AVX2) less of 1.6-2.1 ms, and the error
// against the float64 reference was unchanged: the rounding of the sums to
// float between passes dominates it.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <new>

#include "gemini/ncc_plan.h"
#include "parallel.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace cpu {

// Thinnest slab, in windows: a slab pushes r planes on each side that it
// does not emit.
constexpr int64_t kMinSlabWindows = 2;

// Tiles narrower than this spend too much on short row loops and on the
// 2r columns read beyond the tile: at 64^3 and window 9, two 32-column
// tiles on two shared cores took longer than one thread on the whole
// volume (when the backward still summed the products again).
constexpr int64_t kMinTile = 48;

// Box sums along x of the five quantities of one row, for the columns
// [c0, c1). fill(j0, j1, q, stride) writes quantity f of column j in
// [j0, j1) (within [0, nx)) to q[f * stride + j - j0]; the sum of field f at
// column i lands at out[f * (c1 - c0) + i - c0]. A running sum along x is
// one serial chain of additions per row; instead each window is summed
// from sums of 1, 2, 4, ... neighbours (log2(window) passes over the row),
// loops that vectorise along x. Each pass runs over all five fields before
// the next reads them unaligned: a load that straddles stores still in
// flight stalls. q: 10 * (c1 - c0) + 10 * r values.
template <typename A, typename Fill>
inline void box_x5(const Fill& fill, int64_t nx, int64_t c0, int64_t c1, int64_t r, A* out, A* q) {
  const int64_t width = c1 - c0, len = width + 2 * r, lo = c0 - r, w = 2 * r + 1;
  const int64_t k0 = lo < 0 ? -lo : 0, k1 = nx - lo < len ? nx - lo : len;
  fill(lo + k0, lo + k1, q + k0, len);
  for (int f = 0; f < 5; ++f) {  // zeros outside the volume
    for (int64_t k = 0; k < k0; ++k) q[f * len + k] = 0;
    for (int64_t k = k1; k < len; ++k) q[f * len + k] = 0;
  }
  // p[k] holds the sum of `span` columns from lo + k; the window is the spans of w's bits
  A* res = q + 5 * len;
  int64_t offset = 0;
  for (int64_t span = 1; span <= w; span *= 2) {
    for (int f = 0; f < 5; ++f) {
      A* p = q + f * len;
      A* s = res + f * width;
      if ((w & span) && offset == 0)
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) s[i] = p[i];
      else if (w & span)
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) s[i] += p[i + offset];
      if (2 * span <= w)
#pragma omp simd
        for (int64_t k = 0; k <= len - 2 * span; ++k) p[k] += p[k + span];  // reads ahead: safe in place
    }
    if (w & span) offset += span;
  }
#pragma omp simd
  for (int64_t i = 0; i < 5 * width; ++i) out[i] = res[i];
}

// One stage of box sums over the planes of a tile of `width` columns and ny
// rows; a row holds its five fields one after another (5 * width values).
template <typename A>
struct BoxStage {
  int64_t width, ny, nx, nz, r, c0, c1;
  A* xsum;       // one plane, summed along x
  A* line;       // box_x5's row
  double* ysum;  // one row, the y running sums
  A* ring;       // min(window, nz) planes summed along x and y, plane z in slot z % window
  double* zsum;  // one plane, the z running sums
  // Emitted planes [k0, k1), pushed planes [first, last): see start
  int64_t k0 = 0, k1 = 0, first = 0, last = 0;

  int64_t row() const { return 5 * width; }
  int64_t plane() const { return ny * row(); }
  const double* sums(int64_t y) const { return zsum + y * row(); }

  // The planes [k0, k1) are to be emitted: their windows need the planes
  // [first, last), pushed in order.
  void start(int64_t from, int64_t to) {
    k0 = from;
    k1 = to;
    first = k0 - r > 0 ? k0 - r : 0;
    last = k1 + r < nz ? k1 + r : nz;
  }

  // Sums plane z along x and y (fill(y, j0, j1, q, stride) gives the five
  // quantities of row y, as box_x5's fill), adds it to the z running sums
  // (dropping plane z - window), and emit(y) after each row once the sums
  // of plane z - r are complete there, if it is one of [k0, k1).
  template <typename Fill, typename Emit>
  void push(int64_t z, const Fill& fill, Emit&& emit) {
    const int64_t n = row(), w = 2 * r + 1;
    for (int64_t y = 0; y < ny; ++y)
      box_x5<A>([&](int64_t j0, int64_t j1, A* q, int64_t stride) { fill(y, j0, j1, q, stride); }, nx, c0,
                c1, r, xsum + y * n, line);
    if (z == first)
      for (int64_t k = 0; k < plane(); ++k) zsum[k] = 0;
    for (int64_t k = 0; k < n; ++k) ysum[k] = 0;
    for (int64_t j = 0; j <= r && j < ny; ++j)
      for (int64_t k = 0; k < n; ++k) ysum[k] += static_cast<double>(xsum[j * n + k]);
    A* slot = ring + (z % w) * plane();
    for (int64_t y = 0; y < ny; ++y) {
      double* s = zsum + y * n;
      A* p = slot + y * n;
      if (z - w >= first) {  // box_line's order: add the newest plane, then drop the oldest
        for (int64_t k = 0; k < n; ++k) {
          const A v = static_cast<A>(ysum[k]);
          double t = s[k] + static_cast<double>(v);
          s[k] = t - static_cast<double>(p[k]);
          p[k] = v;
        }
      } else {
        for (int64_t k = 0; k < n; ++k) {
          p[k] = static_cast<A>(ysum[k]);
          s[k] += static_cast<double>(p[k]);
        }
      }
      if (z - r >= k0) emit(y);
      if (y + r + 1 < ny)
        for (int64_t k = 0; k < n; ++k) ysum[k] += static_cast<double>(xsum[(y + r + 1) * n + k]);
      if (y - r >= 0)
        for (int64_t k = 0; k < n; ++k) ysum[k] -= static_cast<double>(xsum[(y - r) * n + k]);
    }
  }

  // After the last push: emit(k, y) for the rows of the planes of [k0, k1)
  // from nz - r on, whose windows need no further plane (none unless last is nz).
  template <typename Emit>
  void finish(Emit&& emit) {
    for (int64_t k = nz - r > 0 ? nz - r : 0; k < k1; ++k) {
      if (k - r - 1 >= first) {
        const A* p = ring + ((k - r - 1) % (2 * r + 1)) * plane();
        for (int64_t i = 0; i < plane(); ++i) zsum[i] -= static_cast<double>(p[i]);
      }
      if (k >= k0)
        for (int64_t y = 0; y < ny; ++y) emit(k, y);
    }
  }

  // The planes [from, to), fill_of(z) giving push's fill: emit(k, y) for each row of each.
  template <typename FillOf, typename Emit>
  void run(int64_t from, int64_t to, const FillOf& fill_of, Emit&& emit) {
    start(from, to);
    for (int64_t z = first; z < last; ++z) push(z, fill_of(z), [&](int64_t y) { emit(z - r, y); });
    finish(emit);
  }
};

template <int NDIM, typename T>
struct CpuNcc {
  using A = acc_t<T>;
  const NccArgs<T>& a;
  int64_t vols, nz, ny, nx, fs, r, tiles, tile, slabs, slab;
  int nt;  // threads
  A n, eps;

  explicit CpuNcc(const NccArgs<T>& args) : a(args) {
    const NccGeometry<NDIM, T> g(args);
    vols = g.vols;
    nz = NDIM == 3 ? g.e.size[0] : 1;
    ny = g.e.size[NDIM - 2];
    nx = g.e.size[NDIM - 1];
    fs = g.fs;
    r = g.r;
    n = g.n;
    eps = g.eps;
    nt = threads_for(g.fs, a.num_threads);
    plan();
  }

  // Splits each volume into slabs, then (planes too few) tiles, until the
  // items share out evenly among the threads (or are many), as long as slabs
  // and tiles stay thick and wide enough. Slabs first: on two cores (window
  // 9, fwd + bwd, one volume) two slabs took as long as two tiles with AVX2
  // and 12-13% less with AVX-512 at 96^3 and 128^3, and a 64^3 volume is too
  // narrow for two tiles. More items than threads cost their extra planes:
  // four slabs or two by two took 14-28% longer than two slabs with the
  // cores idle, and gained nothing measurable with one core kept busy by
  // another process.
  void plan() {
    auto split = [&](int64_t parts_before, int64_t size, int64_t min_part) {
      int64_t p = 1;
      while ((p + 1) * min_part <= size && (parts_before * p) % nt != 0 && parts_before * p < 4 * nt) ++p;
      return p;
    };
    const int64_t s = split(vols, nz, kMinSlabWindows * (2 * r + 1));
    slab = (nz + s - 1) / s;
    slabs = (nz + slab - 1) / slab;
    const int64_t t = split(vols * slabs, nx, kMinTile);
    tile = (nx + t - 1) / t;
    tiles = (nx + tile - 1) / tile;
    if (vols * tiles * slabs < nt) nt = static_cast<int>(vols * tiles * slabs);
  }

  int64_t at(int64_t v, int64_t z, int64_t y) const { return ((v * nz + z) * ny + y) * nx; }

  // count values of type E at offset `used` of the workspace ws, 64-byte
  // granules; with ws null, only counts the bytes.
  template <typename E>
  static E* take(char* ws, size_t& used, int64_t count) {
    E* p = ws ? reinterpret_cast<E*>(ws + used) : nullptr;
    used += (static_cast<size_t>(count) * sizeof(E) + 63) / 64 * 64;
    return p;
  }
  // A stage over the columns [c0, c1) (halo included), from the workspace.
  BoxStage<A> stage(int64_t c0, int64_t c1, char* ws, size_t& used) const {
    BoxStage<A> s{c1 - c0, ny, nx, nz, r, c0, c1, nullptr, nullptr, nullptr, nullptr, nullptr};
    s.xsum = take<A>(ws, used, s.plane());
    s.line = take<A>(ws, used, 10 * s.width + 10 * r);
    s.ysum = take<double>(ws, used, s.row());
    s.ring = take<A>(ws, used, (nz < 2 * r + 1 ? nz : 2 * r + 1) * s.plane());
    s.zsum = take<double>(ws, used, s.plane());
    return s;
  }

  int64_t items() const { return vols * tiles * slabs; }

  // body(item, v, x0, x1, z0, z1, workspace) for every tile and slab, per
  // thread one workspace of `per_thread` bytes, items handed out on demand.
  template <typename Body>
  void for_items(size_t per_thread, Body&& body) const {
    char* ws = static_cast<char*>(std::malloc(per_thread * nt));
    if (!ws) throw std::bad_alloc();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < items(); ++i) {
      const int64_t v = i / (tiles * slabs), x0 = (i / slabs % tiles) * tile, z0 = i % slabs * slab;
      body(i, v, x0, std::min(nx, x0 + tile), z0, std::min(nz, z0 + slab), ws + per_thread * omp_get_thread_num());
    }
    std::free(ws);
  }

  // The fill of the first stage: the five products of a and b.
  auto products(int64_t v, int64_t z) const {
    const T* pa = a.a + at(v, z, 0);
    const T* pb = a.b + at(v, z, 0);
    const int64_t row = nx;
    return [pa, pb, row](int64_t y, int64_t j0, int64_t j1, A* q, int64_t stride) {
      const T* ra = pa + y * row + j0;
      const T* rb = pb + y * row + j0;
#pragma omp simd
      for (int64_t j = 0; j < j1 - j0; ++j) {
        const A x = load<A>(ra[j]), u = load<A>(rb[j]);
        q[j] = x;
        q[stride + j] = u;
        q[2 * stride + j] = x * x;
        q[3 * stride + j] = u * u;
        q[4 * stride + j] = x * u;
      }
    };
  }

  NccSums<A> load_sums(const double* s, int64_t width, int64_t i) const {
    return {static_cast<A>(s[i]), static_cast<A>(s[width + i]), static_cast<A>(s[2 * width + i]),
            static_cast<A>(s[3 * width + i]), static_cast<A>(s[4 * width + i])};
  }

  // kSquared is a.squared, a constant so that the per-row loops vectorise.
  // With a.mean each item sums its values in double; the items' sums are
  // added in item order (the same result for any thread count that makes
  // the same items).
  template <bool kSquared>
  void forward() const {
    size_t per_thread = 0;
    stage(0, tile, nullptr, per_thread);
    const ItemSums item_sums(a.mean ? items() : 0, 1);
    for_items(per_thread, [&](int64_t item, int64_t v, int64_t x0, int64_t x1, int64_t z0, int64_t z1, char* ws) {
      size_t used = 0;
      BoxStage<A> s = stage(x0, x1, ws, used);
      double item_sum = 0;
      s.run(z0, z1, [&](int64_t z) { return products(v, z); },
            [&](int64_t k, int64_t y) {
              const double* sums = s.sums(y);
              const int64_t o = at(v, k, y) + x0;
              if (a.mean) {
                double row = 0;
#pragma omp simd reduction(+ : row)
                for (int64_t i = 0; i < s.width; ++i)
                  row += static_cast<double>(ncc_value(load_sums(sums, s.width, i), n, kSquared, eps));
                item_sum += row;
              } else {
                T* out = a.out + o;
#pragma omp simd
                for (int64_t i = 0; i < s.width; ++i)
                  out[i] = store<T>(ncc_value(load_sums(sums, s.width, i), n, kSquared, eps));
              }
              if (a.kept_sums)
#pragma omp simd
                for (int64_t i = 0; i < s.width; ++i) ncc_store(load_sums(sums, s.width, i), a.kept_sums + o, fs, i);
            });
      if (a.mean) *item_sums.of(item) = item_sum;
    });
    if (a.mean) a.out[0] = store<T>(static_cast<A>(item_sums.total(0) / static_cast<double>(fs)));
  }

  // One stage over the gradients of the sums, which each row's fill
  // computes from the kept sums (a.sums), for the tile and r columns either
  // side (within the volume). With a.mean every voxel's gradient is
  // grad[0] / voxels.
  template <bool kSquared>
  void backward() const {
    size_t per_thread = 0;
    stage(0, tile, nullptr, per_thread);
    const A grad_each =
        a.mean ? static_cast<A>(static_cast<double>(load<A>(a.grad[0])) / static_cast<double>(fs)) : A(0);
    for_items(per_thread, [&](int64_t, int64_t v, int64_t x0, int64_t x1, int64_t z0, int64_t z1, char* ws) {
      size_t used = 0;
      BoxStage<A> grads = stage(x0, x1, ws, used);
      auto sum_grads = [&](int64_t z) {
        return [&, z](int64_t y, int64_t j0, int64_t j1, A* q, int64_t stride) {
          const int64_t o = at(v, z, y) + j0;
          const A* s = a.sums + o;
          auto fill = [&](auto grad_at) {
#pragma omp simd
            for (int64_t j = 0; j < j1 - j0; ++j) {
              const NccSums<A> d = ncc_sum_grads(ncc_load(s, fs, j), n, kSquared, eps, grad_at(j));
              q[j] = d.a;
              q[stride + j] = d.b;
              q[2 * stride + j] = d.aa;
              q[3 * stride + j] = d.bb;
              q[4 * stride + j] = d.ab;
            }
          };
          if (a.mean)
            fill([&](int64_t) { return grad_each; });
          else
            fill([&](int64_t j) { return load<A>(a.grad[o + j]); });
        };
      };
      auto input_grads = [&](int64_t k, int64_t y) {
        const double* bs = grads.sums(y);
        const int64_t o = at(v, k, y) + x0;
        const int64_t w = grads.width;
        if (a.grad_a)
#pragma omp simd
          for (int64_t i = 0; i < w; ++i) {
            const A x = load<A>(a.a[o + i]), u = load<A>(a.b[o + i]);
            a.grad_a[o + i] = store<T>(A(bs[i]) + A(2) * x * A(bs[2 * w + i]) + u * A(bs[4 * w + i]));
          }
        if (a.grad_b)
#pragma omp simd
          for (int64_t i = 0; i < w; ++i) {
            const A x = load<A>(a.a[o + i]), u = load<A>(a.b[o + i]);
            a.grad_b[o + i] = store<T>(A(bs[w + i]) + A(2) * u * A(bs[3 * w + i]) + x * A(bs[4 * w + i]));
          }
      };
      grads.run(z0, z1, sum_grads, input_grads);
    });
  }
};

template <typename T>
void ncc_forward(const NccArgs<T>& a) {
  if (a.geo.ndim == 2)
    a.squared ? CpuNcc<2, T>(a).template forward<true>() : CpuNcc<2, T>(a).template forward<false>();
  else
    a.squared ? CpuNcc<3, T>(a).template forward<true>() : CpuNcc<3, T>(a).template forward<false>();
}

template <typename T>
void ncc_backward(const NccArgs<T>& a) {
  if (a.geo.ndim == 2)
    a.squared ? CpuNcc<2, T>(a).template backward<true>() : CpuNcc<2, T>(a).template backward<false>();
  else
    a.squared ? CpuNcc<3, T>(a).template backward<true>() : CpuNcc<3, T>(a).template backward<false>();
}

}  // namespace cpu
GEMINI_ISA_END
}  // namespace gemini
