"""Every compile-time choice the Triton launchers (triton_launch.py) can make, torch-free.

The launchers take their block sizes, warps, stages and product precision from here, and
``bench/aot.py`` compiles every case of ``aot_cases()`` for sm_80 and sm_90 with no GPU (it
loads this file by path, without torch or flashcka). So the AOT check covers exactly what
the launchers can launch: a new branch added here is compiled by CI.

dtypes are named as torch names them: "float16", "bfloat16", "float32", "float64".
"""
from __future__ import annotations

import itertools

X_DTYPES = ("float16", "bfloat16", "float32", "float64")
COMPUTE = ("float32", "float64")
TRITON_TYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


def gram_config(ct: str, n: int, interpret: bool, prec: str = "ieee",
                hopper: bool = False) -> dict:
    """``_gram_stats_kernel`` block sizes (and warps/stages on a GPU) for its BLOCK×BLOCK
    tiles of pre-centred rows. Chosen from sm_90 SASS with Triton 3.6 and 3.9 (bench/aot.py
    checks every variant for sm_80 and sm_90: no spills, shared memory within the limit)
    and bench/gpu_sweep.py on an H200 (Triton 3.6, torch 2.11, 2026-12-04):
    tf32/bf16, n > 128: 128×128 tiles, BLOCK_K 32 (tf32) / 64 (bf16), 8 warps: HGMMA fed
    by 16-byte cp.async, 4 stages, 144-152 registers, 129 KiB shared (4 warps spill 144 B;
    3 or 5 stages, BLOCK_K 16/32 or 64×64 tiles were 1-60% slower at n = 4096). tf32 on
    Hopper (``hopper``): TMA loads, 3 stages (128 registers, 96 KiB: two blocks an SM),
    2-12% faster than cp.async at every measured size (bf16: 3% slower at d = 151296).
    n ≤ 128: 64×64 (more programs for split-K to share the features).
    float32 IEEE (FMA): 64×64×32 on 2 warps, 2 stages: 8×8 accumulators a thread, about
    12 FFMA per 16-byte shared load, 242-254 registers, no spill (H200, n = 4096,
    d = 151296: 116 ms; 4 warps 186 ms, 8 warps 347 ms, 128×128×16 on 8 warps 138 ms).
    float64: 32×32×16 (the float64 MMA)."""
    if interpret:
        return dict(BLOCK=32 if n > 16 else 16, BLOCK_K=64)
    if ct == "float64":
        return dict(BLOCK=32, BLOCK_K=16, num_warps=8, num_stages=2)
    if prec == "ieee":
        return dict(BLOCK=64, BLOCK_K=32, num_warps=2, num_stages=2)
    bk = 32 if prec == "tf32" else 64
    if n <= 128:
        return dict(BLOCK=64, BLOCK_K=bk, num_warps=4, num_stages=4)
    if hopper and prec == "tf32":
        return dict(BLOCK=128, BLOCK_K=bk, num_warps=8, num_stages=3, TMA=True)
    return dict(BLOCK=128, BLOCK_K=bk, num_warps=8, num_stages=4)


CENTRE_BLOCK = 1024   # channels per program of ``_centre_kernel``


def reduce_config(block: int, interpret: bool) -> dict:
    """``_gram_reduce_kernel`` warps: 8 for 128×128 tiles (64 float32 a thread), else
    Triton's default."""
    return dict(num_warps=8) if block >= 128 and not interpret else {}


def precision(x_dtype: str, ct: str, allow_tf32: bool, allow_bf16: bool,
              interpret: bool) -> str:
    """Products of the centered values: "bf16" (bfloat16 inputs, allow_bf16), "tf32"
    (allow_tf32; float32, float16 and, without allow_bf16, bfloat16 inputs) or "ieee";
    float64 compute is always "ieee". The interpreter's tl.dot treats bf16 as integers:
    there "bf16_rounded" (the same bf16 rounding, float32 products)."""
    if ct != "float32":
        return "ieee"
    if allow_bf16 and x_dtype == "bfloat16":
        return "bf16_rounded" if interpret else "bf16"
    if allow_tf32 and x_dtype != "float64":
        return "tf32"
    return "ieee"


def epilogue_block(n: int, interpret: bool) -> int:
    """BLOCK of ``_center_pack_kernel`` and ``_rbf_kernel``."""
    return 32 if interpret or n <= 256 else 64


def pair_config(dt: str, interpret: bool) -> tuple[int, int, dict]:
    """(BLOCK_A = BLOCK_B, BLOCK_K, launch options) of ``_pair_kernel``."""
    if interpret:
        return 16, 128, {}
    if dt == "float32":
        return 64, 32, dict(num_warps=8, num_stages=3)
    return 32, 16, dict(num_warps=4, num_stages=3)


