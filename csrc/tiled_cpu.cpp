// The tiled route's tile kernel: see tiled_cpu.h.
#include "tiled_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
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

template <class T>
double sq_norm(const T* row, int64_t d) {
  double s = 0.0;
  for (int64_t c = 0; c < d; ++c) s += double(row[c]) * double(row[c]);
  return s;
}

// Rows [r0, r1) of one layer's tile: C (rows × tj, ld tj) = xi[r0:r1] xjᵀ, then the
// epilogue. blas_threads > 0: OpenBLAS (no vector kernels) with that many threads.
template <class T>
void tile_rows(const TileLayer& ly, int64_t r0, int64_t r1, int64_t tj, bool diag, int kernel,
               bool unbiased, T* C, Panels<T>& pa, Panels<T>& pb, std::vector<T>& sj,
               int blas_threads) {
  const int64_t d = ly.d, rows = r1 - r0;
  const T* xi = static_cast<const T*>(ly.xi) + r0 * d;
  const T* xj = static_cast<const T*>(ly.xj);
  if (const simd::Kernels<T>* kk = simd::kernels<T>()) {
    const int64_t P = simd::panel_rows<T>();
    for (int64_t c0 = 0; c0 < d; c0 += simd::kChunk) {
      const int64_t w = std::min<int64_t>(simd::kChunk, d - c0);
      pa.ensure(size_t((rows + P - 1) / P * P * w));
      pb.ensure(size_t((tj + P - 1) / P * P * w));
      kk->pack_plain(xi + c0, d, rows, w, pa.p);
      kk->pack_plain(xj + c0, d, tj, w, pb.p);
      kk->gemm_panels(pa.p, rows, pb.p, tj, w, C, tj, c0 > 0);
    }
  } else {
    set_blas_threads(blas_threads);
    gemm_abt(int(rows), int(tj), int(d), xi, int(d), xj, int(d), T(0), C);
  }
  const T shift = T(ly.shift);
  if (kernel != 0) {
    sj.resize(size_t(tj));
    for (int64_t j = 0; j < tj; ++j) sj[size_t(j)] = T(sq_norm(xj + j * d, d));
    const T tol = T(ly.tol), neg = T(-ly.two_s2);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r0 + r;
      const T si = T(sq_norm(xi + r * d, d));
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

template <class T>
void run(const TileLayer* layers, int64_t count, int64_t ti, int64_t tj, bool diag, int kernel,
         bool unbiased, T* out, int threads) {
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
    std::vector<T> sj;
    for (int64_t job; (job = next.fetch_add(1)) < jobs;) {
      const int64_t l = job / blocks, b = job % blocks;
      const int64_t r0 = b * rb, r1 = std::min(ti, r0 + rb);
      tile_rows<T>(layers[l], r0, r1, tj, diag, kernel, unbiased, out + l * ti * tj + r0 * tj,
                   pa, pb, sj, simd ? 1 : std::max(1, threads));
    }
  });
}

}  // namespace

void kernel_tiles(const TileLayer* layers, int64_t count, int64_t ti, int64_t tj, bool diag,
                  int ct, int kernel, bool unbiased, void* out, int threads) {
  if (ct == kF64)
    run<double>(layers, count, ti, tj, diag, kernel, unbiased, static_cast<double*>(out),
                threads);
  else
    run<float>(layers, count, ti, tj, diag, kernel, unbiased, static_cast<float*>(out),
               threads);
}

}  // namespace flashcka
