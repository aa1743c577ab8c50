"""Symmetric Gram of pre-centred rows (split-K), and the centering/packing epilogue.

Buffers (all row-major, ``ct`` = float32 or float64 unless stated):
  xc      (n, d_pad) rows of X_c = x − 1μᵀ (``_centre_kernel``, once), unit stride along
          features, row stride a multiple of 16 elements, features d..d_pad zero; ct, or
          bfloat16 for bf16 products
  k       (n, n) ct, stride_k: only tiles (bi, bj) with bj >= bi are written
  diag    (n,) ct: K_ii
  rowpart (nb, n) ct: rowpart[c, r] = Σ_{j in block c} K_rj, each slot written once,
          so rowsum = rowpart.sum(0) is deterministic (no atomics)
  part    (S, ntri, BLOCK, BLOCK) ct, split-K only: part[s, t] = tile t's product over the
          features of split s; ``_gram_reduce_kernel`` adds the S partials in a fixed order
          (deterministic, no atomics) and finishes the tile.

Tiles are launched by a linear index over the upper triangle (``_tile_coords``): the nb
blocks of rows give ntri = nb(nb+1)/2 programs per split, not nb².
"""
import triton
import triton.language as tl


@triton.jit
def _tile_coords(t, nb):
    """Linear index t ∈ [0, nb(nb+1)/2) of an upper-triangle tile -> (bi, bj), bj >= bi,
    row-major (t = 0 is (0, 0), t = nb − 1 is (0, nb − 1), the last is (nb − 1, nb − 1)).
    Counted from the end, row r (0-based) holds r + 1 tiles; r comes from a float32 square
    root, corrected by ±1 where rounding put it in a neighbouring row."""
    u = nb * (nb + 1) // 2 - 1 - t
    r = ((tl.sqrt((8 * u + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    r = tl.where((r + 1) * (r + 2) // 2 <= u, r + 1, r)
    r = tl.where(r * (r + 1) // 2 > u, r - 1, r)
    return nb - 1 - r, nb - 1 - (u - r * (r + 1) // 2)


@triton.jit
def _finish_tile(acc, bi, bj, k_ptr, diag_ptr, rowpart_ptr, n, stride_k,
                 BLOCK: tl.constexpr):
    """Store tile (bi, bj) of K, its row (and, off the diagonal, column) sums into rowpart,
    and the diagonal. Rows/columns of acc beyond n are ignored (set to zero here)."""
    ri = bi * BLOCK + tl.arange(0, BLOCK)
    rj = bj * BLOCK + tl.arange(0, BLOCK)
    mi = ri < n
    mj = rj < n
    acc = tl.where(mi[:, None] & mj[None, :], acc, 0.0)
    k_tile = k_ptr + ri.to(tl.int64)[:, None] * stride_k + rj[None, :]
    tl.store(k_tile, acc.to(k_ptr.dtype.element_ty), mask=mi[:, None] & mj[None, :])
    tl.store(rowpart_ptr + bj.to(tl.int64) * n + ri, tl.sum(acc, 1), mask=mi)
    if bi == bj:
        on_diag = ri[:, None] == rj[None, :]
        tl.store(diag_ptr + ri, tl.sum(tl.where(on_diag, acc, 0.0), 1), mask=mi)
    else:
        tl.store(rowpart_ptr + bi.to(tl.int64) * n + rj, tl.sum(acc, 0), mask=mj)


@triton.jit
def _centre_kernel(x_ptr, mu_ptr, xc_ptr, T, C, stride_n, stride_t, stride_c, d_pad,
                   BLOCK_C: tl.constexpr):
    """Program (i·T + t, cb): xc[i, t·C + c] = x[i, t, c] − μ[t·C + c] for the BLOCK_C
    channels c of block cb: x read through its strides (x's dtype), the difference taken in
    mu's dtype (the launcher passes μ in the wider of x's dtype and ct), rounded to xc's
    dtype (ct, or bfloat16 for bf16 products). xc's features d..d_pad are not written."""
    row = tl.program_id(0)
    i = row // T
    t = row - i * T
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = c < C
    x = tl.load(x_ptr + i.to(tl.int64) * stride_n + t.to(tl.int64) * stride_t
                + c.to(tl.int64) * stride_c, mask=m)
    mu = tl.load(mu_ptr + t * C + c, mask=m)
    v = x.to(mu.dtype) - mu
    if xc_ptr.dtype.element_ty == tl.bfloat16:
        # float32 -> bfloat16 rounded to nearest even by hand, as torch rounds (the Triton
        # interpreter truncates); NaN and inf stay NaN and inf
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        v = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        v = v.to(xc_ptr.dtype.element_ty)
    tl.store(xc_ptr + i.to(tl.int64) * d_pad + t * C + c, v, mask=m)


@triton.jit
def _gram_stats_kernel(xc_ptr, k_ptr, diag_ptr, rowpart_ptr, part_ptr,
                       n, d_pad, stride_n, stride_k, nb, per_split,
                       BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, SPLIT: tl.constexpr = False,
                       TMA: tl.constexpr = False):
    """Program (tile, s): tile (bi, bj), bj >= bi, of K = X_c X_cᵀ over the features
    [s·per_split·BLOCK_K, (s+1)·per_split·BLOCK_K) ∩ [0, d_pad) of split s.

    The loads feed tl.dot directly (no arithmetic between them, so Hopper stages both
    operands in shared memory for wgmma): rows beyond n are clamped to row n − 1 (no mask
    in the loop) and zeroed in ``_finish_tile``; d_pad is a multiple of BLOCK_K (the
    launcher zero-pads), so no feature mask either. SPLIT: write the partial tile to part
    (finished by ``_gram_reduce_kernel``); else finish the tile here (one split).
    INPUT_PRECISION: "ieee" (float32 FMA or float64); "tf32" (float32 xc); "bf16"
    (bfloat16 xc, float32 accumulation); "bf16_rounded": bfloat16 xc multiplied exactly in
    float32 (for the Triton interpreter, whose tl.dot multiplies bf16 bit patterns as
    integers, at least in 3.9).
    """
    tile = tl.program_id(0)
    s = tl.program_id(1)
    bi, bj = _tile_coords(tile, nb)
    if not TMA:
        ri = tl.minimum(bi * BLOCK + tl.arange(0, BLOCK), n - 1).to(tl.int64)
        rj = tl.minimum(bj * BLOCK + tl.arange(0, BLOCK), n - 1).to(tl.int64)
        ck = tl.arange(0, BLOCK_K)
        a_ptrs = xc_ptr + ri[:, None] * stride_n + ck[None, :]
        b_ptrs = xc_ptr + rj[:, None] * stride_n + ck[None, :]
    acc = tl.zeros((BLOCK, BLOCK), dtype=k_ptr.dtype.element_ty)
    k0 = s * per_split * BLOCK_K
    k1 = tl.minimum(k0 + per_split * BLOCK_K, d_pad)
    for kk in range(k0, k1, BLOCK_K):
        if TMA:
            a = xc_ptr.load([bi * BLOCK, kk])
            b = xc_ptr.load([bj * BLOCK, kk])
        else:
            a = tl.load(a_ptrs + kk)
            b = tl.load(b_ptrs + kk)
        if INPUT_PRECISION == "bf16":
            acc = tl.dot(a, tl.trans(b), acc)
        elif INPUT_PRECISION == "bf16_rounded":   # the same bf16 values, float32 products
            acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc,
                         input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION,
                         out_dtype=k_ptr.dtype.element_ty)   # float64: Triton 3.6 needs it
    if SPLIT:
        r = tl.arange(0, BLOCK)
        base = (s * tl.num_programs(0) + tile).to(tl.int64) * (BLOCK * BLOCK)
        tl.store(part_ptr + base + r[:, None] * BLOCK + r[None, :], acc)
    else:
        _finish_tile(acc, bi, bj, k_ptr, diag_ptr, rowpart_ptr, n, stride_k, BLOCK)


@triton.jit
def _gram_reduce_kernel(part_ptr, k_ptr, diag_ptr, rowpart_ptr, n, stride_k, nb, splits,
                        BLOCK: tl.constexpr):
    """Program tile: the sum over s = 0, 1, ..., splits − 1 (in that order) of the partial
    tiles part[s, tile], finished as one split of ``_gram_stats_kernel`` would."""
    tile = tl.program_id(0)
    bi, bj = _tile_coords(tile, nb)
    r = tl.arange(0, BLOCK)
    off = r[:, None] * BLOCK + r[None, :]
    acc = tl.zeros((BLOCK, BLOCK), dtype=part_ptr.dtype.element_ty)
    for s in range(0, splits):
        acc += tl.load(part_ptr + (s * tl.num_programs(0) + tile).to(tl.int64) * (BLOCK * BLOCK)
                       + off)
    _finish_tile(acc, bi, bj, k_ptr, diag_ptr, rowpart_ptr, n, stride_k, BLOCK)


@triton.jit
def _center_pack_kernel(k_ptr, m_ptr, out_ptr, n, stride_k, nb,
                        BLOCK: tl.constexpr, UNBIASED: tl.constexpr):
    """C_ij = K_ij - m_i - m_j from the upper tiles of k, written packed (one program per
    upper tile, linear index):

    out[p(i, j)] = sqrt(2)·C_ij for i < j, p(i, j) = i(2n - i - 1)/2 + (j - i - 1);
    biased only: out[n(n-1)/2 + i] = C_ii. (Unbiased: C_ii = 0, not stored.)
    With m from U-centering or HKH (see the launcher), rows' dot products are ⟨C, C'⟩_F.
    """
    bi, bj = _tile_coords(tl.program_id(0), nb)
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
