"""Launchers for the Triton kernels in ``kernels/triton`` (installed as flashcka.triton).

``gram_stats_triton`` -> ``centred_rows`` (``_centre_kernel``: X_c = x − 1μᵀ, once) and
``_gram_stats_kernel`` (+ ``_gram_reduce_kernel`` when ``gram_plan`` splits the features);
``center_pack_triton`` -> ``_center_pack_kernel``; ``rbf_triton`` -> ``_rbf_kernel``;
``pair_triton`` -> ``_pair_kernel``. Shapes and dtypes are checked here; the kernels take
raw pointers and strides. Block sizes, warps, stages and product precision come from
``triton_configs`` (torch-free, so that ``bench/aot.py`` compiles exactly those variants
for sm_80/sm_90). Scratch buffers come from ``_scratch``: NaN-filled when ``POISON`` is
set (the tests do), so an element a kernel failed to write shows up as NaN.

This module imports triton: import it lazily (flashcka itself never imports triton).
On the CPU the kernels run through the Triton interpreter, which is decided when the
kernels are *defined*: set TRITON_INTERPRET=1 before this module is first imported.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import operator
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import triton

from . import triton_configs as _cfg
from .torch_backend import median_sq_distance, noise_tol
from .base import ZeroBandwidthError

POISON = False


def _load_kernels():
    """flashcka.triton, or kernels/triton from the source tree when the (editable)
    install predates it."""
    try:
        return importlib.import_module("flashcka.triton")
    except ImportError:
        src = Path(__file__).resolve().parents[3] / "kernels" / "triton"
        if not (src / "__init__.py").is_file():
            raise
        spec = importlib.util.spec_from_file_location(
            "flashcka.triton", src / "__init__.py", submodule_search_locations=[str(src)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["flashcka.triton"] = mod
        spec.loader.exec_module(mod)
        return mod


_k = _load_kernels()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _scratch(shape, dtype, device) -> torch.Tensor:
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


MIN_STEPS = 4   # split-K: at least this many BLOCK_K steps of features per split
FILL = 2        # split-K when the upper-triangle tiles are fewer than FILL × SMs programs
WAVE_SEARCH = 8  # split counts tried beyond the least that gives FILL × SMs programs


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (triton.cdiv is a constexpr function: ~3 µs a call)."""
    return -(-a // b)


def _name(dt: torch.dtype) -> str:
    return str(dt).rsplit(".", 1)[-1]


def _gram_config(ct: torch.dtype, n: int, interpret: bool | None = None,
                 prec: str = "ieee", hopper: bool = False) -> dict:
    return _cfg.gram_config(_name(ct), n, interpreting() if interpret is None else interpret,
                            prec, hopper)


def _hopper(device: torch.device) -> bool:
    """Compute capability 9.x (TMA loads for the tf32 Gram: ``triton_configs.gram_config``)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


class GramPlan(NamedTuple):
    """Launch geometry of ``_gram_stats_kernel``: grid (ntri, splits)."""
    cfg: dict        # BLOCK, BLOCK_K (+ num_warps, num_stages on a GPU)
    nb: int          # blocks of BLOCK rows
    ntri: int        # upper-triangle tiles, nb(nb+1)/2: one program each per split
    splits: int      # split-K factor (1: no partials, no reduction kernel)
    per_split: int   # BLOCK_K steps of features per split

    @property
    def programs(self) -> int:
        return self.ntri * self.splits


def gram_plan(n: int, d: int, ct: torch.dtype, *, sms: int,
              interpret: bool | None = None, prec: str = "ieee", hopper: bool = False,
              config: dict | None = None) -> GramPlan:
    """The grid for n samples of d features (``centred_rows``' contiguous X_c, whatever
    x's layout) on a device of ``sms`` multiprocessors: one program per upper-triangle
    tile, and when those are fewer than FILL·sms, the ceil(d/BLOCK_K) feature steps split
    S ways (at least MIN_STEPS steps a split; S from S0 = ceil(FILL·sms/ntri) to
    S0 + min(S0, WAVE_SEARCH): enough programs, then the fullest last wave on ``sms`` SMs,
    then the fewest splits); the S partial tiles are added in a fixed order.
    hopper: the device is a Hopper (TMA configurations). config: block sizes, warps,
    stages (and TMA) instead of ``triton_configs.gram_config``'s (bench/gpu_sweep.py)."""
    cfg = config or _gram_config(ct, n, interpret, prec, hopper)
    nb = _cdiv(n, cfg["BLOCK"])
    ntri = nb * (nb + 1) // 2
    steps = max(1, _cdiv(d, cfg["BLOCK_K"]))
    per_split = steps
    if ntri < FILL * sms and steps >= 2 * MIN_STEPS:
        lo = _cdiv(FILL * sms, ntri)
        ps = {max(MIN_STEPS, f(steps, s)) for s in range(lo, lo + min(lo, WAVE_SEARCH) + 1)
              for f in (operator.floordiv, _cdiv)}

        def score(p):   # enough programs, then the fullest last wave, then fewest splits
            progs = ntri * _cdiv(steps, p)
            return min(progs, ntri * lo), progs / (_cdiv(progs, sms) * sms), p
        per_split = max(ps, key=score)
    return GramPlan(cfg, nb, ntri, _cdiv(steps, per_split), per_split)


def _precision(x_dtype: torch.dtype, ct: torch.dtype, allow_tf32: bool,
               allow_bf16: bool) -> str:
    return _cfg.precision(_name(x_dtype), _name(ct), allow_tf32, allow_bf16, interpreting())


def _epilogue_block(n: int) -> int:
    return _cfg.epilogue_block(n, interpreting())


def token_view(x: torch.Tensor):
    """x (n, ...) as (x', T, C, stride_n, stride_t, stride_c): feature f = t·C + c of
    the row-major flattening lives at x' + i·stride_n + t·stride_t + c·stride_c.
    Trailing dims are merged where their strides allow; only layouts that need three or
    more separate strides are copied (reshape)."""
    merged: list[list[int]] = []
    for size, stride in zip(x.shape[1:], x.stride()[1:]):
        if size == 1:
            continue
        if merged and merged[-1][1] == size * stride:
            merged[-1] = [merged[-1][0] * size, stride]
        else:
            merged.append([size, stride])
    if len(merged) > 2:
        x = x.reshape(x.shape[0], -1)
        merged = [[x.shape[1], x.stride(1)]]
    if not merged:
        merged = [[1, 1]]
    if len(merged) == 1:
        merged = [[1, 0]] + merged
    (T, st_t), (C, st_c) = merged
    return x, T, C, x.stride(0), st_t, st_c


def centred_rows(x: torch.Tensor, mu: torch.Tensor, prec: str, block_k: int) -> torch.Tensor:
    """X_c = x − 1μᵀ of x (n, ...) as a contiguous (n, d_pad) tensor, d = x[0].numel(),
    d_pad = BLOCK_K·ceil(d/BLOCK_K), features d..d_pad zero: what ``_gram_stats_kernel``
    reads (unit stride, 16-element-aligned rows, no feature mask).

    ``_centre_kernel``, one pass reading x through its strides (``token_view``: token
    tensors (n, T, C) are not copied first). x − μ is taken in the wider of x's dtype and
    ct = mu.dtype (float64 x with float32 ct: in float64, then rounded; float16/bfloat16 x:
    exactly widened to ct first), then rounded to the products' dtype: ct, or bfloat16
    for bf16 products ("bf16"/"bf16_rounded")."""
    n, d = x.shape[0], x[0].numel()
    if mu.numel() != d:
        raise ValueError(f"mu has {mu.numel()} entries for {d} features")
    xv, T, C, st_n, st_t, st_c = token_view(x)
    dt = getattr(torch, _cfg.xc_dtype(_name(mu.dtype), prec))
    d_pad = block_k * _cdiv(d, block_k)
    xc = torch.empty((n, d_pad), dtype=dt, device=x.device)
    if d_pad > d:
        xc[:, d:].zero_()
    mu_w = mu.reshape(-1).to(torch.promote_types(x.dtype, mu.dtype)).contiguous()
    if n:
        blk = _cfg.CENTRE_BLOCK
        _k._centre_kernel[(n * T, _cdiv(C, blk))](xv, mu_w, xc, T, C, st_n, st_t, st_c,
                                                  d_pad, BLOCK_C=blk)
    return xc


def gram_stats_triton(x: torch.Tensor, mu: torch.Tensor, *, allow_tf32: bool = False,
                      allow_bf16: bool = False, config: dict | None = None):
    """Upper-triangle tiles of K = X_c X_cᵀ (X_c = x − 1μᵀ, flattened (n, d)), its diagonal
    and row sums K1 = X_c(X_cᵀ1).

    x (n, ...) float16/bfloat16/float32/float64, any strides; mu (x.shape[1:]) in the
    compute dtype ct (float32 or float64). X_c is materialised once (``centred_rows``,
    n·d_pad elements of ct, or of bfloat16 for bf16 products), then the kernel runs a
    triangle GEMM on it. Returns k (n, n) ct with only the tiles on and above the
    diagonal written (the lower triangle is garbage), diag (n,) ct, rowsum (n,) ct.
    allow_tf32: float32 products on TF32 tensor cores (≈1e-3 relative error; default off).
    allow_bf16: bfloat16 inputs' centered values rounded to bfloat16 for bf16 tensor-core
    products with float32 accumulation (≈4e-3 relative error per product; default off).
    The grid is ``gram_plan``'s (split-K on a device the tiles would not fill); config:
    see ``gram_plan``.
    """
    ct = mu.dtype
    if ct not in (torch.float32, torch.float64):
        raise TypeError(f"mu must be float32 or float64, got {ct}")
    n = x.shape[0]
    prec = _precision(x.dtype, ct, allow_tf32, allow_bf16)
    plan = gram_plan(n, x[0].numel(), ct, sms=_num_sms(x.device), prec=prec,
                     hopper=_hopper(x.device), config=config)
    cfg = plan.cfg
    blk = cfg["BLOCK"]
    xc = centred_rows(x, mu, prec, cfg["BLOCK_K"])
    k = _scratch((n, n), ct, x.device)
    diag = _scratch((n,), ct, x.device)
    rowpart = _scratch((plan.nb, n), ct, x.device)
    split = plan.splits > 1
    part = _scratch((plan.splits, plan.ntri, blk, blk), ct, x.device) if split else k
    src = xc
    if cfg.get("TMA"):
        from triton.tools.tensor_descriptor import TensorDescriptor
        src = TensorDescriptor.from_tensor(xc, [blk, cfg["BLOCK_K"]])
    _k._gram_stats_kernel[(plan.ntri, plan.splits)](
        src, k, diag, rowpart, part, n, xc.shape[1], xc.stride(0), k.stride(0),
        plan.nb, plan.per_split, INPUT_PRECISION=prec, SPLIT=split, **cfg)
    if split:
        _k._gram_reduce_kernel[(plan.ntri,)](part, k, diag, rowpart, n, k.stride(0),
                                             plan.nb, plan.splits, BLOCK=blk,
                                             **_cfg.reduce_config(blk, interpreting()))
    return k, diag, rowpart.sum(0)


def rbf_triton(k: torch.Tensor, diag: torch.Tensor, sigma, threshold: float,
               dim: int = 1) -> torch.Tensor:
    """In place on the upper tiles of k (from gram_stats_triton): K -> exp(-D/(2σ²)),
    D_ab = ‖x_a − x_b‖². σ² = sigma², or threshold² · median of all n² entries of D
    (diagonal zeros included, numpy.median convention; computed on the device, one sync
    to check it is positive). If every distance is zero (a constant representation) K is
    11ᵀ, as in the torch backend (its centered Gram is 0: CKA is NaN with a warning);
    if only the median is zero, ZeroBandwidthError. Returns the row sums (n,) of K."""
    n = k.shape[0]
    blk = _epilogue_block(n)
    nb = triton.cdiv(n, blk)
    rowpart = _scratch((nb, n), k.dtype, k.device)
    grid = (nb * (nb + 1) // 2,)     # upper-triangle tiles, linear index
    tol = noise_tol(dim, k.dtype)
    if sigma is not None:
        s = float(sigma)
        two_s2 = 2.0 * s * s
        inv = -math.inf if two_s2 == 0.0 else -1.0 / two_s2
        scale = torch.full((), inv, dtype=torch.float64).to(device=k.device, dtype=k.dtype)
        _k._rbf_kernel[grid](k, diag, scale, rowpart, n, k.stride(0), tol, nb,
                             BLOCK=blk, DIST=True, EXP=True)
        return rowpart.sum(0)
    _k._rbf_kernel[grid](k, diag, diag, rowpart, n, k.stride(0), tol, nb,
                         BLOCK=blk, DIST=True, EXP=False)
    med = median_sq_distance(k)  # reads only the strict upper triangle
    if bool(med > 0):
        scale = ((-0.5 / threshold) / threshold) / med
    elif not bool(_strict_upper(k).max() > 0):
        scale = torch.zeros((), dtype=k.dtype, device=k.device)  # constant: K = 11ᵀ
    else:
        raise ZeroBandwidthError(
            "the median heuristic gives sigma = 0 (at least half of the squared "
            "pairwise distances are zero, e.g. repeated samples); pass sigma=")
    _k._rbf_kernel[grid](k, diag, scale, rowpart, n, k.stride(0), 0.0, nb,
                         BLOCK=blk, DIST=False, EXP=True)
    return rowpart.sum(0)


def _strict_upper(k: torch.Tensor) -> torch.Tensor:
    iu = torch.triu_indices(k.shape[0], k.shape[0], 1, device=k.device)
    return k[iu[0], iu[1]]


def row_length(n: int, unbiased: bool) -> int:
    """Packed row: strict upper triangle (n(n−1)/2), plus the diagonal (n) when biased."""
    return n * (n - 1) // 2 + (0 if unbiased else n)


def center_pack_triton(k: torch.Tensor, rowsum: torch.Tensor, out: torch.Tensor, *,
                       unbiased: bool) -> torch.Tensor:
    """Centered k written into ``out`` (row_length(n, unbiased),) as a packed row.

    C = K − m1ᵀ − 1mᵀ with, unbiased (U-centering, Székely & Rizzo 2014; C_ii = 0),
    r = rowsum − diag(K), m_i = r_i/(n−2) − Σr/(2(n−1)(n−2)); biased (HKH),
    m_i = rowsum_i/n − Σ rowsum/(2n²). Packed: sqrt(2)·C_ij for i < j row by row, then
    (biased) C_ii, so that a dot product of two rows is ⟨C, C'⟩_F."""
    n = k.shape[0]
    if out.shape != (row_length(n, unbiased),) or out.dtype != k.dtype or out.stride(0) != 1:
        raise ValueError(f"out must be a contiguous ({row_length(n, unbiased)},) {k.dtype} "
                         f"tensor, got {tuple(out.shape)} {out.dtype}")
    if unbiased:
        r = rowsum - k.diagonal()
        m = r / (n - 2) - r.sum() / (2 * (n - 1) * (n - 2))
    else:
        m = rowsum / n - rowsum.sum() / (2 * n * n)
    blk = _epilogue_block(n)
    nb = triton.cdiv(n, blk)
    _k._center_pack_kernel[(nb * (nb + 1) // 2,)](k, m.contiguous(), out, n, k.stride(0), nb,
                                                  BLOCK=blk, UNBIASED=unbiased)
    return out


def pair_triton(ga: torch.Tensor, gb: torch.Tensor, *, allow_tf32: bool = False) -> torch.Tensor:
    """(LA, m), (LB, m) -> (LA, LB) float64 inner products of rows.

    Split-K: each program sums a chunk of at most 8192 entries in the rows' dtype
    (float32 accumulation for float32 rows), the chunk partials are added in float64."""
    if ga.dim() != 2 or gb.dim() != 2 or ga.shape[1] != gb.shape[1]:
        raise ValueError(f"pair needs (LA, m) and (LB, m), got {tuple(ga.shape)}, "
                         f"{tuple(gb.shape)}")
    dt = torch.promote_types(ga.dtype, gb.dtype)
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"pair rows must be float32 or float64, got {dt}")
    ga = ga.to(dt)
    gb = gb.to(dt)
    if ga.shape[1] and ga.stride(1) != 1:
        ga = ga.contiguous()
    if gb.shape[1] and gb.stride(1) != 1:
        gb = gb.contiguous()
    (LA, m), LB = ga.shape, gb.shape[0]
    ba, bk, cfg = _cfg.pair_config(_name(dt), interpreting())
    bb = ba
    tiles = triton.cdiv(LA, ba) * triton.cdiv(LB, bb)
    kblocks = max(1, triton.cdiv(m, bk))
    target = 1 if interpreting() else 4 * _num_sms(ga.device)
    splits = max(triton.cdiv(target, tiles), triton.cdiv(m, 8192), 1)
    splits = min(splits, kblocks)
    chunk = bk * triton.cdiv(kblocks, splits)
    splits = max(1, triton.cdiv(m, chunk))
    part = _scratch((splits, LA, LB), torch.float64, ga.device)
    precision = _precision(dt, dt, allow_tf32, False)
    _k._pair_kernel[(triton.cdiv(LA, ba), triton.cdiv(LB, bb), splits)](
        ga, gb, part, LA, LB, m, ga.stride(0), gb.stride(0), chunk,
        BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=bk, INPUT_PRECISION=precision, **cfg)
    return part.sum(0)


def kernel_tiles_triton(xi, xj, out, *, kernel, two_s2, shift, unbiased, dims, sums=None):
    """The tiled route's tiles (``Backend.kernel_tiles``): ``_kernel_tile_kernel`` once per
    layer, the numbers of ``torch_backend.kernel_tile``; row/column sums in float64."""
    ct = out.dtype
    if ct not in (torch.float32, torch.float64) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32/float64 tensor, got {ct}")
    L, ti, tj = out.shape
    cfg = dict(_cfg.tile_config(_name(ct), interpreting()))
    code = {"linear": 0, "rbf": 1, "dist": 2}[kernel]
    par = torch.zeros(L, 2, dtype=ct, device=out.device)
    if two_s2 is not None:
        par[:, 0] = two_s2
    if shift is not None:
        par[:, 1] = shift
    grid = (triton.cdiv(ti, cfg["BLOCK_M"]), triton.cdiv(tj, cfg["BLOCK_N"]))
    for i in range(L):
        a = xi[i].to(ct)
        b = a if xj is None else xj[i].to(ct)
        a = a if a.stride(-1) == 1 else a.contiguous()
        b = b if b.stride(-1) == 1 else b.contiguous()
        _k._kernel_tile_kernel[grid](
            a, b, par[i], out[i], ti, tj, a.shape[1], a.stride(0), b.stride(0),
            noise_tol(dims[i], ct), KERNEL=code, DIAG=xj is None, UNBIASED=bool(unbiased),
            SHIFT=shift is not None, INPUT_PRECISION="ieee", **cfg)
    if sums is not None:
        torch.sum(out, 2, dtype=torch.float64, out=sums[0])
        torch.sum(out, 1, dtype=torch.float64, out=sums[1])
    return out


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


__all__ = ["gram_stats_triton", "gram_plan", "centred_rows", "GramPlan", "rbf_triton",
           "center_pack_triton", "pair_triton", "kernel_tiles_triton",
           "row_length", "token_view", "interpreting"]
