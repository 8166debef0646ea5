// Lower bounds for one squaring step's forward in the design of our CPU
// kernels (interleaved levels, one 8-float load per row of corners), on one
// thread. Driven by benchmarks/step_bounds.py, which writes the levels,
// times our step and the memory floor beside these, and checks the
// "trilinear" kernel's step against the reference.
//
//   step_bounds LEVELS D H W COUNT REPEATS OUT
//
// LEVELS: COUNT float32 fields (D, H, W, 4), a voxel's displacement along
// (D, H, W) and a zero, as our integration stores them (csrc/cpu/square.h).
// Each kernel runs twice on a level and the second call is timed, so the
// level is in the caches as a step's input is after the step before it
// wrote it (which can only lower the bounds). Each kernel prints the mean
// over the levels of its min over REPEATS rounds as a `name ms` line. OUT
// gets the trilinear kernel's result on the first level.
//
// Each kernel drops what a step needs beyond its part, so it bounds every
// kernel that keeps that part:
//   setup      sample points, their floors, offsets and fractions, and one
//              16-byte store per voxel (no read at the sample point);
//   half       setup plus 2 of those loads (rows z and z+1 at y): what a
//              layout storing each voxel's y+1 neighbour beside it (twice
//              the bytes) would need, one 16-float load per z row;
//   loads      setup plus the 4 row loads (8 floats: the x pair of all
//              components) a sample needs in this layout, summed;
//   trilinear  setup plus loads plus the interpolation and the voxel's own
//              displacement added: the step, with corners clamped into the
//              volume instead of zero padding.
// AVX2 + FMA, 8 lanes (both CPUs this project meets have them).

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Level {
  int D, H, W;
  const float* u;  // (D, H, W, 4)
};

// Per row: voxel offsets (floats) of the lower corners and the fractions.
struct Row {
  std::vector<int32_t> off;
  std::vector<float> fx, fy, fz;
  explicit Row(int W) : off(W), fx(W), fy(W), fz(W) {}
};

void setup_row(const Level& l, int z, int y, Row& r) {
  const float* row = l.u + (static_cast<int64_t>(z) * l.H + y) * l.W * 4;
  const __m256i lo = _mm256_setzero_si256(), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i hi_z = _mm256_set1_epi32(l.D - 2), hi_y = _mm256_set1_epi32(l.H - 2), hi_x = _mm256_set1_epi32(l.W - 2);
  const __m256i H = _mm256_set1_epi32(l.H), W = _mm256_set1_epi32(l.W);
  int x = 0;
  for (; x + 8 <= l.W; x += 8) {
    // 8 voxels (z, y, x, 0) to one vector per component (a 4 x 8 transpose)
    const float* q = row + 4 * x;
    const __m256 r0 = _mm256_loadu_ps(q), r1 = _mm256_loadu_ps(q + 8), r2 = _mm256_loadu_ps(q + 16),
                 r3 = _mm256_loadu_ps(q + 24);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const auto ordered = [&](__m256 v) { return _mm256_permutevar8x32_ps(v, order); };
    const __m256 uz = ordered(_mm256_shuffle_ps(t0, t2, 0x44)), uy = ordered(_mm256_shuffle_ps(t0, t2, 0xEE));
    const __m256 ux = ordered(_mm256_shuffle_ps(t1, t3, 0x44));
    const __m256 pz = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(z)), uz);
    const __m256 py = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(y)), uy);
    const __m256 px = _mm256_add_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_add_ps(_mm256_set1_ps(x), ux));
    const __m256 z0 = _mm256_floor_ps(pz), y0 = _mm256_floor_ps(py), x0 = _mm256_floor_ps(px);
    const auto clamp = [&](__m256 f, __m256i hi) { return _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(f), lo), hi); };
    const __m256i iz = clamp(z0, hi_z), iy = clamp(y0, hi_y), ix = clamp(x0, hi_x);
    const __m256i o = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_add_epi32(_mm256_mullo_epi32(iz, H), iy), W), ix);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r.off.data() + x), _mm256_slli_epi32(o, 2));
    _mm256_storeu_ps(r.fz.data() + x, _mm256_sub_ps(pz, z0));
    _mm256_storeu_ps(r.fy.data() + x, _mm256_sub_ps(py, y0));
    _mm256_storeu_ps(r.fx.data() + x, _mm256_sub_ps(px, x0));
  }
  for (; x < l.W; ++x) {
    const float pz = z + row[4 * x], py = y + row[4 * x + 1], px = x + row[4 * x + 2];
    const float x0 = std::floor(px), y0 = std::floor(py), z0 = std::floor(pz);
    const int ix = std::min(std::max(static_cast<int>(x0), 0), l.W - 2);
    const int iy = std::min(std::max(static_cast<int>(y0), 0), l.H - 2);
    const int iz = std::min(std::max(static_cast<int>(z0), 0), l.D - 2);
    r.off[x] = ((iz * l.H + iy) * l.W + ix) * 4;
    r.fx[x] = px - x0;
    r.fy[x] = py - y0;
    r.fz[x] = pz - z0;
  }
}

