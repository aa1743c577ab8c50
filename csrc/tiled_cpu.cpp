// The tiled route's tile kernel: see tiled_cpu.h.
#include "tiled_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "blas.h"
#include "gram_cpu.h"
#include "pool.h"
#include "simd_cpu.h"

namespace flashcka {
namespace {

// A 64-byte aligned scratch buffer (the packed panels are read with aligned loads).
template <class T>
struct Panels {
  T* p = nullptr;
  size_t size = 0;
  void ensure(size_t k) {
    if (k <= size) return;
    std::free(p);
    p = static_cast<T*>(std::aligned_alloc(64, (k * sizeof(T) + 63) / 64 * 64));
    if (p == nullptr) throw std::bad_alloc();
    size = k;
  }
  ~Panels() { std::free(p); }
};

// Σ_c (s·(x_c − μ_c))² in double, each value rounded to T as the panels hold it.
template <class T>
double sq_norm(const T* row, int64_t d, const T* mu, T s) {
  double acc = 0.0;
  for (int64_t c = 0; c < d; ++c) {
    const double v = double(mu != nullptr ? (row[c] - mu[c]) * s : row[c]);
    acc += v * v;
  }
  return acc;
}

// rows × d of s·(x − μ) into a contiguous buffer (the OpenBLAS path).
template <class T>
const T* centred_copy(const T* x, int64_t ld, int64_t rows, int64_t d, const T* mu, T s,
                      std::vector<T>& buf) {
  if (mu == nullptr && ld == d) return x;
  buf.resize(size_t(rows * d));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c)
      buf[size_t(r * d + c)] = mu != nullptr ? (x[r * ld + c] - mu[c]) * s : x[r * ld + c];
  return buf.data();
}

// Rows [r0, r1) of one layer's tile: C (rows × tj, ld tj) = xi[r0:r1] xjᵀ, then the
// epilogue. blas_threads > 0: OpenBLAS (no vector kernels) with that many threads.
template <class T>
void tile_rows(const TileLayer& ly, int64_t r0, int64_t r1, int64_t tj, bool diag, int kernel,
               bool unbiased, T* C, Panels<T>& pa, Panels<T>& pb, std::vector<T>& sj,
               std::vector<T>& ca, std::vector<T>& cb, int blas_threads) {
  const int64_t d = ly.d, rows = r1 - r0;
  const T* xi = static_cast<const T*>(ly.xi) + r0 * ly.ldi;
  const T* xj = static_cast<const T*>(ly.xj);
  const T* mu = static_cast<const T*>(ly.mu);
  const T s = T(ly.scale);
  if (const simd::Kernels<T>* kk = simd::kernels<T>()) {
    const int64_t P = simd::panel_rows<T>();
    bool varies = false;
    for (int64_t c0 = 0; c0 < d; c0 += simd::kChunk) {
      const int64_t w = std::min<int64_t>(simd::kChunk, d - c0);
      pa.ensure(size_t((rows + P - 1) / P * P * w));
      pb.ensure(size_t((tj + P - 1) / P * P * w));
      kk->pack(xi + c0, ly.ldi, rows, w, mu != nullptr ? mu + c0 : nullptr, s, pa.p, &varies);
      kk->pack(xj + c0, ly.ldj, tj, w, mu != nullptr ? mu + c0 : nullptr, s, pb.p, &varies);
      kk->gemm_panels(pa.p, rows, pb.p, tj, w, C, tj, c0 > 0);
    }
  } else {
    const T* a = centred_copy(xi, ly.ldi, rows, d, mu, s, ca);
    const T* b = centred_copy(xj, ly.ldj, tj, d, mu, s, cb);
    set_blas_threads(blas_threads);
    gemm_abt(int(rows), int(tj), int(d), a, int(d), b, int(d), T(0), C);
  }
  const T shift = T(ly.shift);
  if (kernel != 0) {
    sj.resize(size_t(tj));
    for (int64_t j = 0; j < tj; ++j) sj[size_t(j)] = T(sq_norm(xj + j * ly.ldj, d, mu, s));
    const T tol = T(ly.tol), neg = T(-ly.two_s2);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r0 + r;
      const T si = T(sq_norm(xi + r * ly.ldi, d, mu, s));
      T* c = C + r * tj;
      for (int64_t j = 0; j < tj; ++j) {
        const T sc = si + sj[size_t(j)];
        T dd = sc - T(2) * c[j];
        if (!(dd > T(0))) dd = T(0);
        if (dd <= tol * sc || (diag && i == j)) dd = T(0);
        if (kernel == 2)
          c[j] = dd;
        else
          c[j] = (dd == T(0) ? T(1) : T(std::exp(dd / neg))) - (ly.has_shift ? shift : T(0));
      }
    }
  } else if (ly.has_shift) {
    for (int64_t k = 0; k < rows * tj; ++k) C[k] -= shift;
  }
  if (diag && unbiased && kernel != 2)
    for (int64_t i = std::max<int64_t>(r0, 0); i < std::min<int64_t>(r1, tj); ++i)
      C[(i - r0) * tj + i] = T(0);
}

