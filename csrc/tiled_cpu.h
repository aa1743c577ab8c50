// The tiled route's tile kernel (python/flashcka/core/tiled.py, docs/design.md §5): for one
// tile pair (I, J) of sample blocks, every layer's kernel tile made from its centred rows,
// with the RBF / distance epilogue, in one call. Raw pointers and shapes only; the Python
// side (backends/native.py) checks every argument before calling in.
#pragma once
#include <cstdint>

namespace flashcka {

// One layer: rows I (ti × d, row stride ldi) at xi and rows J (tj × d, ldj) at xj, in the
// compute dtype (xj == xi on a diagonal tile); the tile is made from scale·(x − μ) (mu: d
// values, or null: x is used as it is), centred and scaled as the panels are packed.
// two_s2 = 2σ² (rbf), shift the constant subtracted from every entry (when has_shift), tol
// the relative noise threshold of the distance formula (torch_backend.noise_tol).
struct TileLayer {
  const void* xi;
  const void* xj;
  int64_t d, ldi, ldj;
  const void* mu;
  double scale, two_s2, shift, tol;
  bool has_shift;
};

// out (count, ti, tj) contiguous, dtype ct: per layer the tile of
//   kernel 0 (linear): xi xjᵀ
//   kernel 2 (dist):   D = max(s_a + s_b − 2·k_ab, 0), 0 where D ≤ tol·(s_a + s_b), D_aa = 0
//                      on a diagonal tile (s: squared row norms, summed in double)
//   kernel 1 (rbf):    exp(−D / two_s2), 1 where D = 0
// then (not for dist) − shift, and a zero diagonal on a diagonal tile when unbiased: the
// numbers of torch_backend.kernel_tile. Products on the vector micro-kernels
// (simd_kernels.h: packed panels, gemm_panels) where the CPU has them, else OpenBLAS.
// Layers run in parallel, one thread each; fewer layers than threads are split by rows.
// rsum (count, ti) and csum (count, tj), float64, when not null: each tile's row and column
// sums (in double, in a fixed order: the same numbers for any thread count).
void kernel_tiles(const TileLayer* layers, int64_t count, int64_t ti, int64_t tj, bool diag,
                  int ct, int kernel, bool unbiased, void* out, double* rsum, double* csum,
                  int threads);

// The exact median's selection pass (core/tiled_median.py) over one layer's distance tile
// (ti × tj, contiguous, dtype ct; on a diagonal tile only the strict upper triangle
// counts): among the values whose top nb bits (as an unsigned integer of the value's
// width, 32 or 64) equal pre (all values when nb = 0), hist[next 16 bits] += 1 (hist: 65536
// int64). Returns the largest value counted (0 when none).
double tile_histogram(const void* tile, int64_t ti, int64_t tj, bool diag, int ct,
                      uint64_t pre, int nb, int64_t* hist);

}  // namespace flashcka
