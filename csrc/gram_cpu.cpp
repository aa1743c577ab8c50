// Fused centered Gram on the CPU (DESIGN.md §1-2).
//
//   x (n, a, b) strided, mu (d = a·b)  ->  K = (x − 1μᵀ)(x − 1μᵀ)ᵀ, upper triangle only
//   (SYRK over column chunks: x − μ is loaded chunk by chunk into a cache-sized buffer,
//   so activations are read once and no (n, d) copy is made), then in one pass over the
//   triangle: optional RBF (D_ab = K_aa + K_bb − 2K_ab, median by selection, exp), and
//   U-centering / HKH written straight into the packed row
//   [√2·strict upper (n(n−1)/2, row-major)] (+ [diag (n)] when biased),
//   so that a plain dot product of two rows is ⟨C_a, C_b⟩_F.
#include "gram_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "blas.h"

namespace flashcka {
namespace {

constexpr double kSqrt2 = 1.4142135623730951;

// dst (n, c1 − c0) row-major = columns [c0, c1) of s·(x − 1μᵀ) (μ may be null: s·x),
// rows [i0, i1). s is a power of two, so the product is exact.
template <class I, class T>
void load_centered(const I* x, const Layout& L, const T* mu, T s, int64_t c0, int64_t c1,
                   T* dst, int64_t i0, int64_t i1) {
  const int64_t w = c1 - c0;
  for (int64_t i = i0; i < i1; ++i) {
    const I* xi = x + i * L.s0;
    T* di = dst + i * w;
    int64_t j = c0 / L.b, k = c0 % L.b, c = c0;
    while (c < c1) {
      const int64_t seg = std::min(L.b - k, c1 - c);
      const I* xp = xi + j * L.s1 + k * L.s2;
      T* dp = di + (c - c0);
      if (mu != nullptr) {
        const T* mp = mu + c;
        if (L.s2 == 1) {
          for (int64_t t = 0; t < seg; ++t) dp[t] = (T(xp[t]) - mp[t]) * s;
        } else {
          for (int64_t t = 0; t < seg; ++t) dp[t] = (T(xp[t * L.s2]) - mp[t]) * s;
        }
      } else {
        for (int64_t t = 0; t < seg; ++t) dp[t] = T(xp[t * L.s2]) * s;
      }
      c += seg;
      k = 0;
      ++j;
    }
  }
}

// Upper triangle of K (n, n, ld n) = (x − 1μᵀ)(x − 1μᵀ)ᵀ; the strict lower part is untouched.
// Split over the feature dimension: `threads` workers each load their own column chunks
// (about 2 MiB each) and run a single-threaded SYRK into their own triangle, summed at the
// end. OpenBLAS stays at one thread: its own thread pool degrades badly when the cores
// are shared (measured here: 2-thread SSYRK 3-8× slower than 1 thread under load).
template <class I, class T>
void gram_upper(const I* x, const Layout& L, const T* mu, T s, T* K, int threads) {
  const int64_t n = L.n, d = L.a * L.b;
  set_blas_threads(1);
  // Straight from x only when BLAS can read it as (n, d) with ld = s0: rows that overlap
  // in memory (s0 < d: unfold, expand, as_strided) are loaded into the buffer instead.
  const bool direct = std::is_same<I, T>::value && mu == nullptr && s == T(1) && L.a == 1 &&
                      L.s2 == 1 && L.s0 >= d && L.s0 <= 0x7fffffff;
  int64_t w = std::max<int64_t>(256, (int64_t(2) << 20) / (int64_t(sizeof(T)) * n));
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, (d + 255) / 256));
  if (n * n * d < (int64_t(1) << 28)) nt = 1;  // under ~3 ms of work: a second thread costs more
  w = std::min(w, (d + nt - 1) / nt);
  const int64_t chunks = (d + w - 1) / w;
  nt = std::min(nt, chunks);
  std::vector<std::vector<T>> partial(static_cast<size_t>(nt - 1));
  auto worker = [&](int64_t t) {
    T* Kt = t == 0 ? K : (partial[t - 1].resize(static_cast<size_t>(n * n)), partial[t - 1].data());
    std::vector<T> buf(direct ? 0 : static_cast<size_t>(n * w));
    bool first = true;
    for (int64_t ch = t; ch < chunks; ch += nt) {
      const int64_t c0 = ch * w, c1 = std::min(d, c0 + w);
      if (direct) {
        syrk_upper(int(n), int(c1 - c0), reinterpret_cast<const T*>(x) + c0 * L.s2, int(L.s0),
                   first ? T(0) : T(1), Kt);
      } else {
        load_centered<I, T>(x, L, mu, s, c0, c1, buf.data(), 0, n);
        syrk_upper(int(n), int(c1 - c0), buf.data(), int(c1 - c0), first ? T(0) : T(1), Kt);
      }
      first = false;
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < nt; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto& th : pool) th.join();
  for (const auto& P : partial)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i; j < n; ++j) K[i * n + j] += P[i * n + j];
}

