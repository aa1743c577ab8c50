// simd_kernels.h on AVX-512 F/DQ/BW/VL: 16 floats (8 doubles) a vector, 32 registers, a
// mask register per column set. Every function here carries FK_TARGET, so only these are
// compiled for AVX-512 (GCC and Clang alike) and nothing here runs unless simd_cpu.cpp
// found AVX-512 on the CPU. The standard headers come first, outside any target.
#include "simd_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cstdint>

#include <immintrin.h>

#define FK_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))

namespace flashcka {
namespace simd {
namespace avx512 {

constexpr const char* kIsaName = "AVX-512";

template <class T>
struct VT;

template <>
struct VT<float> {
  using R = __m512;
  using M = __mmask16;
  using D = __mmask16;
  static constexpr int L = 16, RB = 16, DA = 4, DB = 4;
  FK_TARGET static M mask(int64_t k) {
    return k >= L ? M(0xFFFF) : k <= 0 ? M(0) : M((1u << k) - 1u);
  }
  FK_TARGET static R zero() { return _mm512_setzero_ps(); }
  FK_TARGET static R load(const float* p) { return _mm512_load_ps(p); }
  FK_TARGET static R loadu(const float* p) { return _mm512_loadu_ps(p); }
  FK_TARGET static R loadz(M m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  FK_TARGET static R set1(float v) { return _mm512_set1_ps(v); }
  FK_TARGET static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  FK_TARGET static R add(R a, R b) { return _mm512_add_ps(a, b); }
  FK_TARGET static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  FK_TARGET static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  FK_TARGET static R abs(R a) { return _mm512_abs_ps(a); }
  FK_TARGET static R max(R a, R b) { return _mm512_max_ps(a, b); }  // b when a is NaN
  FK_TARGET static void store(float* p, R v) { _mm512_store_ps(p, v); }
  FK_TARGET static void storeu(float* p, R v) { _mm512_storeu_ps(p, v); }
  FK_TARGET static void stores(float* p, M m, R v) { _mm512_mask_storeu_ps(p, m, v); }
  FK_TARGET static D dzero() { return 0; }
  FK_TARGET static D dor(D d, R a, R b) { return D(d | _mm512_cmp_ps_mask(a, b, _CMP_NEQ_OQ)); }
  FK_TARGET static bool dany(D d) { return d != 0; }
  FK_TARGET static float hmax(R v) { return _mm512_reduce_max_ps(v); }
  FK_TARGET static float hsum(R v) { return _mm512_reduce_add_ps(v); }

  // r[i] = row i (16 columns) -> r[c] = column c (16 rows).
  FK_TARGET static void transpose(R* r) {
    R t[16], u[16];
    for (int k = 0; k < 8; ++k) {
      t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; ++k) {  // u[4k + j], 128-bit lane L: column 4L + j, rows 4k..4k+3
      u[4 * k] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
      u[4 * k + 1] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0xEE);
      u[4 * k + 2] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
      u[4 * k + 3] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {  // 4 × 4 transpose of the 128-bit lanes
      const R v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
      const R v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
      const R v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
      const R v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
      r[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
      r[4 + j] = _mm512_shuffle_f32x4(v1, v3, 0x88);
      r[8 + j] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
      r[12 + j] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
  }
};

template <>
struct VT<double> {
  using R = __m512d;
  using M = __mmask8;
  using D = __mmask8;
  static constexpr int L = 8, RB = 8, DA = 4, DB = 4;
  FK_TARGET static M mask(int64_t k) {
    return k >= L ? M(0xFF) : k <= 0 ? M(0) : M((1u << k) - 1u);
  }
  FK_TARGET static R zero() { return _mm512_setzero_pd(); }
  FK_TARGET static R load(const double* p) { return _mm512_load_pd(p); }
  FK_TARGET static R loadu(const double* p) { return _mm512_loadu_pd(p); }
  FK_TARGET static R loadz(M m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  FK_TARGET static R set1(double v) { return _mm512_set1_pd(v); }
  FK_TARGET static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  FK_TARGET static R add(R a, R b) { return _mm512_add_pd(a, b); }
  FK_TARGET static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  FK_TARGET static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  FK_TARGET static R abs(R a) { return _mm512_abs_pd(a); }
  FK_TARGET static R max(R a, R b) { return _mm512_max_pd(a, b); }
  FK_TARGET static void store(double* p, R v) { _mm512_store_pd(p, v); }
  FK_TARGET static void storeu(double* p, R v) { _mm512_storeu_pd(p, v); }
  FK_TARGET static void stores(double* p, M m, R v) { _mm512_mask_storeu_pd(p, m, v); }
  FK_TARGET static D dzero() { return 0; }
  FK_TARGET static D dor(D d, R a, R b) { return D(d | _mm512_cmp_pd_mask(a, b, _CMP_NEQ_OQ)); }
  FK_TARGET static bool dany(D d) { return d != 0; }
  FK_TARGET static double hmax(R v) { return _mm512_reduce_max_pd(v); }
  FK_TARGET static double hsum(R v) { return _mm512_reduce_add_pd(v); }

  FK_TARGET static void transpose(R* r) {
    R t[8];
    for (int k = 0; k < 4; ++k) {  // t[2k + j], lane L: column 2L + j, rows 2k, 2k+1
      t[2 * k] = _mm512_unpacklo_pd(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm512_unpackhi_pd(r[2 * k], r[2 * k + 1]);
    }
    for (int j = 0; j < 2; ++j) {
      const R v0 = _mm512_shuffle_f64x2(t[j], t[2 + j], 0x88);
      const R v1 = _mm512_shuffle_f64x2(t[j], t[2 + j], 0xDD);
      const R v2 = _mm512_shuffle_f64x2(t[4 + j], t[6 + j], 0x88);
      const R v3 = _mm512_shuffle_f64x2(t[4 + j], t[6 + j], 0xDD);
      r[j] = _mm512_shuffle_f64x2(v0, v2, 0x88);
      r[2 + j] = _mm512_shuffle_f64x2(v1, v3, 0x88);
      r[4 + j] = _mm512_shuffle_f64x2(v0, v2, 0xDD);
      r[6 + j] = _mm512_shuffle_f64x2(v1, v3, 0xDD);
    }
  }
};

// 8 doubles a vector; load2/store2 move 16 values of float or double.
struct VD {
  using R = __m512d;
  static constexpr int L = 8;
  FK_TARGET static __mmask16 m16(int64_t k) {
    return k >= 16 ? __mmask16(0xFFFF) : k <= 0 ? __mmask16(0) : __mmask16((1u << k) - 1u);
  }
  FK_TARGET static R zero() { return _mm512_setzero_pd(); }
  FK_TARGET static R loadu(const double* p) { return _mm512_loadu_pd(p); }
  FK_TARGET static void storeu(double* p, R v) { _mm512_storeu_pd(p, v); }
  FK_TARGET static R set1(double v) { return _mm512_set1_pd(v); }
  FK_TARGET static R add(R a, R b) { return _mm512_add_pd(a, b); }
  FK_TARGET static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  FK_TARGET static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  FK_TARGET static double hsum(R v) { return _mm512_reduce_add_pd(v); }
  FK_TARGET static void load2(const float* p, int64_t k, R& lo, R& hi) {
    const __m512 v = _mm512_maskz_loadu_ps(m16(k), p);
    lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
  FK_TARGET static void load2(const double* p, int64_t k, R& lo, R& hi) {
    const __mmask16 m = m16(k);
    lo = _mm512_maskz_loadu_pd(__mmask8(m & 0xFF), p);
    hi = _mm512_maskz_loadu_pd(__mmask8(m >> 8), p + 8);
  }
  FK_TARGET static void store2(float* p, int64_t k, R lo, R hi) {
    const __m256 a = _mm512_cvtpd_ps(lo), b = _mm512_cvtpd_ps(hi);
    const __m512 v = _mm512_castpd_ps(_mm512_insertf64x4(
        _mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1));
    _mm512_mask_storeu_ps(p, m16(k), v);
  }
  FK_TARGET static void store2(double* p, int64_t k, R lo, R hi) {
    const __mmask16 m = m16(k);
    _mm512_mask_storeu_pd(p, __mmask8(m & 0xFF), lo);
    _mm512_mask_storeu_pd(p + 8, __mmask8(m >> 8), hi);
  }
};

#include "simd_kernels.h"

}  // namespace avx512

template <>
const Kernels<float>* kernels_avx512<float>() {
  return &avx512::table<float>;
}
template <>
const Kernels<double>* kernels_avx512<double>() {
  return &avx512::table<double>;
}

}  // namespace simd
}  // namespace flashcka

#endif  // x86-64
