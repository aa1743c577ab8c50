"""Public functions on tensors: gram, center, hsic, cka, cka_matrix.

Shapes: a representation is ``(n, ...)`` (n samples), flattened to ``(n, d)``. Results of
hsic/cka/cka_matrix are float64 on the inputs' device. Compute dtype: float64 if asked
(``dtype=torch.float64``) or if any input is float64, float32 otherwise (bf16/fp16 inputs
are upcast). Features are centered (X − 1μᵀ) before any Gram: every estimator is exactly
invariant to it and it removes float32 cancellation (docs/design.md §1).

Contract, the same on every route and backend:
- Scale: each representation is multiplied by a power of two (exact) when its magnitude
  is outside a safe range, and the scales are applied in float64, so float32 inputs at
  any scale float32 holds (1e-30 … 1e30) give the same CKA; HSIC is returned in the
  inputs' units. A pair stage that still overflows raises a ValueError.
- Zero variance: a representation whose rows are all equal has undefined CKA: NaN and
  one warning naming it. Nothing else is called constant.
- ``backend=``: "auto" picks native (CPU) or Triton (CUDA) where usable, torch otherwise;
  a named backend is used or refused (RuntimeError/ValueError), on either route. The
  feature route (``route="feature"``, or chosen by ``route="auto"`` when cheaper) runs
  torch operations, so it is taken only with backend "auto" or "torch".
- Autograd: when an input requires grad (and grad mode is on) the result carries the
  graph: "auto" then runs the torch backend; naming a backend that cannot differentiate
  ("native", "triton") raises a ValueError.
"""
from __future__ import annotations

import math

import torch

from ..core import engine as _engine, feature as _feature, validate as _validate
from .. import backends
from ..core.engine import Settings
from . import tiled_route as _tiled_route


def gram(x: torch.Tensor, kernel: str = "linear", *, sigma: float | None = None,
         threshold: float = 1.0, dtype: torch.dtype | None = None,
         backend: str = "auto") -> torch.Tensor:
    """Kernel (Gram) matrix of ``x`` (n, ...) -> (n, n), uncentered.

    linear: ``K = X Xᵀ``.  rbf: ``K_ab = exp(−‖x_a − x_b‖² / (2σ²))`` with ``σ = sigma`` if
    given, else ``σ² = threshold² · median(D)`` where ``D`` holds all n² squared pairwise
    distances, the n zeros of the diagonal included, and the median is numpy's (mean of
    the two middle values when n² is even) — Kornblith et al. 2019's convention.
    RBF is computed on ``s·x`` with ``s·σ`` (s a power of two), so any float scale works;
    a linear Gram that overflows or underflows the compute dtype raises a ValueError.
    """
    x = _validate.as_tensor(x, "x")
    _validate.representation(x, "x")
    _validate.kernel_args(kernel, sigma, threshold)
    ct = _validate.compute_dtype([([x], ["x"])], dtype)
    be = backends.select(backend, x, grad=_needs_grad([([x], ["x"])]))
    x, = _validate.upcast_float8([x])
    amax = float(x.detach().abs().amax())
    if not math.isfinite(amax):
        _validate.raise_non_finite(x, "x", ct)
    if kernel == "rbf" and not 2.0 ** -16 <= amax <= 2.0 ** 16 and amax > 0:
        scale = math.ldexp(1.0, -math.frexp(amax)[1])       # exact: K(s·x; s·σ) = K(x; σ)
        x = x.to(ct) * scale
        sigma = None if sigma is None else float(sigma) * scale
    elif kernel == "linear" and 0 < amax * amax < torch.finfo(ct).tiny / torch.finfo(ct).eps:
        raise ValueError(f"the Gram matrix of x underflows {ct} (largest |x| is {amax:.3g}: "
                         f"its products fall below {torch.finfo(ct).tiny:.3g}); pass "
                         f"dtype=torch.float64 or rescale x")
    try:
        k = be.kernel_matrix(x, kernel=kernel, sigma=sigma, threshold=threshold, ct=ct)
    except backends.ZeroBandwidthError as e:
        raise ValueError(f"x: {e}") from None
    if not bool(torch.isfinite(k).all()):
        _validate.raise_non_finite(x, "x", ct)
    return k


