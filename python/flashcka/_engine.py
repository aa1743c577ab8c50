"""The shared machinery behind cka_matrix, hsic, cka and MinibatchCKA.

Gram route: each representation becomes one centered Gram row (once), every cross HSIC
is one matrix product of the stacked rows, every self HSIC the diagonal of a row product.
Feature route (linear kernel, small widths): the same numbers from X_cᵀY_c (Kornblith et
al. 2019), in ``_feature``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from . import _validate
from .backends import ZeroBandwidthError, float64_shift



@dataclass
class Settings:
    kernel: str = "linear"
    unbiased: bool = True
    sigma: float | None = None
    threshold: float = 1.0

    def check(self) -> None:
        """Validate every setting (messages name the argument); ``unbiased`` becomes a bool."""
        _validate.kernel_args(self.kernel, self.sigma, self.threshold)
        self.unbiased = _validate.flag(self.unbiased, "unbiased")


def normaliser(n: int, unbiased: bool) -> float:
    """HSIC₁ = ⟨Û(K), Û(L)⟩ / (n(n−3));  HSIC₀ = ⟨HKH, HLH⟩ / (n−1)²."""
    return float(n * (n - 3)) if unbiased else float((n - 1) ** 2)


@dataclass
class Rows:
    """Centered Gram rows of L representations plus what the zero-variance test needs.

    Row i is the centered Gram of ``scale_i · X_c`` (``scale`` float64 powers of two, see
    ``pow2_scale``), so the true centered Gram is ``row_i / scale_i²``; ``sq_c`` and ``sq``
    are in the inputs' own units. ``scale=None`` means all ones."""
    g: torch.Tensor        # (L, m) compute dtype, the backend's row layout
    sq_c: torch.Tensor     # (L,) float64, ‖X − 1μᵀ‖²_F
    sq: torch.Tensor       # (L,) float64, ‖X‖²_F
    scale: torch.Tensor | None = None  # (L,) float64


# max |X − 1μᵀ| outside [lo, hi] (per compute dtype) gets a power-of-two scale that brings
# it into [0.5, 1); inside, scale = 1 and the values are used as they are. hi also keeps
# max²·n·d <= `pair`, so the pair stage's sums, up to (n·d·max²)², cannot overflow
# (float32: 2^100). csrc/gram_cpu.cpp (Safe, safe_hi) applies the same rule.
_SAFE_RANGE = {torch.float64: (2.0 ** -128, 2.0 ** 128, 2.0 ** 400)}
_SAFE_RANGE_F32 = (2.0 ** -16, 2.0 ** 16, 2.0 ** 50)


def pow2_scale(amax: float, ct: torch.dtype, nd: int = 1) -> float:
    """The power of two by which X_c (n·d = ``nd`` values) is multiplied before its Gram
    (1.0 for normal inputs, zero, NaN or Inf); exact in binary floating point, so CKA
    does not change."""
    lo, hi, pair = _SAFE_RANGE.get(ct, _SAFE_RANGE_F32)
    hi = min(hi, math.sqrt(pair / max(nd, 1)))
    if not math.isfinite(amax) or amax == 0.0 or lo <= amax <= hi:
        return 1.0
    return math.ldexp(1.0, -math.frexp(amax)[1])


def gram_rows(be, tensors, names, n, ct, s: Settings, out: torch.Tensor | None = None) -> Rows:
    """One centered Gram row per representation, written into ``out`` (L, m) if given."""
    L = len(tensors)
    device = tensors[0].device
    g = out if out is not None else torch.empty(
        L, be.row_length(n, s.unbiased), dtype=ct, device=device)
    if hasattr(be, "centered_gram_rows"):       # native: all layers in one call
        sq_c, sq, scale = _fused_rows(be, tensors, names, g, n, s)
    else:
        sq_c = torch.empty(L, dtype=torch.float64, device=device)
        sq = torch.empty(L, dtype=torch.float64, device=device)
        scale = torch.ones(L, dtype=torch.float64, device=device)
        for i, (x, name) in enumerate(zip(tensors, names)):
            sq_c[i], sq[i] = gram_row(be, x, name, g[i], n, ct, s, scale_out=scale[i])
    check_finite(sq_c, names, ct, tensors)
    return Rows(g, sq_c, sq, scale)


