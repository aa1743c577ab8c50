// Thin typed wrappers over OpenBLAS from the scipy-openblas32 wheel (symbols prefixed
// "scipy_", 32-bit integers). Host code only; no torch.
#pragma once
#include <cblas.h>

#include <cstdint>

namespace flashcka {

// C (n, n, row-major, ld n) upper triangle = alpha·A Aᵀ + beta·C, A (n, k) with ld lda.
inline void syrk_upper(int n, int k, const float* a, int lda, float beta, float* c) {
  scipy_cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, n, k, 1.0f, a, lda, beta, c, n);
}
inline void syrk_upper(int n, int k, const double* a, int lda, double beta, double* c) {
  scipy_cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, n, k, 1.0, a, lda, beta, c, n);
}

// C (m, p, row-major, ld p) = A Bᵀ + beta·C; A (m, k) ld lda, B (p, k) ld ldb.
inline void gemm_abt(int m, int p, int k, const float* a, int lda, const float* b, int ldb,
                     float beta, float* c) {
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, p, k, 1.0f, a, lda, b, ldb,
                    beta, c, p);
}
inline void gemm_abt(int m, int p, int k, const double* a, int lda, const double* b, int ldb,
                     double beta, double* c) {
  scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, p, k, 1.0, a, lda, b, ldb,
                    beta, c, p);
}

// OpenBLAS threads: set only when it changes (the call is not free).
inline void set_blas_threads(int t) {
  static int current = -1;
  if (t < 1) t = 1;
  if (t != current) {
    scipy_openblas_set_num_threads(t);
    current = t;
  }
}

}  // namespace flashcka
