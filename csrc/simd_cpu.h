// AVX-512 pieces of the fused centered Gram (docs/design.md §4, "The native CPU kernels"):
// column sums, centre-and-pack, packed SYRK/GEMM tiles and the U-centring epilogue, used by
// gram_cpu.cpp whenever the CPU has AVX-512 (OpenBLAS is the portable fallback).
//
// Packed panels: the rows of a chunk (n rows × w columns) in panels of P rows (P = 16 for
// float, 8 for double: one 64-byte vector), column-major inside a panel:
//
//     panel p, column c, row r  ->  out[p·w·P + c·P + r] = s·(x[pP + r][c] − μ_c)
//
// (0 for the rows past n). The product of panel i (each value broadcast) with panel j (a
// vector of P columns) gives a P × P tile of K = X_c X_cᵀ with P² independent sums: one
// fused multiply-add per vector, no horizontal sums, every operand from a 16 KiB panel.
#pragma once
#include <cstdint>

namespace flashcka {
namespace simd {

// AVX-512 F/DQ/BW/VL on this CPU (and the OS saves the registers), unless the environment
// variable FLASHCKA_SIMD=0 turns it off (tests use that to run the OpenBLAS path).
bool available();

template <class T>
constexpr int64_t panel_rows() {
  return int64_t(64 / sizeof(T));
}

// Columns per chunk: a panel is P·256 values = 16 KiB (float and double alike), so the
// broadcast panel stays in L1 while the vector panels stream past it.
constexpr int64_t kChunk = 256;

// acc[c] = Σ_i src[i·ld + c] in double, in row order (as the scalar loop), c < w ≤ kChunk.
template <class T>
void column_sums(const T* src, int64_t ld, int64_t n, int64_t w, double* acc);

// Panels (ceil(n/P) of w·P values) of s·(src − 1μᵀ) (μ = 0 when mu is null). Returns
// max |src − μ| over the chunk (NaN-blind) and sets *varies when some value differs from
// row 0's in its column (a constant column gives X_c = 0 exactly).
template <class T>
double pack(const T* src, int64_t ld, int64_t n, int64_t w, const T* mu, T s, T* out,
            bool* varies);

// Asks for the next chunk's rows (n × w at src, ld) to be brought into L2 while this one is
// worked on (row pieces of 1 KiB are too short for the hardware prefetcher); only when
// they fit, with room to spare (at most 256 KiB).
template <class T>
void prefetch_rows(const T* src, int64_t ld, int64_t n, int64_t w);

// Panels of src (n rows × w columns, ld) as they are: no centring, no statistics (the
// pair stage's rows).
template <class T>
void pack_plain(const T* src, int64_t ld, int64_t n, int64_t w, T* out);

// C (na × nb, row-major, ld ldc) = (accumulate: +=) the product of a's and b's panels.
template <class T>
void gemm_panels(const T* pa, int64_t na, const T* pb, int64_t nb, int64_t w, T* C,
                 int64_t ldc, bool accumulate);

// Few rows (the pair stage of a dozen layers): C (la × lb, ld ldc) = (accumulate: +=)
// A Bᵀ over w columns of A (ld lda) and B (ld ldb) as they lie, no packing: vectors along
// the rows, 4 × 4 tiles of 16 accumulators, each summed across its lanes once (w up to
// kDotChunk, so that a tile's 8 row pieces stay in L1). upper: only the tiles on or above
// the diagonal (A = B; the caller mirrors).
constexpr int64_t kDotChunk = 1024;
template <class T>
void dot_rows(const T* a, int64_t lda, int64_t la, const T* b, int64_t ldb, int64_t lb,
              int64_t w, T* C, int64_t ldc, bool accumulate, bool upper);

// The upper-triangle tiles (i, j ≥ i) of panel rows and columns, numbered row by row
// (0 ≤ t < panels·(panels+1)/2), for t in [t0, t1): the tile rows [iP, iP+P) × columns
// [jP, jP+P) of C (row-major, ld ldc) = (accumulate: +=) the product of the panels. Tiles
// are clipped at n; a diagonal tile is written whole (the strict lower part of C inside it
// too; callers read the upper triangle only).
template <class T>
void syrk_panels(const T* packed, int64_t n, int64_t w, int64_t t0, int64_t t1, T* C,
                 int64_t ldc, bool accumulate);

// gram_cpu.cpp's center_pack on AVX-512: the packed U-centred (or HKH) row of the upper
// triangle of K (n × n, ld n) and its diagonal dg, the same double-precision formulas
// (row sums r, m_i, then √2·(K_ij − m_i − m_j) rounded once to T).
template <class T>
void center_pack(const T* K, const T* dg, int64_t n, bool unbiased, T* out);

}  // namespace simd
}  // namespace flashcka
