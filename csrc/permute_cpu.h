// The permutation null's pair stage (python/flashcka/core/calibrate.py, docs/design.md §5):
// the pair products of side A's packed rows with side B's centered Grams whose samples are
// permuted, one (la, lb) product per permutation, gathering B as the products go (no
// permuted copy of any row is made). Raw pointers and shapes only; the Python side
// (backends/native.py) checks every argument before calling in.
#pragma once
#include <cstdint>

namespace flashcka {

// out[p, a, b] (count, la, lb, float64, contiguous) =
//     Σ_{i<j} ga[a·lda + k(i, j)] · B[(π_p(i)·n + π_p(j))·lbp + b]
//   + Σ_i    ga[a·lda + n(n−1)/2 + i] · B[(π_p(i)·n + π_p(i))·lbp + b]   (diag only)
// with k(i, j) the packed row-major index of (i, j) in the strict upper triangle.
//   ga: la packed rows (ld lda): [√2·strict upper of C_a] (+ [diag C_a] when diag);
//   B:  (n, n, lbp) contiguous, B[p, q, b] = √2·C_b[p, q] off the diagonal, C_b[p, p] on it
//       (0 for the unbiased estimator), lbp ≥ lb a multiple of 16 (float) / 8 (double);
//   perms: (count, n) int64, each a permutation of 0..n−1 (not checked here).
// Sums in the rows' dtype along each row i of the triangle, then in double; each
// permutation's numbers do not depend on the thread count or on the other permutations.
void pair_permuted(const void* ga, int64_t la, int64_t lda, const void* bfull, int64_t lb,
                   int64_t lbp, int64_t n, bool diag, const int64_t* perms, int64_t count,
                   double* out, int dtype, int threads);

}  // namespace flashcka