def _fused_rows(be, tensors, names, g, n, s: Settings):
    """Rows from a backend that centers, scales and builds all rows in one call
    (``centered_gram_rows``, see backends/native.py): (sq_c, sq, scale) float64 (L,)."""
    try:
        st = be.centered_gram_rows(tensors, g, kernel=s.kernel, sigma=s.sigma,
                                   threshold=s.threshold, unbiased=s.unbiased)
    except ZeroBandwidthError as e:
        raise ValueError(f"{names[e.layer]}: {e}") from None
    return st[:, 0], st[:, 1], st[:, 2]          # in x's units; RBF rows have scale 1


def check_finite(sq_c: torch.Tensor, names, ct, tensors=None) -> None:
    """Raise naming the first layer whose ‖X_c‖² is non-finite (NaN/Inf in its input, or
    a Gram that overflows ct); with its tensor at hand, say exactly where."""
    bad = ~torch.isfinite(sq_c)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        if tensors is not None:
            _validate.raise_non_finite(tensors[i], names[i], ct)
        raise ValueError(f"{names[i]} holds non-finite values (NaN/Inf) or overflows {ct} in "
                         f"its Gram matrix; pass dtype=torch.float64 or check the model")


def hsic_from_rows(be, ra: Rows, rb: Rows, same: bool, n: int, unbiased: bool,
                   names_a=None, names_b=None):
    """(cross (L_A, L_B), self_a (L_A,), self_b (L_B,)) float64 HSICs of one batch's rows,
    in the inputs' own units.

    Row i holds the centered Gram of scale_i·X_c (``Rows.scale``, float64 powers of two):
    with f_i = scale_i², ``HSIC_ij = (g_i · g_j) / (norm · f_i · f_j)``, norm = n(n−3) or
    (n−1)²: cross from one product G_A G_Bᵀ in ct (the backend's pair stage), self terms
    its diagonal (same) or the row norms accumulated in float64. If a product is not
    finite or a squared row norm is outside _NORM_SAFE (overflow, or underflow that could
    cost bits), the rows are normalised by powers of two t_i (a copy; f_i ← f_i·t_i) and
    the products redone. A product still not finite raises a ValueError naming the pair
    (docs/design.md §6: normalise rows, keep the scales in float64)."""
    norm = normaliser(n, unbiased)
    fa = _row_scales(ra).square()
    fb = fa if same else _row_scales(rb).square()
    ga, gb = ra.g, rb.g
    raw, qa, qb = _products(be, ga, gb, same)
    if not _in_range(raw, (qa, ra.sq_c), (qb, rb.sq_c), ga.dtype):
        ga, ta = _normalised(ga)
        gb, tb = (ga, ta) if same else _normalised(gb)
        fa, fb = fa * ta, fb * tb
        raw, qa, qb = _products(be, ga, gb, same)
    _check_pair(raw, names_a, names_b, ga.dtype)
    cross = raw / (norm * fa[:, None] * fb[None, :])
    if same:
        diag = cross.diagonal().clone()
        return cross, diag, diag
    _check_pair(qa[:, None], names_a, names_a, ga.dtype)
    _check_pair(qb[:, None], names_b, names_b, gb.dtype)
    return cross, qa / (norm * fa.square()), qb / (norm * fb.square())


def _products(be, ga, gb, same):
    """(G_A G_Bᵀ (L_A, L_B), ‖g_a‖² (L_A,), ‖g_b‖² (L_B,)), float64, rows as given."""
    raw = be.pair(ga, gb)
    if same:
        q = raw.diagonal()
        return raw, q, q
    return raw, _sq_row_norms(be, ga), _sq_row_norms(be, gb)


# Squared row norms the pair stage accepts without normalising (zero rows always):
# inside, no product overflowed and products that underflowed are below eps relative.
_NORM_SAFE = {torch.float32: (2.0 ** -60, 2.0 ** 100), torch.float64: (2.0 ** -900, 2.0 ** 900)}


