// Vector kernels of the fused centered Gram (docs/design.md §4, "The native CPU kernels"):
// column sums, centre-and-pack, packed SYRK/GEMM tiles, the pair stage on rows as they lie
// and the U-centring epilogue. One template (simd_kernels.h) over the vector type,
// instantiated per instruction set in its own file (simd_avx512.cpp, simd_avx2.cpp), each
// function compiled for that set alone; kernels<T>() hands gram_cpu.cpp the table of the
// set this CPU runs (chosen once, by CPUID), or null: then OpenBLAS does the products.
//
// Packed panels: the rows of a chunk (n rows × w columns) in panels of P rows (P = 16 for
// float, 8 for double: 64 bytes, one AVX-512 vector or two AVX2 ones), column-major inside
// a panel:
//
//     panel p, column c, row r  ->  out[p·w·P + c·P + r] = s·(x[pP + r][c] − μ_c)
//
// (0 for the rows past n). The product of panel i (each value broadcast) with panel j (the
// P columns as P/lanes vectors) gives a P × P tile of K = X_c X_cᵀ with P² independent
// sums: fused multiply-adds only, no horizontal sums, every operand from a 16 KiB panel.
#pragma once
#include <cstdint>

namespace flashcka {
namespace simd {

// The instruction sets with kernels of their own. FLASHCKA_SIMD=avx512|avx2|0 forces one
// (0, "none" or "openblas": OpenBLAS), so every path can be tested and measured on any
// machine that can run it; unset, the widest this CPU (and OS) supports.
enum class Isa : int { none = 0, avx2 = 1, avx512 = 2 };

// The set in use in this process (decided on first call).
Isa active();
// Whether this CPU can run `isa` (none: always).
bool supported(Isa isa);
// A short name ("AVX-512", "AVX2+FMA", "none") and, when FLASHCKA_SIMD asked for something
// this CPU cannot run or that does not exist, the reason (else empty).
const char* name(Isa isa);
const char* env_error();

template <class T>
constexpr int64_t panel_rows() {
  return int64_t(64 / sizeof(T));
}

// Columns per chunk: a panel is P·256 values = 16 KiB (float and double alike), so the
// broadcast panel stays in L1 while the vector panels stream past it.
constexpr int64_t kChunk = 256;
// The pair stage on rows as they lie (dot_rows) takes up to this many columns at a time,
// so that a tile's row pieces stay in L1.
constexpr int64_t kDotChunk = 1024;

// One instruction set's kernels for T (float or double).
template <class T>
struct Kernels {
  const char* name;

  // acc[c] = Σ_i src[i·ld + c] in double, in row order, c < w ≤ kChunk.
  void (*column_sums)(const T* src, int64_t ld, int64_t n, int64_t w, double* acc);

  // Panels (ceil(n/P) of w·P values) of s·(src − 1μᵀ) (μ = 0 when mu is null). Returns
  // max |src − μ| over the chunk (NaN-blind) and sets *varies when some value differs
  // from row 0's in its column (a constant column gives X_c = 0 exactly).
  double (*pack)(const T* src, int64_t ld, int64_t n, int64_t w, const T* mu, T s, T* out,
                 bool* varies);

  // Panels of src (n rows × w columns, ld) as they are (the pair stage's rows).
  void (*pack_plain)(const T* src, int64_t ld, int64_t n, int64_t w, T* out);

  // Asks for the next chunk's rows (n × w at src, ld) to be brought into L2 while this
  // one is worked on; only when they fit, with room to spare (at most 256 KiB).
  void (*prefetch_rows)(const T* src, int64_t ld, int64_t n, int64_t w);

  // C (na × nb, row-major, ld ldc) = (accumulate: +=) the product of a's and b's panels.
  void (*gemm_panels)(const T* pa, int64_t na, const T* pb, int64_t nb, int64_t w, T* C,
                      int64_t ldc, bool accumulate);

  // The upper-triangle tiles (i, j ≥ i) of panel rows and columns, numbered row by row
  // (0 ≤ t < panels·(panels+1)/2), for t in [t0, t1): C's tile rows [iP, iP+P) × columns
  // [jP, jP+P) (row-major, ld ldc) = (accumulate: +=) the product of the panels. Tiles are
  // clipped at n; a diagonal tile is written whole (callers read the upper triangle only).
  void (*syrk_panels)(const T* packed, int64_t n, int64_t w, int64_t t0, int64_t t1, T* C,
                      int64_t ldc, bool accumulate);

  // Few rows (the pair stage of a dozen layers): C (la × lb, ld ldc) = (accumulate: +=)
  // A Bᵀ over w ≤ kDotChunk columns of A (ld lda) and B (ld ldb) as they lie, no packing.
  // upper: only the tiles on or above the diagonal (A = B; the caller mirrors).
  void (*dot_rows)(const T* a, int64_t lda, int64_t la, const T* b, int64_t ldb, int64_t lb,
                   int64_t w, T* C, int64_t ldc, bool accumulate, bool upper);

  // The packed U-centred (or HKH) row of the upper triangle of K (n × n, ld n) and its
  // diagonal dg: row sums r in double, m_i, then √2·(K_ij − m_i − m_j) rounded once to T.
  // r and m: scratch of n + 16 doubles each.
  void (*center_pack)(const T* K, const T* dg, int64_t n, bool unbiased, T* out, double* r,
                      double* m);
};

// The active set's kernels (null: none, use OpenBLAS).
template <class T>
const Kernels<T>* kernels();

// Per instruction set (defined only where compiled: x86-64).
template <class T>
const Kernels<T>* kernels_avx512();
template <class T>
const Kernels<T>* kernels_avx2();

}  // namespace simd
}  // namespace flashcka
