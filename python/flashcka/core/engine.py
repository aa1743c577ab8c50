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

from . import batched_rows as _batched, memory as _memory, validate as _validate
from ..backends import ZeroBandwidthError


@dataclass
class Settings:
    kernel: str = "linear"
    unbiased: bool = True
    sigma: float | None = None
    threshold: float = 1.0

    def check(self) -> None:
        """Validate every setting (messages name the argument); ``unbiased`` becomes a bool,
        ``sigma``/``threshold`` floats."""
        _validate.kernel_args(self.kernel, self.sigma, self.threshold)
        self.unbiased = _validate.flag(self.unbiased, "unbiased")
        # plain Python numbers (a NumPy scalar kept as is breaks torch.load(weights_only))
        self.threshold = float(self.threshold)
        self.sigma = None if self.sigma is None else float(self.sigma)


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
    top = 1022 if ct == torch.float64 else 126  # a subnormal amax: near 1, within ct's range
    return math.ldexp(1.0, min(-math.frexp(amax)[1], top))


def _sq_in_units(v: torch.Tensor, scale: float) -> torch.Tensor:
    """‖X_c‖² or ‖X‖² (float64) in x's own units from v, its value for scale·x. They only
    say whether a layer varies (> 0) and whether its input was finite, so a finite v whose
    value in x's units leaves float64 is held within [2^-1000, 2^1000] (the rule of
    csrc/gram_cpu.cpp's in_units): no false overflow, no false zero variance."""
    u = v / scale / scale
    return torch.where(torch.isfinite(v) & (v > 0), u.clamp(2.0 ** -1000, 2.0 ** 1000), u)


def gram_rows(be, tensors, names, n, ct, s: Settings, out: torch.Tensor | None = None) -> Rows:
    """One centered Gram row per representation, written into ``out`` (L, m) if given:
    native, all layers in one call (``_fused_rows``); the torch and Triton backends' linear
    rows with one host read per call (``_device_rows``); RBF layer by layer (``gram_row``,
    whose median heuristic reads the device)."""
    L = len(tensors)
    device = tensors[0].device
    m = be.row_length(n, s.unbiased)
    check_memory(be, names, n, m, ct, device, rows=L if out is None else 0,
                 d=max(x[0].numel() for x in tensors))
    g = out if out is not None else torch.empty(L, m, dtype=ct, device=device)
    if hasattr(be, "centered_gram_rows"):       # native: all layers in one call
        sq_c, sq, scale = _fused_rows(be, tensors, names, g, n, s)
    elif s.kernel == "linear":
        sq_c, sq, scale = _device_rows(be, tensors, names, g, n, ct, s)
    else:
        sq_c = torch.empty(L, dtype=torch.float64, device=device)
        sq = torch.empty(L, dtype=torch.float64, device=device)
        scale = torch.ones(L, dtype=torch.float64, device=device)
        for i, (x, name) in enumerate(zip(tensors, names)):
            sq_c[i], sq[i] = gram_row(be, x, name, g[i], n, ct, s, scale_out=scale[i])
    check_finite(sq_c, names, ct, tensors)
    return Rows(g, sq_c, sq, scale)


def check_memory(be, names, n, m, ct, device, rows: int, d: int = 0) -> None:
    """Before allocating: ``rows`` rows of m values in ct plus the backend's scratch for
    Grams of n samples of up to d features (``Backend.scratch_bytes``) must fit in what the
    device has left, else a MemoryError naming the layers and what to do (_memory.check)."""
    need = rows * m * ct.itemsize + be.scratch_bytes(n, ct, d)
    if need < 2 ** 28:  # nothing to check below 256 MiB
        return
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    _memory.check(need, device, f"the centered Grams of {len(names)} layer(s) ({shown}) at "
                  f"n = {n} samples ({rows} rows of {m:,} {ct} values + the {be.name} "
                  f"backend's n x n and centred-feature scratch)",
                  "Memory grows as n²: compare fewer samples at a time with "
                  "flashcka.MinibatchCKA (minibatch CKA, Nguyen et al. 2021) or compare(..., "
                  "batch_size=...), fewer layers per call, or float32 instead of float64.")


def _fused_rows(be, tensors, names, g, n, s: Settings):
    """Rows from a backend that centers, scales and builds all rows in one call
    (``centered_gram_rows``, see backends/native.py): (sq_c, sq, scale) float64 (L,)."""
    try:
        st = be.centered_gram_rows(tensors, g, kernel=s.kernel, sigma=s.sigma,
                                   threshold=s.threshold, unbiased=s.unbiased)
    except ZeroBandwidthError as e:
        raise ValueError(f"{names[e.layer]}: {e}") from None
    return st[:, 0], st[:, 1], st[:, 2]          # in x's units; RBF rows have scale 1