// numpy.median of the n² squared distances: n zeros and each strict-upper value twice.
// `scr` (M = n(n−1)/2 values) is reordered by selection.
template <class T>
T median_sq_distance(T* scr, int64_t n) {
  const int64_t M = n * (n - 1) / 2, total = n * n;
  const int64_t k1 = (total - 1) / 2, k2 = total / 2;
  T v1 = T(0), v2 = T(0);
  int64_t idx1 = -1;
  if (k1 >= n) {
    idx1 = (k1 - n) / 2;
    std::nth_element(scr, scr + idx1, scr + M);
    v1 = scr[idx1];
  }
  if (k2 >= n) {
    const int64_t idx2 = (k2 - n) / 2;
    if (idx2 == idx1) {
      v2 = v1;
    } else if (idx1 >= 0 && idx2 == idx1 + 1) {
      v2 = *std::min_element(scr + idx2, scr + M);
    } else {
      std::nth_element(scr, scr + idx2, scr + M);
      v2 = scr[idx2];
    }
  }
  return (v1 + v2) / T(2);
}

// In the upper triangle of K: linear Gram -> RBF kernel; dg (n) -> the kernel's diagonal.
// `scr` holds ≥ n(n−1)/2 values (used for the median). Returns 1 on zero bandwidth.
template <class T>
int rbf_upper(T* K, T* dg, int64_t n, T* scr, const GramArgs& args) {
  for (int64_t i = 0; i < n; ++i) {
    T* Ki = K + i * n;
    for (int64_t j = i + 1; j < n; ++j) {
      const T v = dg[i] + dg[j] - T(2) * Ki[j];
      Ki[j] = v < T(0) ? T(0) : v;
    }
  }
  T two_s2;
  if (args.sigma > 0) {  // sigma of the unscaled x: the kernel is that of x itself
    two_s2 = T(2.0 * args.sigma * args.sigma * args.scale * args.scale);
  } else {
    int64_t p = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i + 1; j < n; ++j) {
        const T v = K[i * n + j];
        scr[p++] = v == v ? v : T(INFINITY);  // NaN-safe selection
      }
    const T med = median_sq_distance(scr, n);
    if (!(med > T(0))) {
      // Constant representation (every distance 0): K = 11ᵀ, as the torch backend.
      for (int64_t q = 0; q < p; ++q)
        if (scr[q] > T(0) || scr[q] != scr[q]) return 1;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = i + 1; j < n; ++j) K[i * n + j] = T(1);
        dg[i] = T(1);
      }
      return 0;
    }
    two_s2 = T(2.0 * args.threshold * args.threshold) * med;
  }
  const T neg = -two_s2;
  for (int64_t i = 0; i < n; ++i) {
    T* Ki = K + i * n;
    for (int64_t j = i + 1; j < n; ++j) Ki[j] = std::exp(Ki[j] / neg);
    dg[i] = T(1);
  }
  return 0;
}

// Packed centered row from the upper triangle of a symmetric kernel K and its diagonal.
template <class T>
void center_pack(const T* K, const T* dg, int64_t n, bool unbiased, T* out) {
  std::vector<double> r(size_t(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const T* Ki = K + i * n;
    double ri = 0.0;
    for (int64_t j = i + 1; j < n; ++j) {
      const double v = double(Ki[j]);
      ri += v;
      r[j] += v;
    }
    r[i] += ri + (unbiased ? 0.0 : double(dg[i]));
  }
  double S = 0.0;
  for (double v : r) S += v;
  std::vector<double> m(static_cast<size_t>(n));
  const double dn = double(n);
  for (int64_t i = 0; i < n; ++i)
    m[i] = unbiased ? r[i] / (dn - 2) - S / (2 * (dn - 1) * (dn - 2))
                    : r[i] / dn - S / (2 * dn * dn);
  T* o = out;
  for (int64_t i = 0; i < n; ++i) {
    const T* Ki = K + i * n;
    const double mi = m[i];
    for (int64_t j = i + 1; j < n; ++j) *o++ = T(kSqrt2 * (double(Ki[j]) - mi - m[j]));
  }
  if (!unbiased)
    for (int64_t i = 0; i < n; ++i) *o++ = T(double(dg[i]) - 2 * m[i]);
}

template <class I, class T>
GramResult centered_gram_row_t(const I* x, const Layout& L, const T* mu, T* out,
                               const GramArgs& args) {
  const int64_t n = L.n;
  std::vector<T> K(static_cast<size_t>(n * n));
  gram_upper<I, T>(x, L, mu, T(args.scale), K.data(), args.threads);
  std::vector<T> dg(static_cast<size_t>(n));
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    dg[i] = K[i * n + i];
    sq += double(dg[i]);
  }
  if (args.kernel == 1 && rbf_upper(K.data(), dg.data(), n, out, args) != 0) return {sq, 1};
  center_pack(K.data(), dg.data(), n, args.unbiased, out);
  return {sq, 0};
}

