// CPU kernels: fused centered Gram (SYRK on one triangle), centering, packed pair stage.
// Raw pointers, shapes and strides only; the Python side (backends/native.py) checks
// every argument before calling in.
#pragma once
#include <cstdint>

namespace flashcka {

enum DType : int { kF32 = 0, kF64 = 1 };

// A representation viewed as (n, a, b): element (i, j, k) at x[i*s0 + j*s1 + k*s2]
// (strides in elements), flattened feature index c = j*b + k, d = a*b.
struct Layout {
  int64_t n, a, b, s0, s1, s2;
};

struct GramArgs {
  int kernel = 0;          // 0 linear, 1 rbf
  double sigma = 0.0;      // rbf: > 0 absolute; <= 0 median heuristic
  double threshold = 1.0;  // rbf median: sigma^2 = threshold^2 * median(D)
  bool unbiased = true;
  int threads = 1;
  double scale = 1.0;      // the Gram is built from scale·(x − μ) (a power of two: exact)
};

// Result: ||scale·(x - mu)||_F^2 (trace of the linear Gram) and status (1 = zero bandwidth).
struct GramResult {
  double sq_norm;
  int status;
};

// Centered Gram of x - 1 mu^T written as a packed row into out (compute dtype ct):
// [sqrt(2) * strict upper triangle, row-major (n(n-1)/2)] (+ [diag (n)] when biased).
GramResult centered_gram_row(const void* x, int x_dtype, const Layout& lay, const void* mu,
                             void* out, int ct, const GramArgs& args);

// Uncentered kernel matrix (n, n), full and symmetric, of x - 1 mu^T (mu may be null).
GramResult kernel_matrix(const void* x, int x_dtype, const Layout& lay, const void* mu,
                         void* out, int ct, const GramArgs& args);

// mu (a*b, dtype ct) = column mean of x viewed as (n, a, b), accumulated in double.
// Returns max |x_ic − μ_c| over all elements (from per-column min and max; NaN/Inf when x
// holds them), which the caller turns into a power-of-two scale.
double column_stats(const void* x, int x_dtype, const Layout& lay, void* mu, int ct,
                    int threads);

// U-centering or HKH of a contiguous (n, n) matrix k (any, not necessarily symmetric).
void center_full(const void* k, void* out, int64_t n, int dtype, bool unbiased);

// out (la, lb, contiguous, dtype) = ga gb^T; ga (la, m) ld lda, gb (lb, m) ld ldb.
// Same pointer and shape: one SYRK and a mirror.
void pair(const void* ga, int64_t la, int64_t lda, const void* gb, int64_t lb, int64_t ldb,
          int64_t m, void* out, int dtype, int threads);

}  // namespace flashcka