def center(k: torch.Tensor, *, unbiased: bool = True, backend: str = "auto") -> torch.Tensor:
    """Center a kernel matrix ``k`` (n, n) -> (n, n), without forming ``H = I − 11ᵀ/n``.

    biased: ``HKH`` (Gretton et al. 2005). unbiased: U-centering (Székely & Rizzo 2014):
    ``K̃`` = k with zeroed diagonal, ``Û_ij = K̃_ij − r_i/(n−2) − c_j/(n−2) + S/((n−1)(n−2))``
    (r, c the row/column sums of K̃, S their total) off the diagonal, ``Û_ii = 0``; n ≥ 4.
    """
    k = _validate.as_tensor(k, "k")
    _validate.representation(k, "k")
    unbiased = _validate.flag(unbiased, "unbiased")
    backends.check_name(backend)
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"k must be a square (n, n) matrix, got shape {tuple(k.shape)}")
    _validate.sample_count([([k], ["k"])], unbiased)
    if not bool(torch.isfinite(k).all()):
        _validate.raise_non_finite(k, "k", k.dtype)
    if k.dtype not in _validate.COMPUTE_DTYPES:
        k = k.float()
    be = backends.select(backend, k, grad=_needs_grad([([k], ["k"])]))
    amax = float(k.detach().abs().amax())
    scale = 1.0 if amax == 0 or amax < 2.0 ** 60 else math.ldexp(1.0, -math.frexp(amax)[1])
    out = be.center(k * scale if scale != 1.0 else k, unbiased=unbiased)  # linear in k
    if scale != 1.0:
        out = out / scale
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"the centered k overflows {k.dtype} (largest |k| {amax:.3g}); "
                         f"pass k.double()")
    return out