template <class I, class T>
GramResult kernel_matrix_t(const I* x, const Layout& L, const T* mu, T* out,
                           const GramArgs& args) {
  const int64_t n = L.n;
  gram_upper<I, T>(x, L, mu, T(args.scale), out, args.threads);
  std::vector<T> dg(static_cast<size_t>(n));
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    dg[i] = out[i * n + i];
    sq += double(dg[i]);
  }
  if (args.kernel == 1) {
    std::vector<T> scr(static_cast<size_t>(n * (n - 1) / 2 + 1));
    if (rbf_upper(out, dg.data(), n, scr.data(), args) != 0) return {sq, 1};
  }
  for (int64_t i = 0; i < n; ++i) {
    out[i * n + i] = dg[i];
    for (int64_t j = i + 1; j < n; ++j) out[j * n + i] = out[i * n + j];
  }
  return {sq, 0};
}

template <class T>
void center_full_t(const T* k, T* out, int64_t n, bool unbiased) {
  std::vector<double> r(size_t(n), 0.0), c(size_t(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (unbiased && i == j) continue;
      const double v = double(k[i * n + j]);
      r[i] += v;
      c[j] += v;
    }
  double S = 0.0;
  for (double v : r) S += v;
  const double dn = double(n);
  const double div = unbiased ? dn - 2 : dn;
  const double g = unbiased ? S / ((dn - 1) * (dn - 2)) : S / (dn * dn);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      out[i * n + j] = (unbiased && i == j)
                           ? T(0)
                           : T(double(k[i * n + j]) - r[i] / div - c[j] / div + g);
}

// out = ga gbᵀ, split over the row length m: each of `threads` workers runs a
// single-threaded GEMM (or SYRK when ga and gb are the same rows) on its slice into its
// own (la, lb) partial, summed at the end (see gram_upper for why not OpenBLAS threads).
template <class T>
void pair_t(const T* ga, int64_t la, int64_t lda, const T* gb, int64_t lb, int64_t ldb,
            int64_t m, T* out, int threads) {
  set_blas_threads(1);
  const bool same = ga == gb && la == lb && lda == ldb;
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, m / 4096));
  if (la * lb * m < (int64_t(1) << 20)) nt = 1;
  std::vector<std::vector<T>> partial(static_cast<size_t>(nt - 1));
  auto worker = [&](int64_t t) {
    T* o = t == 0 ? out : (partial[t - 1].resize(static_cast<size_t>(la * lb)), partial[t - 1].data());
    const int64_t m0 = m * t / nt, m1 = m * (t + 1) / nt;
    if (same)
      syrk_upper(int(la), int(m1 - m0), ga + m0, int(lda), T(0), o);
    else
      gemm_abt(int(la), int(lb), int(m1 - m0), ga + m0, int(lda), gb + m0, int(ldb), o);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < nt; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto& th : pool) th.join();
  for (const auto& P : partial)
    for (int64_t i = 0; i < la * lb; ++i) out[i] += P[i];
  if (same)
    for (int64_t i = 0; i < la; ++i)
      for (int64_t j = i + 1; j < la; ++j) out[j * la + i] = out[i * la + j];
}

// Calls f.template operator()<I, T>() for the (input, compute) dtype pair.
template <class F>
GramResult dispatch2(int x_dtype, int ct, F f) {
  if (x_dtype == kF32 && ct == kF32) return f(float(), float());
  if (x_dtype == kF64 && ct == kF64) return f(double(), double());
  if (x_dtype == kF32 && ct == kF64) return f(float(), double());
  return f(double(), float());
}

