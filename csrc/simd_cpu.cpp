// AVX-512 column sums, centre-and-pack and packed SYRK (see simd_cpu.h). Everything here
// is compiled for AVX-512 through the pragma below and only ever called after available()
// said yes; the standard headers come first, so that no inline function shared with the
// other files is compiled for AVX-512.
#include "simd_cpu.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#include <immintrin.h>

namespace flashcka {
namespace simd {

bool available() {
  static const bool ok = [] {
    const char* e = std::getenv("FLASHCKA_SIMD");
    if (e != nullptr && std::strcmp(e, "0") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }();
  return ok;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")

namespace {

template <class T>
struct V;

template <>
struct V<float> {
  using R = __m512;
  using M = __mmask16;
  static constexpr int P = 16;
  static M mask(int64_t k) { return k >= P ? M(0xFFFF) : M((1u << k) - 1u); }
  static R zero() { return _mm512_setzero_ps(); }
  static R load(const float* p) { return _mm512_load_ps(p); }
  static R loadz(M m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R abs(R a) { return _mm512_abs_ps(a); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }  // b when a is NaN
  static M neq(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_OQ); }
  static void store(float* p, R v) { _mm512_store_ps(p, v); }
  static void stores(float* p, M m, R v) { _mm512_mask_storeu_ps(p, m, v); }
  static double hmax(R v) { return double(_mm512_reduce_max_ps(v)); }
  static float hsum(R v) { return _mm512_reduce_add_ps(v); }

  // r[i] = row i (16 columns) -> r[c] = column c (16 rows).
  static void transpose(R* r) {
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
struct V<double> {
  using R = __m512d;
  using M = __mmask8;
  static constexpr int P = 8;
  static M mask(int64_t k) { return k >= P ? M(0xFF) : M((1u << k) - 1u); }
  static R zero() { return _mm512_setzero_pd(); }
  static R load(const double* p) { return _mm512_load_pd(p); }
  static R loadz(M m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static R set1(double v) { return _mm512_set1_pd(v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R abs(R a) { return _mm512_abs_pd(a); }
  static R max(R a, R b) { return _mm512_max_pd(a, b); }
  static M neq(R a, R b) { return _mm512_cmp_pd_mask(a, b, _CMP_NEQ_OQ); }
  static void store(double* p, R v) { _mm512_store_pd(p, v); }
  static void stores(double* p, M m, R v) { _mm512_mask_storeu_pd(p, m, v); }
  static double hmax(R v) { return _mm512_reduce_max_pd(v); }
  static double hsum(R v) { return _mm512_reduce_add_pd(v); }

  static void transpose(R* r) {
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

// 16 floats or doubles at p (masked) as two vectors of 8 doubles (lo, hi), and back.
inline void load_pd(const float* p, __mmask16 m, __m512d& lo, __m512d& hi) {
  const __m512 v = _mm512_maskz_loadu_ps(m, p);
  lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
inline void load_pd(const double* p, __mmask16 m, __m512d& lo, __m512d& hi) {
  lo = _mm512_maskz_loadu_pd(__mmask8(m & 0xFF), p);
  hi = _mm512_maskz_loadu_pd(__mmask8(m >> 8), p + 8);
}
inline void store_pd(float* p, __mmask16 m, __m512d lo, __m512d hi) {
  const __m256 a = _mm512_cvtpd_ps(lo), b = _mm512_cvtpd_ps(hi);
  const __m512 v = _mm512_castpd_ps(
      _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1));
  _mm512_mask_storeu_ps(p, m, v);
}
inline void store_pd(double* p, __mmask16 m, __m512d lo, __m512d hi) {
  _mm512_mask_storeu_pd(p, __mmask8(m & 0xFF), lo);
  _mm512_mask_storeu_pd(p + 8, __mmask8(m >> 8), hi);
}

// One tile: C[r][c] (+)= Σ_k a[k·P + r] · b[k·P + c] for rows r < R (the panel's live rows:
// padded rows cost nothing) and the columns in cm.
template <class T, bool Acc, int R>
inline void tile(const T* a, const T* b, int64_t w, T* C, int64_t ldc, typename V<T>::M cm) {
  using W = V<T>;
  constexpr int P = W::P;
  typename W::R acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = W::zero();
  for (int64_t k = 0; k < w; ++k) {
    const typename W::R bv = W::load(b + k * P);
    const T* ak = a + k * P;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = W::fma(W::set1(ak[r]), bv, acc[r]);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    T* cr = C + r * ldc;
    W::stores(cr, cm, Acc ? W::add(W::loadz(cm, cr), acc[r]) : acc[r]);
  }
}

template <class T, bool Acc, int R = V<T>::P>
inline void tile_rows(int64_t rows, const T* a, const T* b, int64_t w, T* C, int64_t ldc,
                      typename V<T>::M cm) {
  if constexpr (R > 1) {
    if (rows < R) return tile_rows<T, Acc, R - 1>(rows, a, b, w, C, ldc, cm);
  }
  tile<T, Acc, R>(a, b, w, C, ldc, cm);
}

template <class T>
inline void tile_any(bool acc, int64_t rows, const T* a, const T* b, int64_t w, T* C,
                     int64_t ldc, typename V<T>::M cm) {
  if (acc)
    tile_rows<T, true>(rows, a, b, w, C, ldc, cm);
  else
    tile_rows<T, false>(rows, a, b, w, C, ldc, cm);
}

}  // namespace

template <class T>
void column_sums(const T* src, int64_t ld, int64_t n, int64_t w, double* acc) {
  for (int64_t c = 0; c < w; ++c) acc[c] = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = src + i * ld;
    int64_t c = 0;
    for (; c + 16 <= w; c += 16) {
      __m512d lo, hi;
      load_pd(row + c, __mmask16(0xFFFF), lo, hi);
      _mm512_storeu_pd(acc + c, _mm512_add_pd(_mm512_loadu_pd(acc + c), lo));
      _mm512_storeu_pd(acc + c + 8, _mm512_add_pd(_mm512_loadu_pd(acc + c + 8), hi));
    }
    for (; c < w; ++c) acc[c] += double(row[c]);
  }
}

template <class T, bool Stats>
double pack_t(const T* src, int64_t ld, int64_t n, int64_t w, const T* mu, T s, T* out,
              bool* varies) {
  using W = V<T>;
  using R = typename W::R;
  constexpr int P = W::P;
  const int64_t panels = (n + P - 1) / P;
  const R sv = W::set1(s);
  R am = W::zero();
  typename W::M diff = 0;
  for (int64_t c0 = 0; c0 < w; c0 += P) {
    const typename W::M cm = W::mask(w - c0);
    const R mv = mu != nullptr ? W::loadz(cm, mu + c0) : W::zero();
    const R x0 = W::loadz(cm, src + c0);  // row 0 of the chunk
    for (int64_t p = 0; p < panels; ++p) {
      R r[P];
      const int64_t rows = n - p * P < P ? n - p * P : P;
      for (int64_t i = 0; i < P; ++i) {
        if (i >= rows) {
          r[i] = W::zero();
        } else if (Stats) {
          const R b = W::loadz(cm, src + (p * P + i) * ld + c0);
          diff |= W::neq(b, x0);
          const R v = W::sub(b, mv);
          am = W::max(W::abs(v), am);
          r[i] = W::mul(v, sv);
        } else {
          r[i] = W::loadz(cm, src + (p * P + i) * ld + c0);
        }
      }
      W::transpose(r);
      T* o = out + p * w * P + c0 * P;
      const int64_t cols = w - c0 < P ? w - c0 : P;
      for (int64_t c = 0; c < cols; ++c) W::store(o + c * P, r[c]);
    }
  }
  if (diff != 0) *varies = true;
  return W::hmax(am);
}

template <class T>
double pack(const T* src, int64_t ld, int64_t n, int64_t w, const T* mu, T s, T* out,
            bool* varies) {
  return pack_t<T, true>(src, ld, n, w, mu, s, out, varies);
}

template <class T>
void prefetch_rows(const T* src, int64_t ld, int64_t n, int64_t w) {
  if (n * w * int64_t(sizeof(T)) > (int64_t(256) << 10)) return;
  const char* base = reinterpret_cast<const char*>(src);
  const int64_t bytes = w * int64_t(sizeof(T)), stride = ld * int64_t(sizeof(T));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(base + i * stride + b, _MM_HINT_T1);
}

template <class T>
void pack_plain(const T* src, int64_t ld, int64_t n, int64_t w, T* out) {
  pack_t<T, false>(src, ld, n, w, nullptr, T(1), out, nullptr);
}

template <class T>
void gemm_panels(const T* pa, int64_t na, const T* pb, int64_t nb, int64_t w, T* C,
                 int64_t ldc, bool accumulate) {
  using W = V<T>;
  constexpr int P = W::P;
  for (int64_t i = 0; i * P < na; ++i) {
    const int64_t rows = na - i * P < P ? na - i * P : P;
    for (int64_t j = 0; j * P < nb; ++j) {
      const typename W::M cm = W::mask(nb - j * P);
      tile_any<T>(accumulate, rows, pa + i * w * P, pb + j * w * P, w, C + i * P * ldc + j * P,
                  ldc, cm);
    }
  }
}

template <class T>
void syrk_panels(const T* packed, int64_t n, int64_t w, int64_t t0, int64_t t1, T* C,
                 int64_t ldc, bool accumulate) {
  using W = V<T>;
  constexpr int P = W::P;
  const int64_t panels = (n + P - 1) / P;
  int64_t t = 0;
  for (int64_t i = 0; i < panels && t < t1; ++i) {
    if (t + (panels - i) <= t0) {  // the whole tile row is before t0
      t += panels - i;
      continue;
    }
    const T* a = packed + i * w * P;
    const int64_t rows = n - i * P < P ? n - i * P : P;
    for (int64_t j = i; j < panels && t < t1; ++j, ++t) {
      if (t < t0) continue;
      tile_any<T>(accumulate, rows, a, packed + j * w * P, w, C + i * P * ldc + j * P, ldc,
                  W::mask(n - j * P));
    }
  }
}

template <class T>
void dot_rows(const T* a, int64_t lda, int64_t la, const T* b, int64_t ldb, int64_t lb,
              int64_t w, T* C, int64_t ldc, bool accumulate, bool upper) {
  using W = V<T>;
  using R = typename W::R;
  constexpr int P = W::P;
  for (int64_t ia = 0; ia < la; ia += 4) {
    const T* ar[4];
    for (int r = 0; r < 4; ++r) ar[r] = a + (ia + r < la ? ia + r : la - 1) * lda;
    for (int64_t ib = upper ? ia : 0; ib < lb; ib += 4) {
      const T* br[4];
      for (int c = 0; c < 4; ++c) br[c] = b + (ib + c < lb ? ib + c : lb - 1) * ldb;
      R acc[4][4];
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) acc[r][c] = W::zero();
      auto step = [&](int64_t k, typename W::M m) {
        R av[4], bv[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) av[r] = W::loadz(m, ar[r] + k);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) bv[c] = W::loadz(m, br[c] + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
          for (int c = 0; c < 4; ++c) acc[r][c] = W::fma(av[r], bv[c], acc[r][c]);
      };
      int64_t k = 0;
      for (; k + P <= w; k += P) step(k, W::mask(P));
      if (k < w) step(k, W::mask(w - k));
      T sum[4][4];  // (fixed indices: the accumulators stay in registers in the loop above)
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) sum[r][c] = W::hsum(acc[r][c]);
      for (int r = 0; r < 4 && ia + r < la; ++r)
        for (int c = 0; c < 4 && ib + c < lb; ++c) {
          T* o = C + (ia + r) * ldc + ib + c;
          *o = accumulate ? *o + sum[r][c] : sum[r][c];
        }
    }
  }
}

template void dot_rows<float>(const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                              int64_t, float*, int64_t, bool, bool);
template void dot_rows<double>(const double*, int64_t, int64_t, const double*, int64_t, int64_t,
                               int64_t, double*, int64_t, bool, bool);

template void column_sums<float>(const float*, int64_t, int64_t, int64_t, double*);
template void column_sums<double>(const double*, int64_t, int64_t, int64_t, double*);
template double pack<float>(const float*, int64_t, int64_t, int64_t, const float*, float,
                            float*, bool*);
template double pack<double>(const double*, int64_t, int64_t, int64_t, const double*, double,
                             double*, bool*);
template void prefetch_rows<float>(const float*, int64_t, int64_t, int64_t);
template void prefetch_rows<double>(const double*, int64_t, int64_t, int64_t);
template void pack_plain<float>(const float*, int64_t, int64_t, int64_t, float*);
template void pack_plain<double>(const double*, int64_t, int64_t, int64_t, double*);
template void gemm_panels<float>(const float*, int64_t, const float*, int64_t, int64_t, float*,
                                 int64_t, bool);
template void gemm_panels<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                  double*, int64_t, bool);
template void syrk_panels<float>(const float*, int64_t, int64_t, int64_t, int64_t, float*,
                                 int64_t, bool);
template void syrk_panels<double>(const double*, int64_t, int64_t, int64_t, int64_t, double*,
                                  int64_t, bool);



template <class T>
void center_pack(const T* K, const T* dg, int64_t n, bool unbiased, T* out) {
  std::vector<double> r(size_t(n) + 16, 0.0), m(size_t(n) + 16, 0.0);
  for (int64_t i = 0; i < n; ++i) {  // r: row sums of the symmetric K without its diagonal
    const T* Ki = K + i * n;
    __m512d ri = _mm512_setzero_pd();
    for (int64_t j = i + 1; j < n; j += 16) {
      const __mmask16 mk = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1u);
      __m512d lo, hi;
      load_pd(Ki + j, mk, lo, hi);
      ri = _mm512_add_pd(ri, _mm512_add_pd(lo, hi));
      _mm512_storeu_pd(&r[size_t(j)], _mm512_add_pd(_mm512_loadu_pd(&r[size_t(j)]), lo));
      _mm512_storeu_pd(&r[size_t(j) + 8], _mm512_add_pd(_mm512_loadu_pd(&r[size_t(j) + 8]), hi));
    }
    r[size_t(i)] += _mm512_reduce_add_pd(ri) + (unbiased ? 0.0 : double(dg[i]));
  }
  double S = 0.0;
  for (int64_t i = 0; i < n; ++i) S += r[size_t(i)];
  const double dn = double(n);
  for (int64_t i = 0; i < n; ++i)
    m[size_t(i)] = unbiased ? r[size_t(i)] / (dn - 2) - S / (2 * (dn - 1) * (dn - 2))
                            : r[size_t(i)] / dn - S / (2 * dn * dn);
  const __m512d s2 = _mm512_set1_pd(1.4142135623730951);
  T* o = out;
  for (int64_t i = 0; i < n; ++i) {
    const T* Ki = K + i * n;
    const __m512d mi = _mm512_set1_pd(m[size_t(i)]);
    for (int64_t j = i + 1; j < n; j += 16) {
      const __mmask16 mk = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1u);
      __m512d lo, hi;
      load_pd(Ki + j, mk, lo, hi);
      auto centred = [&](__m512d k, int64_t at) {  // √2·(K_ij − m_i − m_j)
        const __m512d mj = _mm512_loadu_pd(&m[size_t(at)]);
        return _mm512_mul_pd(s2, _mm512_sub_pd(_mm512_sub_pd(k, mi), mj));
      };
      store_pd(o + (j - i - 1), mk, centred(lo, j), centred(hi, j + 8));
    }
    o += n - i - 1;
  }
  if (!unbiased)
    for (int64_t i = 0; i < n; ++i) *o++ = T(double(dg[i]) - 2 * m[size_t(i)]);
}

template void center_pack<float>(const float*, const float*, int64_t, bool, float*);
template void center_pack<double>(const double*, const double*, int64_t, bool, double*);

#pragma GCC pop_options

}  // namespace simd
}  // namespace flashcka