def hsic(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "linear", unbiased: bool = True,
         sigma: float | None = None, threshold: float = 1.0,
         dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """HSIC of ``x`` (n, ...) and ``y`` (n, ...) -> 0-d float64.

    unbiased (Song et al. 2012): ``⟨Û(K), Û(L)⟩_F / (n(n−3))`` with U-centered kernels;
    biased (Gretton et al. 2005): ``tr(K H L H) / (n−1)²``. Kernel arguments as in ``gram``.
    """
    return _pairs(*_validate.representations(x, "x"), *_validate.representations(y, "y"),
                  Settings(kernel, unbiased, sigma, threshold), dtype, backend, "auto",
                  want="hsic")[0, 0]


def cka(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "linear", unbiased: bool = True,
        sigma: float | None = None, threshold: float = 1.0,
        dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """CKA of ``x`` (n, ...) and ``y`` (n, ...) -> 0-d float64 (Kornblith et al. 2019).

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))``; with ``unbiased=True`` this is
    debiased CKA (HSIC₁, U-centering), which can be slightly negative: never clamped.
    A zero-variance representation gives NaN and a warning.
    """
    return _pairs(*_validate.representations(x, "x"), *_validate.representations(y, "y"),
                  Settings(kernel, unbiased, sigma, threshold), dtype, backend, "auto")[0, 0]


def cka_matrix(xs, ys=None, *, kernel: str = "linear", unbiased: bool = True,
               sigma: float | None = None, threshold: float = 1.0,
               dtype: torch.dtype | None = None, backend: str = "auto",
               route: str = "auto", max_memory: int | None = None,
               progress: bool | None = None) -> torch.Tensor:
    """CKA of every pair: ``xs`` (L_A representations (n, ...)), ``ys`` (L_B, or None for
    xs against itself) -> (L_A, L_B) float64. Sequences or name -> tensor dicts.

    Gram route: each centered Gram is computed once and stacked as a row of ``G_A``
    (L_A × m); all cross HSICs are ``G_A G_Bᵀ``, self HSICs its diagonal terms.
    Feature route (linear kernel, when cheaper by flop count, or ``route="feature"``):
    all ``‖X_cᵀY_c‖²_F`` from one product of the concatenated centered features.
    Tiled route (``route="tiled"``; docs/design.md §5): the same estimators streamed over
    tiles of samples, memory O(L·tile² + L·n), never an n × n matrix; its layers may also
    be row sources (a NumPy memmap, a ``.npy``/``.safetensors``/HDF5 path, an h5py
    dataset: core/sources.py), read a block of rows at a time. ``route="auto"`` takes it
    when the Gram route's packed Grams would exceed ``max_memory`` bytes (default: the
    device's available memory) or when a layer is not in memory; ``progress``: a tqdm bar
    over tile pairs (None: when stderr is a terminal). ``flashcka.plan`` estimates a call.
    """
    _validate.route_arg(route, kernel)
    _tiled_route.max_memory_arg(max_memory)
    if route == "tiled" or _tiled_route.needs_sources(xs) or (
            ys is not None and _tiled_route.needs_sources(ys)):
        return _tiled_route.run(xs, ys, Settings(kernel, unbiased, sigma, threshold), dtype,
                                backend, progress=progress)
    xa, na = _validate.representations(xs, "xs")
    if ys is None:
        xb, nb = None, na
    else:
        xb, nb = _validate.representations(ys, "ys")
    if torch.compiler.is_compiling():  # H5: torch.compile traces the custom ops (flashcka.ops)
        from .. import ops
        return ops.cka_matrix_compiled(xa, na, xb, nb, Settings(kernel, unbiased, sigma,
                                                                threshold), dtype, backend)
    return _pairs(xa, na, xb, nb, Settings(kernel, unbiased, sigma, threshold),
                  dtype, backend, route, max_memory=max_memory, progress=progress)


def _pairs(xa, na, xb, nb, s: Settings, dtype, backend, route, want="cka", *,
           max_memory=None, progress=None):
    """All-pairs HSIC (want="hsic") or CKA between xa and xb (None: xa with itself).

    Everything is validated first (each representation by ``_validate.representations``,
    once, before this is called). Route: the feature route (torch operations) is taken
    for ``route="feature"``, or for ``route="auto"`` with the linear kernel when cheaper,
    unless a kernel backend ("native", "triton") is forced: those run the Gram route on
    their own kernels. With grad needed, ``backends.select`` gives the torch backend (or
    refuses a forced backend that cannot differentiate)."""
    s.check()
    backends.check_name(backend)
    _validate.route_arg(route, s.kernel)
    same = xb is None
    groups = [(xa, na)] + ([] if same else [(xb, nb)])
    n = _validate.sample_count(groups, s.unbiased)
    _validate.device_of(groups)
    ct = _validate.compute_dtype(groups, dtype)
    grad = _needs_grad(groups)
    forced = backend in ("native", "triton")
    if route == "feature" and forced:
        raise ValueError(f"route='feature' runs torch operations, not backend={backend!r}; "
                         f"pass backend='auto' or 'torch', or route='gram'")
    dims_a = [math.prod(t.shape[1:]) for t in xa]
    dims_b = dims_a if same else [math.prod(t.shape[1:]) for t in xb]
    use_feature = route == "feature" or (
        route == "auto" and not forced and s.kernel == "linear"
        and _feature.cheaper(dims_a, dims_b, n, same))
    be = None if use_feature else backends.select(backend, xa[0], grad=grad)
    if be is not None and be.name != "native":
        xa = _validate.upcast_float8(xa)
        xb = None if same else _validate.upcast_float8(xb)
    if route == "auto" and not use_feature and not grad and _tiled_route.gram_too_big(
            be, n, len(xa) + (0 if same else len(xb)), ct, s.unbiased, max_memory,
            xa[0].device):
        return _tiled_route.run(dict(zip(na, xa)), None if same else dict(zip(nb, xb)), s,
                                dtype, backend, want, progress=progress)
    norm = _engine.normaliser(n, s.unbiased)

    if use_feature:
        fa = _feature.centered(xa, na, ct)
        fb = fa if same else _feature.centered(xb, nb, ct)
        raw = _feature.hsic(fa, fb, n, s.unbiased)
        qa = raw.diagonal() if same else _feature.self_hsic(fa, n, s.unbiased)
        qb = qa if same else _feature.self_hsic(fb, n, s.unbiased)
        ea = _feature.exponents(fa)
        h = _engine.hsics(raw, qa, qb, ea, ea if same else _feature.exponents(fb), norm, same)
        const_a, const_b = fa.constant, fb.constant
    else:
        ra = _engine.gram_rows(be, xa, na, n, ct, s)
        rb = ra if same else _engine.gram_rows(be, xb, nb, n, ct, s)
        const_a = _constant(ra, xa, na, ct)
        const_b = const_a if same else _constant(rb, xb, nb, ct)
        h = _engine.hsic_from_rows(be, ra, rb, same, n, s.unbiased, na, nb)
    if want == "hsic":
        return _engine.in_units(h, na, nb)
    return _engine.cka_from_hsic(h.cross, h.self_a, h.self_b, const_a, const_b, na, nb)


def _constant(rows, tensors, names, ct) -> torch.Tensor:
    """(L,) bool: representations whose rows are all equal — gram_rows gives them
    ‖X_c‖² = 0 exactly (_engine.zero_variance), and only them, so data whose spread is a
    few ulps of a large offset is not called constant. Such a representation is one row
    repeated: if that row holds ±inf/NaN (which centering would hide), raise."""
    flags = _engine.zero_variance(rows.sq_c, rows.sq, ct)
    for i in flags.nonzero().flatten().tolist():
        x = tensors[i]
        if not bool((x == x[:1]).all()):   # ‖X_c‖² underflowed (|x| ~ 1e-300)
            flags[i] = False
            continue
        if not bool(torch.isfinite(x[:1]).all()):
            _validate.raise_non_finite(x, names[i], ct)
    return flags


def _needs_grad(groups) -> bool:
    """Whether the result must carry an autograd graph (grad mode on, an input needs it)."""
    return torch.is_grad_enabled() and any(t.requires_grad for ts, _ in groups for t in ts)
