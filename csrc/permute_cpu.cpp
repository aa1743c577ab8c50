// The permutation null's pair stage: see permute_cpu.h.
//
// One permutation π at a time (threads take permutations in turn; each permutation's sums
// are the same whichever thread runs it). For a tile of RA rows of A and one vector of B's
// layers, row i of the triangle walks j > i: A's values are read in order (the packed row
// as it lies, one broadcast each), B's from row π(i) of the full (n, n, lbp) array at
// column π(j) — one contiguous vector of lbp-wide layer values, from an n·lbp block that
// stays in L1/L2 for the whole row. So the gather costs one vector load per RA fused
// multiply-adds, and no index table or permuted copy is formed.
//
// Vectors are GCC/Clang vector extensions of 64 bytes; the same template is compiled for
// AVX-512, AVX2+FMA and the baseline (SSE2) by target attributes, chosen by the set the
// rest of the module uses (simd::active(): FLASHCKA_SIMD forces it).
#include "permute_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "gram_cpu.h"
#include "pool.h"
#include "simd_cpu.h"

namespace flashcka {
namespace {

template <class T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <class T>
using Vec = typename VecOf<T>::type;
static_assert(sizeof(Vec<float>) == 64 && sizeof(Vec<double>) == 64, "64-byte vectors");

// total[r][c] += acc[r][c] (in double).
template <class T, int RA>
__attribute__((always_inline)) inline void flush(const Vec<T>* acc,
                                                 double (*total)[64 / sizeof(T)]) {
  constexpr int W = int(64 / sizeof(T));
  for (int r = 0; r < RA; ++r) {
    T v[W];
    std::memcpy(v, &acc[r], sizeof(v));
    for (int c = 0; c < W; ++c) total[r][c] += double(v[c]);
  }
}

// A's rows as tiles of RA rows, value-major: at[t·mt·RA + k·RA + r] = ga[(t·RA + r)·lda + k]
// (0 past la), so that the RA values a position k needs are consecutive: one pointer, RA
// broadcasts at fixed offsets (no register per row). Built once per call, shared by its
// permutations.
template <class T>
std::vector<T> a_tiles(const T* ga, int64_t la, int64_t lda, int64_t mt, int RA) {
  const int64_t tiles = (la + RA - 1) / RA;
  std::vector<T> at(size_t(tiles * mt * RA), T(0));
  for (int64_t a = 0; a < la; ++a) {
    T* dst = at.data() + (a / RA) * mt * RA + a % RA;
    const T* src = ga + a * lda;
    for (int64_t k = 0; k < mt; ++k) dst[k * RA] = src[k];
  }
  return at;
}

template <class T, int RA>
__attribute__((always_inline)) inline void permuted_one(const T* at, int64_t la, int64_t mt,
                                                        const T* B, int64_t lb, int64_t lbp,
                                                        int64_t n, bool diag,
                                                        const int64_t* pi, double* out) {
  constexpr int W = int(64 / sizeof(T));
  const int64_t m0 = n * (n - 1) / 2;
  for (int64_t b0 = 0; b0 < lb; b0 += W) {
    for (int64_t a0 = 0; a0 < la; a0 += RA) {
      const T* tile = at + (a0 / RA) * mt * RA;
      double total[RA][W];
      for (int r = 0; r < RA; ++r)
        for (int c = 0; c < W; ++c) total[r][c] = 0.0;
      const T* ak = tile;
      for (int64_t i = 0; i + 1 < n; ++i) {
        const T* brow = B + pi[i] * n * lbp + b0;
        Vec<T> acc[RA];
        for (int r = 0; r < RA; ++r) acc[r] = Vec<T>{};
        for (int64_t j = i + 1; j < n; ++j, ak += RA) {
          Vec<T> bv;
          std::memcpy(&bv, brow + pi[j] * lbp, sizeof(bv));
          for (int r = 0; r < RA; ++r) acc[r] += ak[r] * bv;
        }
        flush<T, RA>(acc, total);
      }
      if (diag) {
        Vec<T> acc[RA];
        for (int r = 0; r < RA; ++r) acc[r] = Vec<T>{};
        for (int64_t i = 0; i < n; ++i) {
          Vec<T> bv;
          std::memcpy(&bv, B + (pi[i] * n + pi[i]) * lbp + b0, sizeof(bv));
          for (int r = 0; r < RA; ++r) acc[r] += tile[(m0 + i) * RA + r] * bv;
        }
        flush<T, RA>(acc, total);
      }
      for (int r = 0; r < RA && a0 + r < la; ++r)
        for (int c = 0; c < W && b0 + c < lb; ++c) out[(a0 + r) * lb + b0 + c] = total[r][c];
    }
  }
}

// Rows of A per tile: 12 on AVX-512 (12 accumulators of 16 floats, of 32 registers), 6 on
// AVX2 (a 64-byte vector is 2 registers: 12 of 16), 2 on the baseline (4 each: 8 of 16).
constexpr int kRowsAvx512 = 12, kRowsAvx2 = 6, kRowsPlain = 2;

#if defined(__x86_64__) || defined(_M_X64)
template <class T>
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma"))) void one_avx512(
    const T* at, int64_t la, int64_t mt, const T* B, int64_t lb, int64_t lbp, int64_t n,
    bool diag, const int64_t* pi, double* out) {
  permuted_one<T, kRowsAvx512>(at, la, mt, B, lb, lbp, n, diag, pi, out);
}
template <class T>
__attribute__((target("avx2,fma"))) void one_avx2(const T* at, int64_t la, int64_t mt,
                                                  const T* B, int64_t lb, int64_t lbp,
                                                  int64_t n, bool diag, const int64_t* pi,
                                                  double* out) {
  permuted_one<T, kRowsAvx2>(at, la, mt, B, lb, lbp, n, diag, pi, out);
}
#endif
template <class T>
void one_plain(const T* at, int64_t la, int64_t mt, const T* B, int64_t lb, int64_t lbp,
               int64_t n, bool diag, const int64_t* pi, double* out) {
  permuted_one<T, kRowsPlain>(at, la, mt, B, lb, lbp, n, diag, pi, out);
}

template <class T>
void pair_permuted_t(const T* ga, int64_t la, int64_t lda, const T* B, int64_t lb,
                     int64_t lbp, int64_t n, bool diag, const int64_t* perms, int64_t count,
                     double* out, int threads) {
  using Fn = void (*)(const T*, int64_t, int64_t, const T*, int64_t, int64_t, int64_t, bool,
                      const int64_t*, double*);
  Fn fn = one_plain<T>;
  int rows = kRowsPlain;
#if defined(__x86_64__) || defined(_M_X64)
  const simd::Isa isa = simd::active();
  if (isa == simd::Isa::avx512) fn = one_avx512<T>, rows = kRowsAvx512;
  if (isa == simd::Isa::avx2) fn = one_avx2<T>, rows = kRowsAvx2;
#endif
  const int64_t mt = n * (n - 1) / 2 + (diag ? n : 0);
  const std::vector<T> at = a_tiles(ga, la, lda, mt, rows);
  std::atomic<int64_t> next{0};
  // small jobs on the calling thread: waking a team costs more than they do
  const int64_t work = count * la * lb * n * n;
  const int nt = work < (int64_t(1) << 22) ? 1
                                           : int(std::max<int64_t>(1, std::min<int64_t>(threads, count)));
  Pool::get().run(nt, [&](int) {
    for (int64_t p; (p = next++) < count;)
      fn(at.data(), la, mt, B, lb, lbp, n, diag, perms + p * n, out + p * la * lb);
  });
}

}  // namespace

void pair_permuted(const void* ga, int64_t la, int64_t lda, const void* bfull, int64_t lb,
                   int64_t lbp, int64_t n, bool diag, const int64_t* perms, int64_t count,
                   double* out, int dtype, int threads) {
  if (dtype == kF32)
    pair_permuted_t(static_cast<const float*>(ga), la, lda, static_cast<const float*>(bfull),
                    lb, lbp, n, diag, perms, count, out, threads);
  else
    pair_permuted_t(static_cast<const double*>(ga), la, lda,
                    static_cast<const double*>(bfull), lb, lbp, n, diag, perms, count, out,
                    threads);
}

}  // namespace flashcka
