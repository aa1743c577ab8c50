"""RBF epilogue on the upper tiles of a linear Gram buffer k (n, n), in place.

DIST: k holds K = X_c X_cᵀ and diag (n,) its diagonal; D_ij = max(K_ii + K_jj - 2K_ij, 0),
set to 0 when D_ij <= tol·(K_ii + K_jj) (rounding noise of the formula: duplicated rows
get exactly 0), D_ii = 0. Otherwise k already holds D. EXP: write exp(D · scale) with
scale = -1/(2σ²) read from scale_ptr (a device scalar: no host sync; it may be -inf or
-0), exactly 1 where D = 0, and its row sums as rowpart (nb, n) (see gram.py); otherwise
write D (for the median heuristic).
"""
import triton
import triton.language as tl

from .gram import _tile_coords


@triton.jit
def _rbf_kernel(k_ptr, diag_ptr, scale_ptr, rowpart_ptr, n, stride_k, tol, nb,
                BLOCK: tl.constexpr, DIST: tl.constexpr, EXP: tl.constexpr):
    bi, bj = _tile_coords(tl.program_id(0), nb)   # one program per upper tile
    ri = bi * BLOCK + tl.arange(0, BLOCK)
    rj = bj * BLOCK + tl.arange(0, BLOCK)
    mi = ri < n
    mj = rj < n
    mask = mi[:, None] & mj[None, :]
    ptrs = k_ptr + ri.to(tl.int64)[:, None] * stride_k + rj[None, :]
    v = tl.load(ptrs, mask=mask, other=0.0)
    if DIST:
        d_i = tl.load(diag_ptr + ri, mask=mi, other=0.0)
        d_j = tl.load(diag_ptr + rj, mask=mj, other=0.0)
        both = d_i[:, None] + d_j[None, :]
        v = tl.maximum(both - 2.0 * v, 0.0)
        v = tl.where((ri[:, None] == rj[None, :]) | (v <= tol * both), 0.0, v)
    if EXP:
        scale = tl.load(scale_ptr)
        v = tl.where(mask, tl.where(v == 0.0, 1.0, tl.exp(v * scale)), 0.0)
        tl.store(rowpart_ptr + bj.to(tl.int64) * n + ri, tl.sum(v, 1), mask=mi)
        if bi != bj:
            tl.store(rowpart_ptr + bi.to(tl.int64) * n + rj, tl.sum(v, 0), mask=mj)
    tl.store(ptrs, v, mask=mask)
