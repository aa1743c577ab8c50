"""Symmetric Gram with fused feature centering, and the centering/packing epilogue.

Buffers (all row-major, ``ct`` = float32 or float64 unless stated):
  x       (n, T, C) any strides, dtype float16/bfloat16/float32/float64
  mu      (T*C,) contiguous, ct: the column mean of x (any μ gives the same HSIC)
  k       (n, n) ct, stride_k: only tiles (bi, bj) with bj >= bi are written
  diag    (n,) ct: K_ii
  rowpart (nb, n) ct: rowpart[c, r] = Σ_{j in block c} K_rj, each slot written once,
          so rowsum = rowpart.sum(0) is deterministic (no atomics)
"""
import triton
import triton.language as tl


@triton.jit
def _gram_stats_kernel(x_ptr, mu_ptr, k_ptr, diag_ptr, rowpart_ptr,
                       n, T, C, stride_n, stride_t, stride_c, stride_k,
                       BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, CENTER_WIDE: tl.constexpr = False):
    """Tile (bi, bj), bj >= bi, of K = X_c X_cᵀ with X_c = x - 1μᵀ, centered on load.

    x is converted to mu's dtype (float32 or float64) as it is loaded, centered and
    multiplied in that dtype: fp16/bf16 inputs are never rounded back to 16 bits after
    centering (x − μ of a valid fp16 column can exceed the fp16 range, and its rounding
    error would no longer be relative to the centered values).
    INPUT_PRECISION: "ieee", or "tf32" (float32 only) for TF32 tensor-core products.
    CENTER_WIDE (x float64, mu float32): x − μ is taken in float64, then rounded.
    """
    bi = tl.program_id(0)
    bj = tl.program_id(1)
    if bj < bi:
        return
    ri = bi * BLOCK + tl.arange(0, BLOCK)
    rj = bj * BLOCK + tl.arange(0, BLOCK)
    mi = ri < n
    mj = rj < n
    ck = tl.arange(0, BLOCK_K)
    a_rows = x_ptr + ri.to(tl.int64)[:, None] * stride_n
    b_rows = x_ptr + rj.to(tl.int64)[:, None] * stride_n
    acc = tl.zeros((BLOCK, BLOCK), dtype=mu_ptr.dtype.element_ty)
    for t in range(0, T):
        for c0 in range(0, C, BLOCK_K):
            c = c0 + ck
            mc = c < C
            mu = tl.load(mu_ptr + t * C + c, mask=mc, other=0.0)
            col = t * stride_t + c.to(tl.int64)[None, :] * stride_c
            ma = mi[:, None] & mc[None, :]
            mb = mj[:, None] & mc[None, :]
            a = tl.load(a_rows + col, mask=ma, other=0.0)
            b = tl.load(b_rows + col, mask=mb, other=0.0)
            if CENTER_WIDE:   # float64 x, float32 compute: subtract in float64, then round
                a = (a - mu.to(tl.float64)[None, :]).to(mu.dtype)
                b = (b - mu.to(tl.float64)[None, :]).to(mu.dtype)
            else:
                a = a.to(mu.dtype) - mu[None, :]
                b = b.to(mu.dtype) - mu[None, :]
            a = tl.where(ma, a, 0.0)
            b = tl.where(mb, b, 0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)
    k_tile = k_ptr + ri.to(tl.int64)[:, None] * stride_k + rj[None, :]
    tl.store(k_tile, acc.to(k_ptr.dtype.element_ty), mask=mi[:, None] & mj[None, :])
    # Row sums: masked rows/columns of acc are exactly zero.
    tl.store(rowpart_ptr + bj.to(tl.int64) * n + ri, tl.sum(acc, 1), mask=mi)
    if bi == bj:
        on_diag = ri[:, None] == rj[None, :]
        tl.store(diag_ptr + ri, tl.sum(tl.where(on_diag, acc, 0.0), 1), mask=mi)
    else:
        tl.store(rowpart_ptr + bi.to(tl.int64) * n + rj, tl.sum(acc, 0), mask=mj)


@triton.jit
def _center_pack_kernel(k_ptr, m_ptr, out_ptr, n, stride_k,
                        BLOCK: tl.constexpr, UNBIASED: tl.constexpr):
    """C_ij = K_ij - m_i - m_j from the upper tiles of k, written packed:

    out[p(i, j)] = sqrt(2)·C_ij for i < j, p(i, j) = i(2n - i - 1)/2 + (j - i - 1);
    biased only: out[n(n-1)/2 + i] = C_ii. (Unbiased: C_ii = 0, not stored.)
    With m from U-centering or HKH (see the launcher), rows' dot products are ⟨C, C'⟩_F.
    """
    bi = tl.program_id(0)
    bj = tl.program_id(1)
    if bj < bi:
        return
    ri = (bi * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    rj = (bj * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mi = ri < n
    mj = rj < n
    kt = tl.load(k_ptr + ri[:, None] * stride_k + rj[None, :],
                 mask=mi[:, None] & mj[None, :], other=0.0)
    m_i = tl.load(m_ptr + ri, mask=mi, other=0.0)
    m_j = tl.load(m_ptr + rj, mask=mj, other=0.0)
    c = kt - m_i[:, None] - m_j[None, :]
    strict = (ri[:, None] < rj[None, :]) & mi[:, None] & mj[None, :]
    p = (ri * (2 * n - ri - 1)) // 2
    idx = p[:, None] + (rj[None, :] - ri[:, None] - 1)
    tl.store(out_ptr + idx, (c * 1.4142135623730951).to(out_ptr.dtype.element_ty),
             mask=strict)
    if not UNBIASED:
        if bi == bj:
            d = tl.sum(tl.where(ri[:, None] == rj[None, :], c, 0.0), 1)
            tl.store(out_ptr + (n * (n - 1)) // 2 + ri, d.to(out_ptr.dtype.element_ty),
                     mask=mi)
