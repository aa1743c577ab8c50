"""Pair stage: inner products of rows, split over the row length m.

ga (LA, m), gb (LB, m) with unit stride along m, same dtype (float32 or float64).
Program (pa, pb, s) accumulates ga[a, K_s] · gb[b, K_s] over its chunk K_s (CHUNK
entries, a multiple of BLOCK_K) in the rows' dtype and writes it as float64 to
part[s, a, b] (S, LA, LB); the caller sums over s in float64 (deterministic).
"""
import triton
import triton.language as tl


@triton.jit
def _pair_kernel(ga_ptr, gb_ptr, part_ptr, LA, LB, m, stride_a, stride_b, CHUNK,
                 BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                 INPUT_PRECISION: tl.constexpr):
    pa = tl.program_id(0)
    pb = tl.program_id(1)
    s = tl.program_id(2)
    ra = pa * BLOCK_A + tl.arange(0, BLOCK_A)
    rb = pb * BLOCK_B + tl.arange(0, BLOCK_B)
    ma = ra < LA
    mb = rb < LB
    ck = tl.arange(0, BLOCK_K)
    a_rows = ga_ptr + ra.to(tl.int64)[:, None] * stride_a
    b_rows = gb_ptr + rb.to(tl.int64)[:, None] * stride_b
    start = s.to(tl.int64) * CHUNK
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=ga_ptr.dtype.element_ty)
    for k0 in range(0, CHUNK, BLOCK_K):
        k = start + k0 + ck
        mk = k < m
        a = tl.load(a_rows + k[None, :], mask=ma[:, None] & mk[None, :], other=0.0)
        b = tl.load(b_rows + k[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION,
                     out_dtype=ga_ptr.dtype.element_ty)   # float64: Triton 3.6 needs it
    out = part_ptr + (s.to(tl.int64) * LA + ra)[:, None] * LB + rb[None, :]
    tl.store(out, acc.to(tl.float64), mask=ma[:, None] & mb[None, :])
