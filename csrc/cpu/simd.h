// The vector layer of the CPU kernels: VL lanes of fp32 (Vec) and the few operations the
// kernels use, for the instruction set of the unit that includes it (SK_KERNELS_AVX512,
// SK_KERNELS_AVX2, or neither: plain loops the compiler may vectorise), and the bf16
// conversions. Included by each op's kernel header (bsmm_kernels.h, esmm_kernels.h) once per
// instruction-set unit, into that unit's namespace (SK_KERNELS_NS); internal linkage and no C++
// standard library header, for the reason bsmm_kernels.h gives.
#pragma once

#include <stdint.h>

#if defined(SK_KERNELS_AVX512) || defined(SK_KERNELS_AVX2)
#include <immintrin.h>
#endif
#if defined(SK_KERNELS_AVX512)
#include "transpose_avx512.h"
#endif

namespace sparsekern {
namespace cpu {
namespace SK_KERNELS_NS {
namespace {

#if defined(SK_KERNELS_AVX512)
constexpr int VL = 16;
struct Vec { __m512 v; };
inline Vec vzero() { return {_mm512_setzero_ps()}; }
inline Vec vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline Vec vbroadcast(const float* p) { return {_mm512_set1_ps(*p)}; }
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec vadd(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline void vstore(float* p, Vec a) { _mm512_storeu_ps(p, a.v); }
inline void vstream(float* p, Vec a) { _mm512_stream_ps(p, a.v); }  // p on a 64-byte boundary
inline void stream_fence() { _mm_sfence(); }
// dst[c * ldd + r] = src[r * lds + c] for r, c < VL.
inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) { transpose16(src, lds, dst, ldd); }
inline float vsum(Vec a) { return _mm512_reduce_add_ps(a.v); }
// Lane i: the sum of s[i]'s lanes, for VL vectors at once.
inline Vec vsums(const Vec* s) {
  alignas(64) float r[VL];
  for (int i = 0; i < VL; ++i) r[i] = _mm512_reduce_add_ps(s[i].v);
  return {_mm512_load_ps(r)};
}
#elif defined(SK_KERNELS_AVX2)
constexpr int VL = 8;
struct Vec { __m256 v; };
inline Vec vzero() { return {_mm256_setzero_ps()}; }
inline Vec vload(const float* p) { return {_mm256_loadu_ps(p)}; }
// set1 of a loaded float, not _mm256_broadcast_ss(p): GCC 12 takes that builtin's pointer as a
// use of memory it cannot see, so it stored every accumulator to the stack before each one (a
// store per FMA; half the rate of the block kernels). Both compile to vbroadcastss from memory.
inline Vec vbroadcast(const float* p) { return {_mm256_set1_ps(*p)}; }
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec vadd(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline void vstore(float* p, Vec a) { _mm256_storeu_ps(p, a.v); }
inline void vstream(float* p, Vec a) { _mm256_stream_ps(p, a.v); }  // p on a 32-byte boundary
inline void stream_fence() { _mm_sfence(); }
inline float vsum(Vec a) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  const __m128 h = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
// Lane i: the sum of s[i]'s lanes, for VL vectors at once (pairwise adds, then the halves).
inline Vec vsums(const Vec* s) {
  const __m256 t0 = _mm256_hadd_ps(s[0].v, s[1].v), t1 = _mm256_hadd_ps(s[2].v, s[3].v);
  const __m256 t2 = _mm256_hadd_ps(s[4].v, s[5].v), t3 = _mm256_hadd_ps(s[6].v, s[7].v);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return {_mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))};
}
// dst[c * ldd + r] = src[r * lds + c] for r, c < VL (as the AVX-512 one, one lane exchange).
inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#else
// Portable: plain loops the compiler may vectorise for the baseline ISA.
constexpr int VL = 8;
struct Vec { float v[VL]; };
inline Vec vzero() { Vec r; for (int l = 0; l < VL; ++l) r.v[l] = 0.f; return r; }
inline Vec vload(const float* p) { Vec r; for (int l = 0; l < VL; ++l) r.v[l] = p[l]; return r; }
inline Vec vbroadcast(const float* p) { Vec r; for (int l = 0; l < VL; ++l) r.v[l] = *p; return r; }
inline Vec vfma(Vec a, Vec b, Vec c) { for (int l = 0; l < VL; ++l) c.v[l] += a.v[l] * b.v[l]; return c; }
inline Vec vadd(Vec a, Vec b) { for (int l = 0; l < VL; ++l) a.v[l] += b.v[l]; return a; }
inline void vstore(float* p, Vec a) { for (int l = 0; l < VL; ++l) p[l] = a.v[l]; }
inline void vstream(float* p, Vec a) { vstore(p, a); }
inline void stream_fence() {}
inline float vsum(Vec a) { float s = 0.f; for (int l = 0; l < VL; ++l) s += a.v[l]; return s; }
inline Vec vsums(const Vec* s) {
  Vec r;
  for (int i = 0; i < VL; ++i) r.v[i] = vsum(s[i]);
  return r;
}
inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int r = 0; r < VL; ++r)
    for (int c = 0; c < VL; ++c) dst[c * ldd + r] = src[r * lds + c];
}
#endif


inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace
}  // namespace SK_KERNELS_NS
}  // namespace cpu
}  // namespace sparsekern