// Row and column sums of one layer's tile (ti × tj), in double.
template <class T>
void tile_sums(const T* C, int64_t ti, int64_t tj, double* rs, double* cs) {
  for (int64_t j = 0; j < tj; ++j) cs[j] = 0.0;
  for (int64_t i = 0; i < ti; ++i) {
    const T* c = C + i * tj;
    double r = 0.0;
    for (int64_t j = 0; j < tj; ++j) {
      const double v = double(c[j]);
      r += v;
      cs[j] += v;
    }
    rs[i] = r;
  }
}

template <class T>
void run(const TileLayer* layers, int64_t count, int64_t ti, int64_t tj, bool diag, int kernel,
         bool unbiased, T* out, double* rsum, double* csum, int threads) {
  const bool simd = simd::kernels<T>() != nullptr;
  const int nt = simd ? std::max(1, threads) : 1;
  // jobs: (layer, row block); blocks of whole panels, enough of them to feed every thread
  const int64_t P = simd::panel_rows<T>();
  int64_t blocks = count >= nt ? 1 : (2 * nt + count - 1) / count;
  int64_t rb = std::max<int64_t>(P, (ti + blocks - 1) / blocks / P * P);
  if (rb <= 0) rb = ti;
  blocks = (ti + rb - 1) / rb;
  const int64_t jobs = count * blocks;
  std::atomic<int64_t> next{0};
  Pool::get().run(int(std::min<int64_t>(nt, jobs)), [&](int) {
    Panels<T> pa, pb;
    std::vector<T> sj, ca, cb;
    for (int64_t job; (job = next.fetch_add(1)) < jobs;) {
      const int64_t l = job / blocks, b = job % blocks;
      const int64_t r0 = b * rb, r1 = std::min(ti, r0 + rb);
      tile_rows<T>(layers[l], r0, r1, tj, diag, kernel, unbiased, out + l * ti * tj + r0 * tj,
                   pa, pb, sj, ca, cb, simd ? 1 : std::max(1, threads));
    }
  });
  if (rsum == nullptr) return;
  std::atomic<int64_t> next_sum{0};
  Pool::get().run(int(std::min<int64_t>(std::max(1, threads), count)), [&](int) {
    for (int64_t l; (l = next_sum.fetch_add(1)) < count;)
      tile_sums<T>(out + l * ti * tj, ti, tj, rsum + l * ti, csum + l * tj);
  });
}

template <class T, class U>
double histogram(const T* tile, int64_t ti, int64_t tj, bool diag, uint64_t pre, int nb,
                 int64_t* hist) {
  constexpr int W = int(8 * sizeof(U));
  const int top = W - nb, low = W - nb - 16;
  T best = T(0);
  for (int64_t i = 0; i < ti; ++i) {
    const T* row = tile + i * tj;
    for (int64_t j = diag ? i + 1 : 0; j < tj; ++j) {
      U bits;
      std::memcpy(&bits, row + j, sizeof(U));
      if (nb > 0 && uint64_t(bits >> top) != pre) continue;
      ++hist[(bits >> low) & 0xFFFF];
      if (row[j] > best) best = row[j];
    }
  }
  return double(best);
}

}  // namespace

double tile_histogram(const void* tile, int64_t ti, int64_t tj, bool diag, int ct,
                      uint64_t pre, int nb, int64_t* hist) {
  if (ct == kF64)
    return histogram<double, uint64_t>(static_cast<const double*>(tile), ti, tj, diag, pre, nb,
                                       hist);
  return histogram<float, uint32_t>(static_cast<const float*>(tile), ti, tj, diag, pre, nb,
                                    hist);
}

void kernel_tiles(const TileLayer* layers, int64_t count, int64_t ti, int64_t tj, bool diag,
                  int ct, int kernel, bool unbiased, void* out, double* rsum, double* csum,
                  int threads) {
  if (ct == kF64)
    run<double>(layers, count, ti, tj, diag, kernel, unbiased, static_cast<double*>(out),
                rsum, csum, threads);
  else
    run<float>(layers, count, ti, tj, diag, kernel, unbiased, static_cast<float*>(out), rsum,
               csum, threads);
}

}  // namespace flashcka
