"""The tiled route's tile kernel (python/flashcka/core/tiled.py): one layer's kernel tile of
rows I against rows J, made and finished in one program per output block.

Buffers (row-major; ``ct`` = float32 or float64):
  xi   (ti, d) ct, row stride stride_i: rows I, centred and scaled
  xj   (tj, d) ct, row stride stride_j: rows J (xj = xi on a diagonal tile)
  par  (2,) ct: [2σ², shift]
  out  (ti, tj) ct, contiguous

KERNEL 0 (linear): xi xjᵀ; 2 (dist): D = max(s_a + s_b − 2k, 0), 0 where D ≤ tol·(s_a +
s_b) (rounding noise: duplicated rows give exactly 0), D_aa = 0 on a diagonal tile, s the
squared row norms (a second walk over the features); 1 (rbf): exp(−D / 2σ²), 1 where D = 0.
Then (not dist) − shift when SHIFT, and a zero diagonal when DIAG and UNBIASED: the numbers
of ``torch_backend.kernel_tile``.
"""
import triton
import triton.language as tl


@triton.jit
def _rows_k(ptr, r, mr, stride, rk, mk):
    """The (len(r), len(rk)) block of rows r and columns rk of a row-major buffer with row
    stride ``stride``, 0 outside the masks mr (rows) and mk (columns)."""
    return tl.load(ptr + r.to(tl.int64)[:, None] * stride + rk[None, :],
                   mask=mr[:, None] & mk[None, :], other=0.0)


@triton.jit
def _kernel_tile_kernel(xi_ptr, xj_ptr, par_ptr, out_ptr, ti, tj, d, stride_i, stride_j, tol,
                        KERNEL: tl.constexpr, DIAG: tl.constexpr, UNBIASED: tl.constexpr,
                        SHIFT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < ti
    mn = rn < tj
    dt = out_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=dt)
    si = tl.zeros((BLOCK_M,), dtype=dt)
    sj = tl.zeros((BLOCK_N,), dtype=dt)
    for k0 in range(0, d, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < d
        a = _rows_k(xi_ptr, rm, mm, stride_i, rk, mk)
        b = _rows_k(xj_ptr, rn, mn, stride_j, rk, mk)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION,
                     out_dtype=dt)      # float64: Triton 3.6 needs it
    if KERNEL != 0:     # squared row norms: a second walk (kept out of the product loop,
        for k0 in range(0, d, BLOCK_K):     # where it made float32 on sm_80 spill)
            rk = k0 + tl.arange(0, BLOCK_K)
            mk = rk < d
            a = _rows_k(xi_ptr, rm, mm, stride_i, rk, mk)
            b = _rows_k(xj_ptr, rn, mn, stride_j, rk, mk)
            si += tl.sum(a * a, 1)
            sj += tl.sum(b * b, 1)
    v = acc
    on_diag = rm[:, None] == rn[None, :]
    if KERNEL != 0:
        both = si[:, None] + sj[None, :]
        dd = tl.maximum(both - 2.0 * acc, 0.0)
        zero = dd <= tol * both
        if DIAG:
            zero = zero | on_diag
        dd = tl.where(zero, 0.0, dd)
        if KERNEL == 2:
            v = dd
        else:
            two_s2 = tl.load(par_ptr)
            v = tl.where(dd == 0.0, 1.0, tl.exp(dd / -two_s2))
    if KERNEL != 2:
        if SHIFT:
            v = v - tl.load(par_ptr + 1)
        if DIAG and UNBIASED:
            v = tl.where(on_diag, 0.0, v)
    tl.store(out_ptr + rm.to(tl.int64)[:, None] * tj + rn[None, :], v.to(dt),
             mask=mm[:, None] & mn[None, :])