def _in_range(raw, side_a, side_b, dtype) -> bool:
    """All products finite, every squared row norm q inside _NORM_SAFE, or 0 for a row of
    a constant layer (its ‖X_c‖² sq_c is 0: the row is exactly zero)."""
    lo, hi = _NORM_SAFE.get(dtype, _NORM_SAFE[torch.float32])
    if not bool(torch.isfinite(raw).all()):
        return False
    for q, sq_c in (side_a, side_b):
        zero = (q == 0) & (sq_c.to(q.device) == 0)
        if not bool((((q >= lo) & (q <= hi)) | zero).all()):
            return False
    return True


def _normalised(g: torch.Tensor):
    """(g·t (a copy), t (L,) float64): t_i a power of two with max |g_i·t_i| in [1/2, 1)
    (1 for zero or non-finite rows)."""
    lo, hi = torch.aminmax(g.detach(), dim=1)
    amax = torch.maximum(-lo, hi).to(torch.float64)
    lim = 125 if g.dtype == torch.float32 else 1021
    e = torch.frexp(amax)[1].clamp(-lim, lim)
    ok = torch.isfinite(amax) & (amax > 0)
    t = torch.where(ok, torch.ldexp(torch.ones_like(amax), -e), torch.ones_like(amax))
    return g * t.to(g.dtype)[:, None], t


def _row_scales(r: Rows) -> torch.Tensor:
    """Rows.scale (L,) float64, ones for rows built without one."""
    scale = getattr(r, "scale", None)
    if scale is None:
        return torch.ones(r.g.shape[0], dtype=torch.float64, device=r.g.device)
    return scale.to(device=r.g.device, dtype=torch.float64)


def _check_pair(raw: torch.Tensor, names_a, names_b, ct) -> None:
    bad = ~torch.isfinite(raw)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        a = names_a[i] if names_a is not None else f"row {i}"
        b = names_b[j] if names_b is not None else f"row {j}"
        raise ValueError(f"the HSIC of {a} and {b} is not finite ({raw[i, j].item()}): "
                         f"{ct} overflowed in the pair stage; pass dtype=torch.float64")


def _sq_row_norms(be, g: torch.Tensor) -> torch.Tensor:
    """‖g_i‖² (L,) accumulated in float64: the backend's ``sq_row_norms`` if it has one
    (and no graph is needed), else row by row (a float64 copy of one row at a time)."""
    fn = getattr(be, "sq_row_norms", None)
    if fn is not None and not (torch.is_grad_enabled() and g.requires_grad):
        return fn(g)
    if g.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=g.device)
    return torch.stack([torch.linalg.vector_norm(row, dtype=torch.float64).square()
                        for row in g])