def _device_rows(be, tensors, names, g, n, ct, s: Settings):
    """Linear rows from the torch or Triton backend with one host read for the whole call:
    every row, ‖X_c‖², maybe-constant flag and max|x − μ| made on the device
    (``batched_rows``: same-shape layers together where the backend allows), then read at
    once; the layers they pick, those whose rows 0 and 1 are equal (constant ones among
    them), those with a NaN/Inf ‖X_c‖² and those ``gram_row`` would scale
    (``_may_need_scale``, then ``pow2_scale`` of max|x − μ|: its exact rule, with no pass
    over x and no read of its own; every large float32 layer passes the first test), are
    redone by ``gram_row``, exactly as alone -> (sq_c, sq, scale) (L,) float64. Other
    layers have scale 1 and ‖X‖² = ‖X_c‖² + n·‖μ‖². Where reads cost nothing (a CPU:
    ``batched_rows.reads_are_free``) the maximum is taken here, as ``gram_row`` takes it,
    for only the layers that pass the first test."""
    stats = _batched.linear_rows(be, tensors, g, n, ct, s.unbiased)
    sq_c, sq = stats[0], stats[0] + n * stats[2]
    scale = torch.ones(len(tensors), dtype=torch.float64, device=g.device)
    values, flags, _, amax = stats.tolist()
    lazy = _batched.reads_are_free(g.device)
    for i, (v, c, a) in enumerate(zip(values, flags, amax)):
        if lazy and _may_need_scale(v, ct, tensors[i].numel()):
            a = _max_abs_dev(*_batched.centring(be, tensors[i], ct)[:2], ct)
        if needs_redo(v, c, a, ct, tensors[i].numel()):
            sq_c[i], sq[i] = gram_row(be, tensors[i], names[i], g[i], n, ct, s,
                                      scale_out=scale[i])
    return sq_c, sq, scale


def needs_redo(sq_c: float, maybe_constant: float, amax: float, ct, nd: int) -> bool:
    """Whether a device-made linear row (``batched_rows.linear_rows``' stats: ‖X_c‖²,
    maybe-constant flag, max|x − μ|, of a layer of nd values) must be redone by
    ``gram_row``: rows 0 and 1 equal (constant ones among them), a NaN/Inf ‖X_c‖², or a
    scale other than 1 by ``gram_row``'s rule (``_may_need_scale``, then ``pow2_scale``
    of the exact maximum)."""
    return bool(maybe_constant) or not math.isfinite(sq_c) or (
        _may_need_scale(sq_c, ct, nd) and pow2_scale(amax, ct, nd) != 1.0)


def check_finite(sq_c: torch.Tensor, names, ct, tensors=None) -> None:
    """Raise naming the first layer whose ‖X_c‖² is non-finite (NaN/Inf in its input, or
    a Gram that overflows ct); with its tensor at hand, say exactly where."""
    if bool(torch.isfinite(sq_c).all()):
        return
    i = int((~torch.isfinite(sq_c)).nonzero()[0])
    if tensors is not None:
        _validate.raise_non_finite(tensors[i], names[i], ct)
    raise ValueError(f"{names[i]} holds non-finite values (NaN/Inf) or overflows {ct} in "
                     f"its Gram matrix; pass dtype=torch.float64 or check the model")


@dataclass
class Hsics:
    """HSICs of one batch (or summed over batches), each layer in its own power-of-two unit
    so that nothing leaves float64's range: the HSIC of layers i and j is
    ``cross[i, j] · 2^(ea[i] + eb[j])``, that of i with itself ``self_a[i] · 2^(2·ea[i])``
    (``self_b`` likewise), ``ea``/``eb`` (L,) float64 integers. CKA needs no unit at all:
    ``cross / (√self_a · √self_b)``, the exponents cancel (docs/design.md §5)."""
    cross: torch.Tensor    # (L_A, L_B) float64
    self_a: torch.Tensor   # (L_A,) float64
    self_b: torch.Tensor   # (L_B,) float64
    ea: torch.Tensor       # (L_A,) float64
    eb: torch.Tensor       # (L_B,) float64


