// Lanes of voxels for the CPU row kernels: one type per instruction set,
// with the same static interface, so a kernel is written once over `S`
// (float lanes use + - * directly: GCC and Clang define them on __m256/__m512).
//   Scalar<T>  one voxel (the portable path, row tails, double)
//   Avx2       8 float lanes, AVX2 + FMA gathers
//   Avx512     16 float lanes, AVX-512F masked gathers
//   Quad, Pair the 4 values of one voxel of an interleaved field, and of two
// Indices are int32 (offsets within one channel plane; callers check that
// a plane fits). Masks select lanes; a masked gather reads nothing for
// masked-out lanes and gives 0 there (zeros padding without branches).
#pragma once

#include <cmath>
#include <cstdint>

#if GEMINI_ISA_LEVEL >= 1
#include <immintrin.h>
#endif

#include "gemini/params.h"

namespace gemini {
GEMINI_ISA_BEGIN
namespace simd {

template <typename T>
struct Scalar {
  static constexpr int L = 1;
  using E = T;
  using F = T;
  using I = int32_t;
  using M = bool;
  static F load(const T* p) { return *p; }
  static void store(T* p, F v) { *p = v; }
  static F set(T v) { return v; }
  static F iota(T x0) { return x0; }
  static I seti(int32_t v) { return v; }
  static I addi(I a, I b) { return a + b; }
  static I muli(I a, int32_t s) { return a * s; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F floor(F q) {  // q is finite and small (see safe_coord)
    const T t = static_cast<T>(static_cast<int32_t>(q));
    return t > q ? t - T(1) : t;
  }
  static I to_int(F q) { return static_cast<int32_t>(q); }
  // max/min with x86 semantics: a NaN in `a` gives `b`
  static F max(F a, F b) { return a > b ? a : b; }
  static F min(F a, F b) { return a < b ? a : b; }
  static M in_range(I i, int32_t n) { return static_cast<uint32_t>(i) < static_cast<uint32_t>(n); }
  static M gt(F a, F b) { return a > b; }
  static M lt(F a, F b) { return a < b; }
  static M both(M a, M b) { return a && b; }
  static M all_lanes() { return true; }
  static M nonzero(F a) { return !(a == T(0)); }  // NaN too
  static F sqrt(F a) { return std::sqrt(a); }
  static F round(F q) {  // half to even, q finite and small
    const F f = floor(q), d = q - f;
    if (d > T(0.5)) return f + T(1);
    if (d < T(0.5)) return f;
    return (static_cast<int32_t>(f) & 1) ? f + T(1) : f;
  }
  static F select(M m, F a, F b) { return m ? a : b; }
  static F gather(const T* base, I idx, M m) { return m ? base[idx] : T(0); }
  // base[idx] and base[idx + 1] (both must be readable where m is set)
  static void gather_pair(const T* base, I idx, M m, F& lo, F& hi) {
    lo = m ? base[idx] : T(0);
    hi = m ? base[idx + 1] : T(0);
  }
  static unsigned bits(M m) { return m ? 1u : 0u; }
  static constexpr unsigned kAll = 1u;
  static void store_int(int32_t* p, I v) { *p = v; }
  static constexpr bool kGroupedScatter = false;  // one lane: nothing to group
  static void transpose(F*) {}
  // c[k] = value k of every 4 from p (the components of an interleaved field)
  static void load_components(const T* p, F* c) {
    for (int k = 0; k < 3; ++k) c[k] = p[k];
  }
};

// N floats as one GCC/Clang vector (SSE/AVX registers on x86), in every build.
// The portable build passes 32-byte ones without AVX; GCC warns that such a
// call's ABI differs from an AVX build's, which cannot matter here: these
// are inline functions of one instruction set's namespace (GEMINI_ISA_BEGIN).
#if defined(__GNUC__) && !defined(__clang__) && GEMINI_ISA_LEVEL == 0
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <int N>
struct FloatVector;  // (GCC drops vector_size with a dependent size)
template <>
struct FloatVector<4> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct FloatVector<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <int N>
struct Floats {
  static constexpr int L = N;
  using E = float;
  using F = typename FloatVector<N>::type;
  static F load(const float* p) {
    F v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, F v) { __builtin_memcpy(p, &v, sizeof v); }
  static F set(float v) {
    if constexpr (N == 4)
      return F{v, v, v, v};
    else
      return F{v, v, v, v, v, v, v, v};
  }
  static F fma(F a, F b, F c) {
#if GEMINI_ISA_LEVEL >= 1
    if constexpr (N == 4) return _mm_fmadd_ps(a, b, c);
    if constexpr (N == 8) return _mm256_fmadd_ps(a, b, c);
#endif
    return a * b + c;
  }
};

// The four values of one voxel of an interleaved field (csrc/cpu/square.h).
struct Quad : Floats<4> {};

// Two neighbouring voxels of an interleaved field (an x pair of corners).
struct Pair : Floats<8> {
#if GEMINI_ISA_LEVEL >= 1
  static Quad::F low(F p) { return _mm256_castps256_ps128(p); }
  static Quad::F high(F p) { return _mm256_extractf128_ps(p, 1); }
#else
  static Quad::F low(F p) { return Quad::F{p[0], p[1], p[2], p[3]}; }
  static Quad::F high(F p) { return Quad::F{p[4], p[5], p[6], p[7]}; }
#endif
};

#if GEMINI_ISA_LEVEL >= 1
struct Avx2 {
  static constexpr int L = 8;
  using E = float;
  using F = __m256;
  using I = __m256i;
  using M = __m256i;  // all-ones lanes
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F set(float v) { return _mm256_set1_ps(v); }
  static F iota(float x0) { return _mm256_add_ps(_mm256_set1_ps(x0), _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)); }
  static I seti(int32_t v) { return _mm256_set1_epi32(v); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I muli(I a, int32_t s) { return _mm256_mullo_epi32(a, _mm256_set1_epi32(s)); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F floor(F q) { return _mm256_floor_ps(q); }
  static I to_int(F q) { return _mm256_cvttps_epi32(q); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static M in_range(I i, int32_t n) {
    return _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), i), _mm256_cmpgt_epi32(i, _mm256_set1_epi32(-1)));
  }
  static M gt(F a, F b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }
  static M lt(F a, F b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
  static M both(M a, M b) { return _mm256_and_si256(a, b); }
  static M all_lanes() { return _mm256_set1_epi32(-1); }
  static M nonzero(F a) { return _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_NEQ_UQ)); }
  static F sqrt(F a) { return _mm256_sqrt_ps(a); }
  static F round(F q) { return _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)); }
  static F gather(const float* base, I idx, M m) {
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, idx, _mm256_castsi256_ps(m), 4);
  }
  // Two neighbours per lane as one 64-bit element: half the elements of two
  // 32-bit gathers, which is what a gather costs on current x86 cores.
  static void gather_pair(const float* base, I idx, M m, F& lo, F& hi) {
    const __m128i i0 = _mm256_castsi256_si128(idx), i1 = _mm256_extracti128_si256(idx, 1);
    const __m256i m0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(m));
    const __m256i m1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1));
    const long long* b = reinterpret_cast<const long long*>(base);
    const __m256 g0 = _mm256_castsi256_ps(_mm256_mask_i32gather_epi64(_mm256_setzero_si256(), b, i0, m0, 4));
    const __m256 g1 = _mm256_castsi256_ps(_mm256_mask_i32gather_epi64(_mm256_setzero_si256(), b, i1, m1, 4));
    // per 128-bit half: [l0 l1 l4 l5 | l2 l3 l6 l7], then the 64-bit blocks in order
    lo = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(g0, g1, _MM_SHUFFLE(2, 0, 2, 0))),
                                                _MM_SHUFFLE(3, 1, 2, 0)));
    hi = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(g0, g1, _MM_SHUFFLE(3, 1, 3, 1))),
                                                _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static unsigned bits(M m) { return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(m))); }
  static constexpr unsigned kAll = 0xFFu;
  static void store_int(int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  // scatters lane by lane (lanes.h): vector groups with vmaskmovps measured
  // slower (AMD Zen 5)
  static constexpr bool kGroupedScatter = false;
  // see Scalar::load_components: 8 voxels of 4 values, transposed in registers
  static void load_components(const float* p, F* c) {
    const F r0 = load(p), r1 = load(p + 8), r2 = load(p + 16), r3 = load(p + 24);
    const F a = _mm256_permute2f128_ps(r0, r2, 0x20), b = _mm256_permute2f128_ps(r0, r2, 0x31);  // [v0|v4], [v1|v5]
    const F d = _mm256_permute2f128_ps(r1, r3, 0x20), e = _mm256_permute2f128_ps(r1, r3, 0x31);  // [v2|v6], [v3|v7]
    const F ab = _mm256_unpacklo_ps(a, b), de = _mm256_unpacklo_ps(d, e);
    c[0] = _mm256_shuffle_ps(ab, de, _MM_SHUFFLE(1, 0, 1, 0));
    c[1] = _mm256_shuffle_ps(ab, de, _MM_SHUFFLE(3, 2, 3, 2));
    c[2] = _mm256_shuffle_ps(_mm256_unpackhi_ps(a, b), _mm256_unpackhi_ps(d, e), _MM_SHUFFLE(1, 0, 1, 0));
  }
  // r[i] lane j <-> r[j] lane i (8 x 8)
  static void transpose(F* r) {
    F t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
};
#endif

#if GEMINI_ISA_LEVEL >= 2
// GCC 12 warns about the deliberately undefined pass-through operand inside
// its own AVX-512 intrinsics (_mm512_undefined_ps): not ours to fix.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
struct Avx512 {
  static constexpr int L = 16;
  using E = float;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F set(float v) { return _mm512_set1_ps(v); }
  static F iota(float x0) {
    return _mm512_add_ps(_mm512_set1_ps(x0),
                         _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  static I seti(int32_t v) { return _mm512_set1_epi32(v); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I muli(I a, int32_t s) { return _mm512_mullo_epi32(a, _mm512_set1_epi32(s)); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F floor(F q) { return _mm512_roundscale_ps(q, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static I to_int(F q) { return _mm512_cvttps_epi32(q); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static M in_range(I i, int32_t n) { return _mm512_cmplt_epu32_mask(i, _mm512_set1_epi32(n)); }
  static M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M both(M a, M b) { return static_cast<M>(a & b); }
  static M all_lanes() { return static_cast<M>(0xFFFF); }
  static M nonzero(F a) { return _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_UQ); }
  static F sqrt(F a) { return _mm512_sqrt_ps(a); }
  static F round(F q) { return _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }
  static F gather(const float* base, I idx, M m) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, base, 4);
  }
  // see Avx2::gather_pair
  static void gather_pair(const float* base, I idx, M m, F& lo, F& hi) {
    const __m256i i0 = _mm512_castsi512_si256(idx), i1 = _mm512_extracti64x4_epi64(idx, 1);
    const __m512 g0 = _mm512_castsi512_ps(
        _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), static_cast<__mmask8>(m), i0, base, 4));
    const __m512 g1 = _mm512_castsi512_ps(
        _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), static_cast<__mmask8>(m >> 8), i1, base, 4));
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    lo = _mm512_permutex2var_ps(g0, even, g1);
    hi = _mm512_permutex2var_ps(g0, _mm512_add_epi32(even, _mm512_set1_epi32(1)), g1);
  }
  static unsigned bits(M m) { return static_cast<unsigned>(m); }
  static constexpr unsigned kAll = 0xFFFFu;
  static void store_int(int32_t* p, I v) { _mm512_storeu_si512(p, v); }
  static I lane_index() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static M eqi(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static M from_bits(unsigned b) { return static_cast<M>(b); }
  // lanes whose value differs from the lane before (and lane 0)
  static unsigned run_starts(I a) {
    return bits(_mm512_cmpneq_epi32_mask(a, _mm512_alignr_epi32(a, a, 15))) | 1u;
  }
  // vector groups of a scatter (lanes.h): p[l] += lo[l] where lo_m and
  // p[l + 1] += hi[l] where hi_m, as one read-modify-write of p[0, 16)
  // (the upper neighbours move up one lane) and p[16] for the last lane
  static constexpr bool kGroupedScatter = true;
  // see Scalar::load_components: 16 voxels of 4 values, permuted in registers
  static void load_components(const float* p, F* c) {
    const F r0 = load(p), r1 = load(p + 16), r2 = load(p + 32), r3 = load(p + 48);
    for (int k = 0; k < 3; ++k) {
      const I every4 = _mm512_setr_epi32(k, k + 4, k + 8, k + 12, k + 16, k + 20, k + 24, k + 28, 0, 0, 0, 0, 0, 0,
                                         0, 0);
      c[k] = _mm512_shuffle_f32x4(_mm512_permutex2var_ps(r0, every4, r1), _mm512_permutex2var_ps(r2, every4, r3),
                                  0x44);
    }
  }
  static void add_pair(float* p, M lo_m, F lo, M hi_m, F hi) {
    const __m512i hi_up = _mm512_alignr_epi32(_mm512_castps_si512(_mm512_maskz_mov_ps(hi_m, hi)),
                                              _mm512_setzero_si512(), 15);
    const M at = static_cast<M>(lo_m | (hi_m << 1));
    const F add = _mm512_maskz_mov_ps(lo_m, lo) + _mm512_castsi512_ps(hi_up);
    _mm512_mask_storeu_ps(p, at, _mm512_maskz_loadu_ps(at, p) + add);
    if (hi_m >> 15) p[16] += _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(15), hi));
  }
  // r[i] lane j <-> r[j] lane i (16 x 16): 4 x 4 blocks within 128-bit
  // lanes, then the 128-bit lanes across rows i, i + 4, i + 8, i + 12
  static void transpose(F* r) {
    F t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
      const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
      r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
      r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
      r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
      r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int i = 0; i < 4; ++i) {
      const F ab0 = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88), ab1 = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
      const F cd0 = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
      const F cd1 = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
      t[i] = _mm512_shuffle_f32x4(ab0, cd0, 0x88);
      t[i + 8] = _mm512_shuffle_f32x4(ab0, cd0, 0xDD);
      t[i + 4] = _mm512_shuffle_f32x4(ab1, cd1, 0x88);
      t[i + 12] = _mm512_shuffle_f32x4(ab1, cd1, 0xDD);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
  }
};
#endif

// The widest lanes of this build for element type T (double: one voxel).
template <typename T>
struct Widest {
  using type = Scalar<T>;
};
#if GEMINI_ISA_LEVEL == 1
template <>
struct Widest<float> {
  using type = Avx2;
};
#elif GEMINI_ISA_LEVEL >= 2
template <>
struct Widest<float> {
  using type = Avx512;
};
#endif

}  // namespace simd
GEMINI_ISA_END
}  // namespace gemini