def gram_row(be, x, name, out, n, ct, s: Settings, scale_out: torch.Tensor):
    """Centered Gram of one representation into ``out``; returns (‖X_c‖², ‖X‖²) in the
    input's units (Python floats from the native backend, float64 0-d tensors otherwise).
    The row is the Gram of ``scale · X_c`` (``pow2_scale``) and scale is written into ``scale_out`` (a one-element float64 tensor, e.g.
    ``Rows.scale[i]``). The native backend computes μ, the scale and the row in one call
    (``centered_gram_rows``, scaling as it loads x); the others get ``scale · x`` (a copy,
    only when scale != 1). RBF rows are kernel values (σ scaled with x), so their scale
    is 1."""
    if hasattr(be, "centered_gram_rows"):       # native: one call, scalars from it
        try:
            st = be.centered_gram_rows([x], out, kernel=s.kernel, sigma=s.sigma,
                                       threshold=s.threshold, unbiased=s.unbiased)
        except ZeroBandwidthError as e:
            raise ValueError(f"{name}: {e}") from None
        sq_c, sq, scale, _ = st.tolist()[0]     # (indexing a tensor costs µs a time)
        scale_out.fill_(scale)
        return sq_c, sq
    shift = float64_shift(x, ct)
    if shift is not None:  # centred in float64 before anything is rounded to ct
        x = x - shift
        mu = torch.zeros(shift.shape, dtype=ct, device=x.device)
    elif x.device.type == "cpu":  # in float64: a float32 sum near float32's max overflows
        mu = be.column_mean(x, torch.float64).to(ct)
    else:
        mu = be.column_mean(x, ct)
    amax, constant = _max_abs_dev(x, mu, ct)
    mu_sq = (shift if shift is not None else mu).to(torch.float64).square().sum()
    if constant:  # every column constant: X_c = 0 exactly, whatever the rounding of μ;
        out.zero_()  # its centered kernel (0, or 11ᵀ for RBF) centres to exactly 0
        scale_out.fill_(1.0)
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        return zero, zero + n * mu_sq
    scale = pow2_scale(amax, ct, x.numel())
    xs, mus, sigma = x, mu, s.sigma
    if scale != 1.0:  # (a float64 x stays float64: the backend centres it before rounding)
        xs, mus = (x if x.dtype == torch.float64 else x.to(ct)) * scale, mu * scale
        sigma = None if s.sigma is None else s.sigma * scale
    try:
        sq_c = be.centered_gram_row(xs, mus, out, kernel=s.kernel, sigma=sigma,
                                    threshold=s.threshold, unbiased=s.unbiased)
    except ZeroBandwidthError as e:
        raise ValueError(f"{name}: {e}") from None
    sq_c = sq_c.to(torch.float64) / (scale * scale)
    scale_out.fill_(scale if s.kernel == "linear" else 1.0)
    return sq_c, sq_c + n * mu_sq


def _max_abs_dev(x, mu, ct) -> tuple[float, bool]:
    """(max |x − μ| over all elements, whether every column is constant), from each
    column's min and max (one pass; no graph)."""
    lo, hi = torch.aminmax(x.detach().reshape(x.shape[0], -1), dim=0)
    m = mu.detach().reshape(-1)
    amax = float(torch.maximum(hi.to(ct) - m, m - lo.to(ct)).max())
    return amax, bool((hi == lo).all()) and bool(torch.isfinite(lo).all())


def zero_variance(sq_c: torch.Tensor, sq: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """Layers whose rows are all equal: ``gram_rows``/``gram_row`` give them ‖X_c‖² = 0
    exactly (every backend), and sums over batches keep it 0 only if every batch was
    constant. Exact, not a threshold relative to ‖X‖² (a float32 offset of 1e8 with a
    spread of 100 is valid data: x − μ is exact there). ``sq``/``ct`` are kept for the
    callers' signature."""
    return ~(sq_c > 0)


def cka_from_hsic(cross, self_a, self_b, undefined_a, undefined_b, names_a, names_b):
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) -> (L_A, L_B) float64; NaN (with
    one warning per layer naming it) where a self term is zero, negative or from a
    zero-variance representation. Never clamped: debiased CKA can be slightly outside
    [0, 1]. ``names_b is names_a`` (one set of layers against itself) warns once a layer."""
    bad_a = undefined_a | ~(self_a > 0)
    bad_b = undefined_b | ~(self_b > 0)
    sides = [(bad_a, names_a)]
    if not (names_b is names_a and torch.equal(bad_a, bad_b)):
        sides.append((bad_b, names_b))
    for flags, names in sides:
        for i in flags.nonzero().flatten().tolist():
            warnings.warn(f"CKA is undefined for {names[i]}: its representation has zero "
                          f"variance (or a non-positive unbiased self-HSIC); its entries are NaN",
                          _validate.FlashCKAWarning, stacklevel=4)
    # each self term its own sqrt: their product underflows float64 below ~1e-154
    denom = torch.sqrt(self_a.clamp(min=0))[:, None] * torch.sqrt(self_b.clamp(min=0))[None, :]
    out = cross / denom
    if bool(bad_a.any()) or bool(bad_b.any()):
        keep = ~(bad_a[:, None] | bad_b[None, :])
        out = torch.where(keep, out, torch.full_like(out, float("nan")))
    return out