def hsic_from_rows(be, ra: Rows, rb: Rows, same: bool, n: int, unbiased: bool,
                   names_a=None, names_b=None) -> Hsics:
    """Every HSIC of one batch's rows (``Hsics``, float64, never out of range).

    Row i holds the centered Gram of scale_i·X_c (``Rows.scale``, float64 powers of two):
    ``HSIC_ij = (g_i · g_j) / (norm · scale_i² · scale_j²)``, norm = n(n−3) or (n−1)²,
    kept as ``(g_i · g_j) / norm`` with exponents ``−log2(scale²)``. Cross from one product
    G_A G_Bᵀ (the backend's pair stage, ``pair_stage``), self terms its diagonal (same) or
    the row norms accumulated in float64."""
    raw, qa, qb, la, lb = pair_stage(be, ra.g, rb.g, same, names_a, names_b)
    ea = -2.0 * _log2(_row_scales(ra)) - la
    eb = ea if same else -2.0 * _log2(_row_scales(rb)) - lb
    return hsics(raw, qa, qb, ea, eb, normaliser(n, unbiased), same)


def pair_stage(be, ga, gb, same: bool, names_a=None, names_b=None):
    """(G_A G_Bᵀ, ‖g_a‖², ‖g_b‖², la, lb) float64 of rows normalised by powers of two 2^la,
    2^lb (la = lb = 0, no copy, when every product is finite and every squared row norm
    inside _NORM_SAFE; else the rows are scaled to max |g_i| in [1/2, 1) and the products
    redone). A product still not finite raises a ValueError naming the pair. The eager
    route and the compiled one (``ops.pair_stage``) both run this."""
    raw, qa, qb = _products(be, ga, gb, same)
    zero = torch.zeros(ga.shape[0], dtype=torch.float64, device=raw.device)
    la, lb = zero, (zero if same else torch.zeros(gb.shape[0], dtype=torch.float64,
                                                  device=raw.device))
    if _in_range(raw, qa, qb, ga, gb, ga.dtype, same):  # (then every product is finite)
        return raw, qa, qb, la, lb
    ga, la = _normalised(ga)
    gb, lb = (ga, la) if same else _normalised(gb)
    raw, qa, qb = _products(be, ga, gb, same)
    _check_pair(raw, names_a, names_b, ga.dtype)
    if not same:
        _check_pair(qa[:, None], names_a, names_a, ga.dtype)
        _check_pair(qb[:, None], names_b, names_b, gb.dtype)
    return raw, qa, qb, la, lb


def hsics(raw, qa, qb, ea, eb, norm: float, same: bool) -> Hsics:
    """``Hsics`` from the pair stage's products (shared by the eager and compiled routes)."""
    cross = raw / norm
    if same:
        diag = cross.diagonal().clone()
        return Hsics(cross, diag, diag, ea, eb)
    return Hsics(cross, qa / norm, qb / norm, ea, eb)


def in_units(h: Hsics, names_a, names_b) -> torch.Tensor:
    """The cross HSICs in the inputs' own units (L_A, L_B) float64. A value outside
    float64's range (overflow, or a magnitude √(HSIC_ii·HSIC_jj) below its smallest normal
    number, where the value would lose its digits) raises a ValueError naming the pair:
    CKA of the same inputs is still defined."""
    e = h.ea[:, None] + h.eb[None, :]
    out = ldexp(h.cross, e)
    mag = ldexp(torch.sqrt(h.self_a.abs())[:, None] * torch.sqrt(h.self_b.abs())[None, :], e)
    tiny = torch.finfo(torch.float64).tiny
    bad = ~torch.isfinite(out) | ((mag < tiny) & (h.cross != 0))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        lg = math.log10(abs(float(h.cross[i, j]))) + float(e[i, j]) * math.log10(2.0)
        raise ValueError(f"the HSIC of {names_a[i]} and {names_b[j]} is about 1e{lg:.0f} in "
                         f"the inputs' units, outside float64's range; rescale the inputs "
                         f"(CKA, which is scale invariant, is defined)")
    return out