def tile_config(ct: str, interpret: bool) -> dict:
    """``_kernel_tile_kernel`` (the tiled route) block sizes and launch options."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32)
    if ct == "float64":
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=2)


_NS = (128, 4096)     # a small and a large n: every block-size branch above


def xc_dtype(ct: str, prec: str) -> str:
    """The dtype of the pre-centred rows ``_gram_stats_kernel`` reads (launcher's
    ``centred_rows``): bfloat16 for bf16 products, else the compute dtype."""
    return "bfloat16" if prec in ("bf16", "bf16_rounded") else ct


def aot_cases():
    """Yield (kernel name, signature, constexprs, options, label) for every compiled
    variant the launchers can choose on a GPU. Signature entries are Triton type strings;
    pointers are 16-byte aligned (the common specialisation), "i32:16" integers divisible
    by 16 (the Gram's d_pad and row stride, which the launcher makes so); constexpr
    TMA=True variants (tensor descriptors) are Hopper's only: bench/aot.py compiles them
    for sm_90 alone."""
    ptr = lambda d: "*" + TRITON_TYPE[d]  # noqa: E731
    seen = set()
    for x, ct, tf32, bf16, n, split, hopper in itertools.product(
            X_DTYPES, COMPUTE, (False, True), (False, True), _NS, (False, True),
            (False, True)):
        prec = precision(x, ct, tf32, bf16, False)
        cfg = gram_config(ct, n, False, prec, hopper)
        xc = xc_dtype(ct, prec)
        key = (xc, ct, prec, tuple(sorted(cfg.items())), split)
        if key in seen:
            continue
        seen.add(key)
        opts = {k: cfg[k] for k in ("num_warps", "num_stages")}
        tma = cfg.get("TMA", False)
        src = (f"tensordesc<{TRITON_TYPE[xc]}[{cfg['BLOCK']},{cfg['BLOCK_K']}]>" if tma
               else ptr(xc))
        sig = dict(xc_ptr=src, k_ptr=ptr(ct), diag_ptr=ptr(ct), rowpart_ptr=ptr(ct),
                   part_ptr=ptr(ct), n="i32", d_pad="i32:16", stride_n="i32:16",
                   stride_k="i32", nb="i32", per_split="i32")
        cst = dict(BLOCK=cfg["BLOCK"], BLOCK_K=cfg["BLOCK_K"], INPUT_PRECISION=prec,
                   SPLIT=split, TMA=tma)
        yield ("_gram_stats_kernel", sig, cst, opts,
               f"xc={xc} ct={ct} {prec} {cfg['BLOCK']}x{cfg['BLOCK']}xK{cfg['BLOCK_K']} "
               f"w{cfg['num_warps']} s{cfg['num_stages']}{' TMA' if tma else ''}"
               f"{' split' if split else ''}")
    for x, ct, prec in sorted({(x, ct, precision(x, ct, tf32, bf16, False))
                               for x, ct, tf32, bf16 in itertools.product(
                                   X_DTYPES, COMPUTE, (False, True), (False, True))}):
        wide = "float64" if "float64" in (x, ct) else ct
        xc = xc_dtype(ct, prec)
        sig = dict(x_ptr=ptr(x), mu_ptr=ptr(wide), xc_ptr=ptr(xc), T="i32", C="i32",
                   stride_n="i32", stride_t="i32", stride_c="i32", d_pad="i32:16")
        yield ("_centre_kernel", sig, dict(BLOCK_C=CENTRE_BLOCK), {},
               f"x={x} mu={wide} xc={xc} ({prec})")
    for ct in COMPUTE:
        for blk in sorted({gram_config(ct, n, False, p, h)["BLOCK"]
                           for n in _NS for p in ("ieee", "tf32", "bf16") for h in (0, 1)}):
            sig = dict(part_ptr=ptr(ct), k_ptr=ptr(ct), diag_ptr=ptr(ct), rowpart_ptr=ptr(ct),
                       n="i32", stride_k="i32", nb="i32", splits="i32")
            yield ("_gram_reduce_kernel", sig, dict(BLOCK=blk), reduce_config(blk, False),
                   f"ct={ct} B{blk}")
        for blk in sorted({epilogue_block(n, False) for n in (64, 1024)}):
            for unbiased in (True, False):
                sig = dict(k_ptr=ptr(ct), m_ptr=ptr(ct), out_ptr=ptr(ct), n="i32",
                           stride_k="i32", nb="i32")
                yield ("_center_pack_kernel", sig, dict(BLOCK=blk, UNBIASED=unbiased), {},
                       f"ct={ct} B{blk} {'unbiased' if unbiased else 'biased'}")
            for dist, exp in ((True, True), (True, False), (False, True)):
                sig = dict(k_ptr=ptr(ct), diag_ptr=ptr(ct), scale_ptr=ptr(ct),
                           rowpart_ptr=ptr(ct), n="i32", stride_k="i32", tol="fp32",
                           nb="i32")
                yield ("_rbf_kernel", sig, dict(BLOCK=blk, DIST=dist, EXP=exp), {},
                       f"ct={ct} B{blk} dist={dist} exp={exp}")
        cfg = tile_config(ct, False)
        opts = {k: cfg[k] for k in ("num_warps", "num_stages")}
        blocks = {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}
        for kernel, diag, unbiased, shift in itertools.product((0, 1, 2), (False, True),
                                                              (False, True), (False, True)):
            if kernel == 2 and (unbiased or shift):
                continue          # distances: no shift, no diagonal rule
            sig = dict(xi_ptr=ptr(ct), xj_ptr=ptr(ct), par_ptr=ptr(ct), out_ptr=ptr(ct),
                       ti="i32", tj="i32", d="i32", stride_i="i32", stride_j="i32", tol="fp32")
            yield ("_kernel_tile_kernel", sig,
                   dict(blocks, KERNEL=kernel, DIAG=diag, UNBIASED=unbiased, SHIFT=shift,
                        INPUT_PRECISION="ieee"), opts,
                   f"ct={ct} kernel={kernel} diag={diag} unbiased={unbiased} shift={shift}")
        ba, bk, opts = pair_config(ct, False)
        for prec in sorted({precision("float32" if ct == "float32" else ct, ct, t, False, False)
                            for t in (False, True)}):
            sig = dict(ga_ptr=ptr(ct), gb_ptr=ptr(ct), part_ptr="*fp64", LA="i32", LB="i32",
                       m="i32", stride_a="i32", stride_b="i32", CHUNK="i32")
            yield ("_pair_kernel", sig, dict(BLOCK_A=ba, BLOCK_B=ba, BLOCK_K=bk,
                                             INPUT_PRECISION=prec), opts,
                   f"ct={ct} {prec} {ba}x{ba}xK{bk}")
