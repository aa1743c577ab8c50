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
  double sigma = 0.0;      // rbf: > 0 absolute (in x's units); <= 0 median heuristic
  double threshold = 1.0;  // rbf median: sigma^2 = threshold^2 * median(D)
  bool unbiased = true;
  int threads = 1;         // worker threads for the whole call
  bool auto_scale = true;  // pick the power-of-two scale from max |x − μ| (else `scale`)
  double scale = 1.0;      // the Gram is built from scale·(x − μ) (a power of two: exact)
};

// One representation: x (dtype x_dtype, layout lay); mu (d values of the compute dtype)
// or null: then each column's mean is computed as its chunk is loaded; out: the packed row.
struct Layer {
  const void* x;
  int x_dtype;
  Layout lay;
  const void* mu;
  void* out;
};

// Per layer, in x's own units: ‖x − 1μᵀ‖²_F and ‖x‖²_F = that + n·Σμ²; the row's scale
// (the row is the centered Gram of scale·X_c; RBF rows are kernel values: 1), and status
// (1 = zero RBF bandwidth).
struct LayerStats {
  double sq_c, sq, scale, status;  // four doubles: Python reads them as (count, 4)
};
static_assert(sizeof(LayerStats) == 4 * sizeof(double), "LayerStats is read as 4 doubles");

// Packed centered row of each layer, [√2 · strict upper triangle of C, row-major
// (n(n−1)/2)] (+ [diag C (n)] when biased), in compute dtype ct. Layers run in parallel,
// one thread each, when that balances; otherwise one after another, each split over the
// threads by feature chunks.
void centered_gram_rows(const Layer* layers, int64_t count, int ct, const GramArgs& args,
                        LayerStats* stats);

// Kernel matrix (n, n), full and symmetric: linear X Xᵀ (uncentered) or RBF (computed
// from centered features, scale-free). Returns status (1 = zero bandwidth).
int kernel_matrix(const void* x, int x_dtype, const Layout& lay, void* out, int ct,
                  const GramArgs& args);

// U-centering or HKH of a contiguous (n, n) matrix k (any, not necessarily symmetric).
void center_full(const void* k, void* out, int64_t n, int dtype, bool unbiased);

// out (la, lb, contiguous, float64) = ga gb^T, summed in the rows' dtype; ga (la, m) ld
// lda, gb (lb, m) ld ldb. Same pointer and shape: one SYRK and a mirror. The split of the
// work is fixed by m, la, lb and threads (bitwise reproducible).
void pair(const void* ga, int64_t la, int64_t lda, const void* gb, int64_t lb, int64_t ldb,
          int64_t m, double* out, int dtype, int threads);

// out (count, float64) = squared norms of the rows g (count, m), ld ld, accumulated in
// double (the self terms of the pair stage when the two sides differ).
void row_sq_norms(const void* g, int64_t count, int64_t ld, int64_t m, int dtype, double* out,
                  int threads);

}  // namespace flashcka