def ldexp(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """x · 2^e (float64) exactly, for exponents beyond ±1022 too (in steps: 2^e itself
    may not exist in float64)."""
    e = e.to(torch.float64)
    while True:
        step = e.clamp(-1000.0, 1000.0)
        x = x * torch.exp2(step)
        e = e - step
        if not bool((e != 0).any()):
            return x


def _log2(scale: torch.Tensor) -> torch.Tensor:
    """log2 of float64 powers of two, exactly."""
    return (torch.frexp(scale)[1] - 1).to(torch.float64)


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


def _in_range(raw, qa, qb, ga, gb, dtype, same: bool = False) -> bool:
    """All products finite and every squared row norm q inside _NORM_SAFE, or 0 for a row
    that is exactly zero (a constant layer; a q that underflowed is not). The usual case
    (all inside) is settled with one synchronisation."""
    lo, hi = _NORM_SAFE.get(dtype, _NORM_SAFE[torch.float32])
    ok = torch.isfinite(raw).all() & ((qa >= lo) & (qa <= hi)).all()
    if not same:
        ok &= ((qb >= lo) & (qb <= hi)).all()
    if bool(ok):
        return True
    if not bool(torch.isfinite(raw).all()):
        return False
    for q, g in ((qa, ga), (qb, gb)):
        ok = (q >= lo) & (q <= hi)
        if not bool(ok.all()):
            zero = (q == 0) & ~ok
            if not bool((ok | zero).all()) or bool(g[zero.to(g.device)].any()):
                return False
    return True


def _normalised(g: torch.Tensor):
    """(g·t (a copy), log2 t (L,) float64): t_i a power of two with max |g_i·t_i| in
    [1/2, 1) (1 for zero or non-finite rows)."""
    lo, hi = torch.aminmax(g.detach(), dim=1)
    amax = torch.maximum(-lo, hi).to(torch.float64)
    lim = 125 if g.dtype == torch.float32 else 1021
    e = torch.frexp(amax)[1].clamp(-lim, lim).to(torch.float64)
    ok = torch.isfinite(amax) & (amax > 0)
    le = torch.where(ok, -e, torch.zeros_like(e))
    return g * torch.exp2(le).to(g.dtype)[:, None], le


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
    The row is the Gram of ``scale · X_c`` (``pow2_scale``) and scale is written into
    ``scale_out`` (a one-element float64 tensor, e.g. ``Rows.scale[i]``). The native
    backend computes μ, the scale and the row in one call (``centered_gram_rows``, scaling
    as it loads x); the others build the row, then read ‖X_c‖² and whether rows 0 and 1
    are equal in one host read (plus the RBF median's), and only then, rarely, zero the
    row of a constant layer or redo it from ``scale · x`` (a copy). RBF rows are kernel
    values (σ scaled with x), so their scale is 1."""
    if hasattr(be, "centered_gram_rows"):       # native: one call, scalars from it
        try:
            st = be.centered_gram_rows([x], out, kernel=s.kernel, sigma=s.sigma,
                                       threshold=s.threshold, unbiased=s.unbiased)
        except ZeroBandwidthError as e:
            raise ValueError(f"{name}: {e}") from None
        sq_c, sq, scale, _ = st.tolist()[0]     # (indexing a tensor costs µs a time)
        scale_out.fill_(scale)
        return sq_c, sq
    x, mu, mu64 = _batched.centring(be, x, ct)
    if x.device.type == "cpu" and not bool(torch.isfinite(mu).all()):
        mu = be.column_mean(x, torch.float64).to(ct)  # a float32 sum near its max overflows
        mu64 = mu.to(torch.float64)
    mu_sq = mu64.square().sum()
    try:
        sq_c = be.centered_gram_row(x, mu, out, kernel=s.kernel, sigma=s.sigma,
                                    threshold=s.threshold, unbiased=s.unbiased)
        # one host read for both rare cases: rows 0 and 1 equal (constant?), and a scale
        flagged, v = torch.stack([_batched.maybe_constant(x[None])[0].double(),
                                  sq_c.detach().double()]).tolist()
        if flagged and _constant_rows(x):  # X_c = 0 exactly, whatever the rounding of μ;
            out.zero_()        # its centered kernel (0, or 11ᵀ for RBF) centres to 0
            scale_out.fill_(1.0)
            zero = torch.zeros((), dtype=torch.float64, device=x.device)
            return zero, zero + n * mu_sq
        scale = 1.0
        if _may_need_scale(v, ct, x.numel()):  # rare: the exact rule, and redo
            scale = pow2_scale(_max_abs_dev(x, mu, ct), ct, x.numel())
        if scale != 1.0:  # (a float64 x stays float64: the backend centres it before rounding)
            xs, mus = (x if x.dtype == torch.float64 else x.to(ct)) * scale, mu * scale
            sigma = None if s.sigma is None else s.sigma * scale
            sq_c = be.centered_gram_row(xs, mus, out, kernel=s.kernel, sigma=sigma,
                                        threshold=s.threshold, unbiased=s.unbiased)
    except ZeroBandwidthError as e:
        raise ValueError(f"{name}: {e}") from None
    sq_s = sq_c.to(torch.float64)               # ‖X_c‖² and ‖X‖² of scale·x, in x's units:
    scale_out.fill_(scale if s.kernel == "linear" else 1.0)
    if scale == 1.0:
        return sq_s, sq_s + n * mu_sq
    return (_sq_in_units(sq_s, scale),
            _sq_in_units(sq_s + n * (mu64 * scale).square().sum(), scale))


def _may_need_scale(sq_c: float, ct, nd: int) -> bool:
    """Whether ``pow2_scale`` could give a scale other than 1 for a layer whose ‖X_c‖²
    (computed in ct) is ``sq_c``: max|x − μ|² ≤ ‖X_c‖² ≤ n·d·max|x − μ|², so a maximum
    outside [lo, hi] shows as ‖X_c‖² outside [lo², n·d·hi²]; a factor 2 covers the
    rounding of ‖X_c‖². Inside, no pass over x for the maximum is needed."""
    lo, hi, pair = _SAFE_RANGE.get(ct, _SAFE_RANGE_F32)
    hi = min(hi, math.sqrt(pair / max(nd, 1)))
    return not (2 * nd * lo * lo < sq_c < hi * hi / 2)


def _constant_rows(x) -> bool:
    """Every row of x equal to the first (and finite): zero variance, exactly. Rows 0 and
    1 decide at once for real data."""
    x = x.detach()
    return (bool(torch.equal(x[0], x[1])) and bool(torch.equal(x, x[:1].expand_as(x)))
            and bool(torch.isfinite(x[0]).all()))


def _max_abs_dev(x, mu, ct) -> float:
    """max |x − μ| over all elements (``batched_rows.max_abs_dev`` of the one layer)."""
    return float(_batched.max_abs_dev(x.reshape(1, x.shape[0], -1), mu.reshape(1, 1, -1),
                                      ct)[0])


def zero_variance(sq_c: torch.Tensor, sq: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """Layers whose rows are all equal: ``gram_rows``/``gram_row`` give them ‖X_c‖² = 0
    exactly (every backend), and sums over batches keep it 0 only if every batch was
    constant. Exact, not a threshold relative to ‖X‖² (a float32 offset of 1e8 with a
    spread of 100 is valid data: x − μ is exact there). ``sq``/``ct`` are kept for the
    callers' signature."""
    return ~(sq_c > 0)


def cka_from_hsic(cross, self_a, self_b, undefined_a, undefined_b, names_a, names_b):
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) -> (L_A, L_B) float64, from HSICs
    in any per-layer power-of-two units (``Hsics``: the units cancel); NaN (with one
    warning per layer naming it) where a self term is zero, negative or from a
    zero-variance representation. Never clamped: debiased CKA can be slightly outside
    [0, 1]. ``names_b is names_a`` (one set of layers against itself) warns once a layer."""
    bad_a = undefined_a | ~(self_a > 0)
    bad_b = undefined_b | ~(self_b > 0)
    if not bool(bad_a.any() | bad_b.any()):  # the usual case: every entry defined
        return _ratio(cross, self_a, self_b)
    sides = [(bad_a, names_a)]
    if not (names_b is names_a and torch.equal(bad_a, bad_b)):
        sides.append((bad_b, names_b))
    for flags, names in sides:
        for i in flags.nonzero().flatten().tolist():
            warnings.warn(f"CKA is undefined for {names[i]}: its representation has zero "
                          f"variance (or a non-positive unbiased self-HSIC); its entries are NaN",
                          _validate.FlashCKAWarning, stacklevel=4)
    return cka_ratio(cross, self_a, self_b, bad_a, bad_b)


def cka_ratio(cross, self_a, self_b, bad_a, bad_b) -> torch.Tensor:
    """``cross / (√self_a · √self_b)``, NaN where ``bad_a``/``bad_b``: the arithmetic of
    ``cka_from_hsic``, shared with the compiled route (no warnings, no branches). Each self
    term has its own sqrt, so no product of self terms is formed."""
    keep = ~(bad_a[:, None] | bad_b[None, :])
    return torch.where(keep, _ratio(cross, self_a.clamp(min=0), self_b.clamp(min=0)),
                       torch.full_like(cross, float("nan")))


def _ratio(cross, self_a, self_b) -> torch.Tensor:
    """cross_ij / (√self_a_i · √self_b_j) for non-negative self terms."""
    return cross / (torch.sqrt(self_a)[:, None] * torch.sqrt(self_b)[None, :])
