"""Symmetric Gram with fused feature centering (split-K), and the centering/packing epilogue.

Buffers (all row-major, ``ct`` = float32 or float64 unless stated):
  x       (n, T, C) any strides, dtype float16/bfloat16/float32/float64
  mu      (T*C,) contiguous, ct: the column mean of x (any μ gives the same HSIC)
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
    and the diagonal. Rows/columns of acc beyond n must be exactly zero."""
    ri = bi * BLOCK + tl.arange(0, BLOCK)
    rj = bj * BLOCK + tl.arange(0, BLOCK)
    mi = ri < n
    mj = rj < n
    k_tile = k_ptr + ri.to(tl.int64)[:, None] * stride_k + rj[None, :]
    tl.store(k_tile, acc.to(k_ptr.dtype.element_ty), mask=mi[:, None] & mj[None, :])
    tl.store(rowpart_ptr + bj.to(tl.int64) * n + ri, tl.sum(acc, 1), mask=mi)
    if bi == bj:
        on_diag = ri[:, None] == rj[None, :]
        tl.store(diag_ptr + ri, tl.sum(tl.where(on_diag, acc, 0.0), 1), mask=mi)
    else:
        tl.store(rowpart_ptr + bi.to(tl.int64) * n + rj, tl.sum(acc, 0), mask=mj)


@triton.jit
def _gram_stats_kernel(x_ptr, mu_ptr, k_ptr, diag_ptr, rowpart_ptr, part_ptr,
                       n, T, C, stride_n, stride_t, stride_c, stride_k, nb, per_split,
                       BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, CENTER_WIDE: tl.constexpr = False,
                       SPLIT: tl.constexpr = False):
    """Program (tile, s): tile (bi, bj), bj >= bi, of K = X_c X_cᵀ with X_c = x − 1μᵀ,
    centered on load, over the features of split s.

    The features are walked as T · ceil(C / BLOCK_K) steps of BLOCK_K columns of one token;
    split s takes steps [s·per_split, (s+1)·per_split). SPLIT: write the partial tile to
    part (finished by ``_gram_reduce_kernel``); else finish the tile here (one split).
    x is converted to mu's dtype (float32 or float64) as it is loaded and centered in that
    dtype (x − μ of a valid fp16 column can exceed the fp16 range).
    INPUT_PRECISION: "ieee"; "tf32" (float32 only): TF32 tensor-core products; "bf16"
    (float32 only): the centered values rounded to bfloat16, products on bf16 tensor cores,
    accumulated in float32; "bf16_rounded": the same bf16 values, multiplied exactly in
    float32 (for the Triton interpreter, whose tl.dot multiplies bf16 bit patterns as
    integers, at least in 3.9).
    CENTER_WIDE (x float64, mu float32): x − μ is taken in float64, then rounded.
    """
    tile = tl.program_id(0)
    s = tl.program_id(1)
    bi, bj = _tile_coords(tile, nb)
    ri = bi * BLOCK + tl.arange(0, BLOCK)
    rj = bj * BLOCK + tl.arange(0, BLOCK)
    mi = ri < n
    mj = rj < n
    ck = tl.arange(0, BLOCK_K)
    a_rows = x_ptr + ri.to(tl.int64)[:, None] * stride_n
    b_rows = x_ptr + rj.to(tl.int64)[:, None] * stride_n
    acc = tl.zeros((BLOCK, BLOCK), dtype=mu_ptr.dtype.element_ty)
    ncb = tl.cdiv(C, BLOCK_K)
    step0 = s * per_split
    step1 = tl.minimum(step0 + per_split, T * ncb)
    for step in range(step0, step1):
        t = step // ncb
        c = (step - t * ncb) * BLOCK_K + ck
        mc = c < C
        mu = tl.load(mu_ptr + t.to(tl.int64) * C + c, mask=mc, other=0.0)
        col = t.to(tl.int64) * stride_t + c.to(tl.int64)[None, :] * stride_c
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
        if INPUT_PRECISION == "bf16":
            acc = tl.dot(a.to(tl.bfloat16), tl.trans(b.to(tl.bfloat16)), acc)
        elif INPUT_PRECISION == "bf16_rounded":   # the same rounding, float32 products
            a = a.to(tl.bfloat16).to(tl.float32)
            b = b.to(tl.bfloat16).to(tl.float32)
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION,
                         out_dtype=mu_ptr.dtype.element_ty)   # float64: Triton 3.6 needs it
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