enum Kind { kSetup, kHalf, kLoads, kTrilinear };

template <Kind kind>
void step(const Level& l, float* out, Row& r) {
  const int64_t plane = static_cast<int64_t>(l.H) * l.W * 4, line = static_cast<int64_t>(l.W) * 4;
  for (int z = 0; z < l.D; ++z)
    for (int y = 0; y < l.H; ++y) {
      setup_row(l, z, y, r);
      const int64_t at = (static_cast<int64_t>(z) * l.H + y) * line;
      for (int x = 0; x < l.W; ++x) {
        float* o = out + at + 4 * x;
        if constexpr (kind == kSetup) {
          _mm_store_ps(o, _mm_setr_ps(r.fx[x], r.fy[x], r.fz[x], static_cast<float>(r.off[x])));
          continue;
        }
        const float* p = l.u + r.off[x];
        if constexpr (kind == kHalf) {
          const __m256 s = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + plane));
          _mm_store_ps(o, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
          continue;
        }
        const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + line);
        const __m256 c = _mm256_loadu_ps(p + plane), d = _mm256_loadu_ps(p + plane + line);
        if constexpr (kind == kLoads) {
          const __m256 s = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d));
          _mm_store_ps(o, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
          continue;
        }
        const __m256 fz = _mm256_set1_ps(r.fz[x]), fy = _mm256_set1_ps(r.fy[x]);
        const __m256 ac = _mm256_fmadd_ps(fz, _mm256_sub_ps(c, a), a), bd = _mm256_fmadd_ps(fz, _mm256_sub_ps(d, b), b);
        const __m256 t = _mm256_fmadd_ps(fy, _mm256_sub_ps(bd, ac), ac);
        const __m128 lo = _mm256_castps256_ps128(t), hi = _mm256_extractf128_ps(t, 1);
        const __m128 s = _mm_fmadd_ps(_mm_set1_ps(r.fx[x]), _mm_sub_ps(hi, lo), lo);
        _mm_store_ps(o, _mm_add_ps(_mm_load_ps(l.u + at + 4 * x), s));
      }
    }
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

float* aligned_floats(size_t count) {
  void* p = std::aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64);
  if (!p) {
    std::fprintf(stderr, "step_bounds: out of memory\n");
    std::exit(1);
  }
  std::memset(p, 0, count * sizeof(float));
  return static_cast<float*>(p);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: step_bounds LEVELS D H W COUNT REPEATS OUT\n");
    return 2;
  }
  const int D = std::atoi(argv[2]), H = std::atoi(argv[3]), W = std::atoi(argv[4]);
  const int count = std::atoi(argv[5]), repeats = std::atoi(argv[6]);
  if (D < 2 || H < 2 || W < 2 || count < 1 || repeats < 1 || static_cast<int64_t>(D) * H * W * 4 >= (int64_t{1} << 31)) {
    std::fprintf(stderr, "step_bounds: D, H, W must be >= 2 with D*H*W*4 < 2^31, and COUNT, REPEATS >= 1\n");
    return 2;
  }
  const size_t field = static_cast<size_t>(D) * H * W * 4;
  float* levels = aligned_floats(field * count);
  FILE* f = std::fopen(argv[1], "rb");
  if (!f || std::fread(levels, sizeof(float), field * count, f) != field * count) {
    std::fprintf(stderr, "step_bounds: %s must hold %d fields of %dx%dx%dx4 float32\n", argv[1], count, D, H, W);
    return 2;
  }
  std::fclose(f);
  float* out = aligned_floats(field);
  Row row(W);

  const char* names[] = {"setup", "half", "loads", "trilinear"};
  constexpr int kKernels = 4;
  std::vector<double> best(kKernels * count, 1e30);
  for (int r = 0; r < repeats; ++r)
    for (int i = 0; i < count; ++i)
      for (int k = 0; k < kKernels; ++k) {
        const Level l{D, H, W, levels + field * i};
        for (int warm = 1; warm >= 0; --warm) {  // the timed call finds the level in the caches
          const auto t0 = std::chrono::steady_clock::now();
          if (k == 0) step<kSetup>(l, out, row);
          if (k == 1) step<kHalf>(l, out, row);
          if (k == 2) step<kLoads>(l, out, row);
          if (k == 3) step<kTrilinear>(l, out, row);
          if (!warm) best[k * count + i] = std::min(best[k * count + i], ms_since(t0));
        }
      }
  step<kTrilinear>(Level{D, H, W, levels}, out, row);
  FILE* o = std::fopen(argv[7], "wb");
  if (!o || std::fwrite(out, sizeof(float), field, o) != field) {
    std::fprintf(stderr, "step_bounds: cannot write %s\n", argv[7]);
    return 1;
  }
  std::fclose(o);
  for (int k = 0; k < kKernels; ++k) {
    double sum = 0;
    for (int i = 0; i < count; ++i) sum += best[k * count + i];
    std::printf("%s %.4f\n", names[k], sum / count);
  }
  return 0;
}