// mu (d) = column mean of x viewed as (n, a, b), accumulated in double, and the largest
// |x_ic − μ_c| (from each column's min and max, in the same pass). Features are split over
// `threads` workers of our own (no OpenMP: see gram_upper).
template <class I, class T>
double column_stats_t(const I* x, const Layout& L, T* mu, int threads) {
  const int64_t n = L.n, d = L.a * L.b;
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, d / 1024));
  if (n * d < (int64_t(1) << 20)) nt = 1;
  std::vector<double> dev(static_cast<size_t>(nt), 0.0);
  auto worker = [&](int64_t t) {
    const int64_t c0 = d * t / nt, c1 = d * (t + 1) / nt, w = c1 - c0;
    std::vector<double> acc(static_cast<size_t>(w), 0.0);
    std::vector<I> lo(static_cast<size_t>(w), std::numeric_limits<I>::infinity());
    std::vector<I> hi(static_cast<size_t>(w), -std::numeric_limits<I>::infinity());
    for (int64_t i = 0; i < n; ++i) {
      const I* xi = x + i * L.s0;
      int64_t j = c0 / L.b, k = c0 % L.b, c = c0;
      while (c < c1) {
        const int64_t seg = std::min(L.b - k, c1 - c);
        const I* xp = xi + j * L.s1 + k * L.s2;
        double* ap = acc.data() + (c - c0);
        I* lp = lo.data() + (c - c0);
        I* hp = hi.data() + (c - c0);
        for (int64_t u = 0; u < seg; ++u) {
          const I v = xp[u * L.s2];
          ap[u] += double(v);
          lp[u] = v < lp[u] ? v : lp[u];
          hp[u] = v > hp[u] ? v : hp[u];
        }
        c += seg;
        k = 0;
        ++j;
      }
    }
    double m = 0.0;
    for (int64_t c = c0; c < c1; ++c) {
      const double mc = acc[c - c0] / double(n);
      mu[c] = T(mc);
      const double e = std::max(double(hi[c - c0]) - mc, mc - double(lo[c - c0]));
      m = e > m || e != e ? e : m;  // NaN propagates
    }
    // A NaN leaves min/max finite but makes the sum (so mc, so e) NaN: it propagates.
    dev[t] = m;
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < nt; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto& th : pool) th.join();
  double m = 0.0;
  for (double v : dev) m = v > m || v != v ? v : m;
  return m;
}

}  // namespace

GramResult centered_gram_row(const void* x, int x_dtype, const Layout& lay, const void* mu,
                             void* out, int ct, const GramArgs& args) {
  return dispatch2(x_dtype, ct, [&](auto i_tag, auto t_tag) {
    using I = decltype(i_tag);
    using T = decltype(t_tag);
    return centered_gram_row_t<I, T>(static_cast<const I*>(x), lay,
                                     static_cast<const T*>(mu), static_cast<T*>(out), args);
  });
}

GramResult kernel_matrix(const void* x, int x_dtype, const Layout& lay, const void* mu,
                         void* out, int ct, const GramArgs& args) {
  return dispatch2(x_dtype, ct, [&](auto i_tag, auto t_tag) {
    using I = decltype(i_tag);
    using T = decltype(t_tag);
    return kernel_matrix_t<I, T>(static_cast<const I*>(x), lay, static_cast<const T*>(mu),
                                 static_cast<T*>(out), args);
  });
}

double column_stats(const void* x, int x_dtype, const Layout& lay, void* mu, int ct,
                    int threads) {
  return dispatch2(x_dtype, ct, [&](auto i_tag, auto t_tag) {
           using I = decltype(i_tag);
           using T = decltype(t_tag);
           return GramResult{column_stats_t<I, T>(static_cast<const I*>(x), lay,
                                                  static_cast<T*>(mu), threads),
                             0};
         })
      .sq_norm;
}

void center_full(const void* k, void* out, int64_t n, int dtype, bool unbiased) {
  if (dtype == kF32)
    center_full_t(static_cast<const float*>(k), static_cast<float*>(out), n, unbiased);
  else
    center_full_t(static_cast<const double*>(k), static_cast<double*>(out), n, unbiased);
}

void pair(const void* ga, int64_t la, int64_t lda, const void* gb, int64_t lb, int64_t ldb,
          int64_t m, void* out, int dtype, int threads) {
  if (dtype == kF32)
    pair_t(static_cast<const float*>(ga), la, lda, static_cast<const float*>(gb), lb, ldb, m,
           static_cast<float*>(out), threads);
  else
    pair_t(static_cast<const double*>(ga), la, lda, static_cast<const double*>(gb), lb, ldb,
           m, static_cast<double*>(out), threads);
}

}  // namespace flashcka
