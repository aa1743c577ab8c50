// simd_kernels.h on AVX2 + FMA: 8 floats (4 doubles) a vector, 16 registers, masks as
// vectors. A panel row of 16 floats (8 doubles) is two vectors; a tile is computed in
// blocks of 6 rows (12 accumulators, 2 column vectors and a broadcast: 15 registers).
// Masked stores are microcoded and slow on AMD Zen 2/3, so full tiles and full blocks
// use plain stores and only edges are masked (or copied element by element). Every
// function here carries FK_TARGET and runs only when simd_cpu.cpp found AVX2 and FMA.
#include "simd_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#define FK_TARGET __attribute__((target("avx2,fma")))

namespace flashcka {
namespace simd {
namespace avx2 {

constexpr const char* kIsaName = "AVX2+FMA";

template <class T>
struct VT;

template <>
struct VT<float> {
  using R = __m256;
  using M = __m256i;
  using D = __m256;
  static constexpr int L = 8, RB = 6, DA = 4, DB = 3;
  FK_TARGET static M mask(int64_t k) {
    const int c = k >= L ? L : k <= 0 ? 0 : int(k);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  FK_TARGET static R zero() { return _mm256_setzero_ps(); }
  FK_TARGET static R load(const float* p) { return _mm256_load_ps(p); }
  FK_TARGET static R loadu(const float* p) { return _mm256_loadu_ps(p); }
  FK_TARGET static R loadz(M m, const float* p) { return _mm256_maskload_ps(p, m); }
  FK_TARGET static R set1(float v) { return _mm256_set1_ps(v); }
  FK_TARGET static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  FK_TARGET static R add(R a, R b) { return _mm256_add_ps(a, b); }
  FK_TARGET static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  FK_TARGET static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  FK_TARGET static R abs(R a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  FK_TARGET static R max(R a, R b) { return _mm256_max_ps(a, b); }  // b when a is NaN
  FK_TARGET static void store(float* p, R v) { _mm256_store_ps(p, v); }
  FK_TARGET static void storeu(float* p, R v) { _mm256_storeu_ps(p, v); }
  FK_TARGET static void stores(float* p, M m, R v) { _mm256_maskstore_ps(p, m, v); }
  FK_TARGET static D dzero() { return _mm256_setzero_ps(); }
  FK_TARGET static D dor(D d, R a, R b) { return _mm256_or_ps(d, _mm256_cmp_ps(a, b, _CMP_NEQ_OQ)); }
  FK_TARGET static bool dany(D d) { return _mm256_movemask_ps(d) != 0; }
  FK_TARGET static float hmax(R v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  FK_TARGET static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // r[i] = row i (8 columns) -> r[c] = column c (8 rows).
  FK_TARGET static void transpose(R* r) {
    R t[8], u[8];
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // u[4h + j], 128-bit half H: column 4H + j, rows 4h..4h+3
      u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
      u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
      u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
      u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
      r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
  }
};

template <>
struct VT<double> {
  using R = __m256d;
  using M = __m256i;
  using D = __m256d;
  static constexpr int L = 4, RB = 6, DA = 4, DB = 3;
  FK_TARGET static M mask(int64_t k) {
    const int64_t c = k >= L ? L : k <= 0 ? 0 : k;
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(c), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  FK_TARGET static R zero() { return _mm256_setzero_pd(); }
  FK_TARGET static R load(const double* p) { return _mm256_load_pd(p); }
  FK_TARGET static R loadu(const double* p) { return _mm256_loadu_pd(p); }
  FK_TARGET static R loadz(M m, const double* p) { return _mm256_maskload_pd(p, m); }
  FK_TARGET static R set1(double v) { return _mm256_set1_pd(v); }
  FK_TARGET static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  FK_TARGET static R add(R a, R b) { return _mm256_add_pd(a, b); }
  FK_TARGET static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  FK_TARGET static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  FK_TARGET static R abs(R a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  FK_TARGET static R max(R a, R b) { return _mm256_max_pd(a, b); }
  FK_TARGET static void store(double* p, R v) { _mm256_store_pd(p, v); }
  FK_TARGET static void storeu(double* p, R v) { _mm256_storeu_pd(p, v); }
  FK_TARGET static void stores(double* p, M m, R v) { _mm256_maskstore_pd(p, m, v); }
  FK_TARGET static D dzero() { return _mm256_setzero_pd(); }
  FK_TARGET static D dor(D d, R a, R b) { return _mm256_or_pd(d, _mm256_cmp_pd(a, b, _CMP_NEQ_OQ)); }
  FK_TARGET static bool dany(D d) { return _mm256_movemask_pd(d) != 0; }
  FK_TARGET static double hmax(R v) {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    m = _mm_max_sd(m, _mm_unpackhi_pd(m, m));
    return _mm_cvtsd_f64(m);
  }
  FK_TARGET static double hsum(R v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
  }
  FK_TARGET static void transpose(R* r) {
    const R t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const R t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};

// 4 doubles a vector; load2/store2 move 8 values of float or double (the epilogue's
// edges element by element: no masked stores).
struct VD {
  using R = __m256d;
  static constexpr int L = 4;
  FK_TARGET static R zero() { return _mm256_setzero_pd(); }
  FK_TARGET static R loadu(const double* p) { return _mm256_loadu_pd(p); }
  FK_TARGET static void storeu(double* p, R v) { _mm256_storeu_pd(p, v); }
  FK_TARGET static R set1(double v) { return _mm256_set1_pd(v); }
  FK_TARGET static R add(R a, R b) { return _mm256_add_pd(a, b); }
  FK_TARGET static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  FK_TARGET static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  FK_TARGET static double hsum(R v) { return VT<double>::hsum(v); }
  FK_TARGET static void load2(const float* p, int64_t k, R& lo, R& hi) {
    const __m256 v = k >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, VT<float>::mask(k));
    lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  }
  FK_TARGET static void load2(const double* p, int64_t k, R& lo, R& hi) {
    if (k >= 8) {
      lo = _mm256_loadu_pd(p);
      hi = _mm256_loadu_pd(p + 4);
      return;
    }
    lo = _mm256_maskload_pd(p, VT<double>::mask(k));
    hi = _mm256_maskload_pd(p + 4, VT<double>::mask(k - 4));
  }
  FK_TARGET static void store2(float* p, int64_t k, R lo, R hi) {
    const __m256 v = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
    if (k >= 8) {
      _mm256_storeu_ps(p, v);
      return;
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, v);
    std::memcpy(p, t, size_t(k) * sizeof(float));
  }
  FK_TARGET static void store2(double* p, int64_t k, R lo, R hi) {
    if (k >= 8) {
      _mm256_storeu_pd(p, lo);
      _mm256_storeu_pd(p + 4, hi);
      return;
    }
    alignas(32) double t[8];
    _mm256_store_pd(t, lo);
    _mm256_store_pd(t + 4, hi);
    std::memcpy(p, t, size_t(k) * sizeof(double));
  }
};

#include "simd_kernels.h"

}  // namespace avx2

template <>
const Kernels<float>* kernels_avx2<float>() {
  return &avx2::table<float>;
}
template <>
const Kernels<double>* kernels_avx2<double>() {
  return &avx2::table<double>;
}

}  // namespace simd
}  // namespace flashcka

#endif  // x86-64
