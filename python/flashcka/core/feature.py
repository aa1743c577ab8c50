"""Feature-space route for the linear kernel (small widths): every HSIC from X_cᵀY_c.

With K = X_c X_cᵀ and L = Y_c Y_cᵀ (X_c = X − 1μᵀ for *any* μ), the quantities HSIC needs
come from the features (Kornblith et al. 2019, appendix; Song et al. 2012, eq. 5):

    tr(KL) = ‖X_cᵀY_c‖²_F,   K1 = X_c s_x (s_x = X_cᵀ1),   diag K = row norms² of X_c.

Biased:   (n−1)² HSIC₀ = tr(KL) − (2/n)·(K1)ᵀ(L1) + (1ᵀK1)(1ᵀL1)/n².
Unbiased: n(n−3) HSIC₁ = tr(KL) − ⟨diag K, diag L⟩ + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2))
                          − 2/(n−2)·(K̃1)ᵀ(L̃1),   K̃1 = K1 − diag K,  1ᵀK̃1 = ‖s_x‖² − tr K.
Both are the full formulas, not their s_x = 0 special case, so the result does not depend
on the rounding residue of the column mean (a 1e8 offset in float64 loses nothing).

Scale: a representation whose magnitude is outside a safe range is multiplied by a power
of two (exact) before and after centering. Float32 products then neither overflow nor
underflow at any input scale; the scales stay apart from the HSICs as exponents
(``exponents``), which cancel in CKA.
Centering is done in float64, twice, so a large offset costs no precision; K1, diag K and
‖X_cᵀ1‖² come from those float64 features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import validate as _validate


def cheaper(dims_a, dims_b, n, same: bool) -> bool:
    """Gram route ≈ n²·Σd (SYRK) + 2·L_A·L_B·n²; feature route ≈ 2n·ΣdA·ΣdB (+ self
    blocks). Also bounds the ΣdA × ΣdB product matrix the feature route materialises."""
    da, db = sum(dims_a), sum(dims_b)
    gram = n * n * (da + (0 if same else db)) + 2 * len(dims_a) * len(dims_b) * n * n
    feature = 2 * n * da * db + (0 if same else 2 * n * (sum(d * d for d in dims_a)
                                                         + sum(d * d for d in dims_b)))
    return feature < gram and da * db <= (1 << 26)


@dataclass
class Features:
    """L representations, centered and scaled: ``x[i]`` (n, d_i) in ct is
    ``2^log2_scale[i] · (X_i − 1μ_iᵀ)``; ``k1``/``dk`` (L, n) and ``ss`` (L,) float64 are K1,
    diag K and ‖X_cᵀ1‖² of those scaled features; ``constant`` (L,) bool marks
    representations whose rows are all equal (zero variance), found exactly."""
    x: list
    log2_scale: torch.Tensor
    k1: torch.Tensor
    dk: torch.Tensor
    ss: torch.Tensor
    constant: torch.Tensor

    def one(self, i: int) -> "Features":
        """Representation i alone."""
        sl = slice(i, i + 1)
        return Features(self.x[sl], self.log2_scale[sl], self.k1[sl], self.dk[sl], self.ss[sl],
                        self.constant[sl])


# Magnitudes (max |x| before centering, max row norm after) inside this range are used
# as they are; outside it a power-of-two scale brings them to [1/2, 1). For float32
# products of n-long columns neither overflow nor lose bits to underflow.
_SAFE = {torch.float32: (2.0 ** -16, 2.0 ** 16), torch.float64: (2.0 ** -200, 2.0 ** 200)}


def _pow2_scale(amax: float, ct: torch.dtype) -> float:
    """1.0 if amax is 0 or inside _SAFE[ct], else 2^-e with amax = m·2^e, m in [1/2, 1)
    (at most 2^1000: a subnormal amax is brought into _SAFE, not to 1/2)."""
    lo, hi = _SAFE[ct]
    if amax == 0.0 or lo <= amax <= hi:
        return 1.0
    return math.ldexp(1.0, min(-math.frexp(amax)[1], 1000))


def centered(tensors, names, ct) -> Features:
    """Each representation (n, ...) flattened to (n, d) in float64, scaled by a power of
    two s₁ if its magnitude is outside _SAFE (the mean cannot overflow), centered twice
    (the second pass removes the rounding residue of the first mean, so an offset costs
    no precision), scaled by s₂ if its largest row norm is outside _SAFE, rounded to ct."""
    cols = {k: [] for k in ("x", "log2_scale", "k1", "dk", "ss", "constant")}
    for x, name in zip(tensors, names):
        n = x.shape[0]
        x64 = x.reshape(n, -1).to(torch.float64)
        xd = x64.detach()
        lo, hi = torch.aminmax(xd)
        amax = float(torch.maximum(-lo, hi))
        if not math.isfinite(amax):
            _validate.raise_non_finite(x, name, ct)
        constant = bool((xd == xd[:1]).all())
        s1 = _pow2_scale(amax, ct)
        if s1 != 1.0:
            x64 = x64 * s1
        mu = x64.mean(0)
        xc = x64 - mu
        xc = xc - xc.mean(0)
        if constant:
            xc = torch.zeros_like(xc)
        dk = xc.square().sum(1)
        s2 = _pow2_scale(math.sqrt(float(dk.detach().max())), ct)
        col = xc.sum(0)
        k1 = xc @ col
        if s2 != 1.0:
            xc, dk, k1, col = xc * s2, dk * s2 ** 2, k1 * s2 ** 2, col * s2
        log2_s = (math.frexp(s1)[1] - 1) + (math.frexp(s2)[1] - 1)   # s1·s2 may overflow
        cols["x"].append(xc.to(ct))
        cols["log2_scale"].append(torch.tensor(float(log2_s), dtype=torch.float64,
                                               device=x.device))
        cols["k1"].append(k1)
        cols["dk"].append(dk)
        cols["ss"].append(col.square().sum())
        cols["constant"].append(torch.tensor(constant, device=x.device))
    return Features(cols["x"], *(torch.stack(cols[k]) for k in
                                 ("log2_scale", "k1", "dk", "ss", "constant")))


def hsic(fa: Features, fb: Features, n: int, unbiased: bool) -> torch.Tensor:
    """Unnormalised HSIC of every pair (L_A, L_B) float64 of the scaled features (times
    2^(e_a + e_b), ``exponents``, in the inputs' units): n(n−3)·HSIC₁ (unbiased) or
    (n−1)²·HSIC₀ (biased), from the formulas in the module
    docstring; ‖X_cᵀY_c‖²_F of all pairs from one product of the concatenated features."""
    A = fa.x[0] if len(fa.x) == 1 else torch.cat(fa.x, 1)
    B = fb.x[0] if len(fb.x) == 1 else torch.cat(fb.x, 1)
    m2 = (A.T @ B).to(torch.float64).square()
    rows = torch.stack([blk.sum(0) for blk in m2.split([x.shape[1] for x in fa.x], 0)])
    out = torch.stack([blk.sum(1) for blk in rows.split([x.shape[1] for x in fb.x], 1)], 1)
    k1a, dka, ssa = fa.k1, fa.dk, fa.ss
    k1b, dkb, ssb = fb.k1, fb.dk, fb.ss
    if unbiased:
        ta, tb = k1a - dka, k1b - dkb                      # K̃1, L̃1
        out = out - dka @ dkb.T - 2.0 / (n - 2) * (ta @ tb.T) \
            + ta.sum(1)[:, None] * tb.sum(1)[None, :] / ((n - 1) * (n - 2))
    else:
        out = out - 2.0 / n * (k1a @ k1b.T) + ssa[:, None] * ssb[None, :] / (n * n)
    return out


def exponents(fs: Features) -> torch.Tensor:
    """(L,) float64 e with HSIC in the inputs' units = ``hsic(...)`` · 2^(e_a + e_b):
    e = −2·log2_scale, kept apart because scale² itself can leave float64's range."""
    return -2.0 * fs.log2_scale


def self_hsic(fs: Features, n: int, unbiased: bool) -> torch.Tensor:
    """Unnormalised HSIC(K_i, K_i) (L,) float64, one representation at a time."""
    return torch.stack([hsic(fs.one(i), fs.one(i), n, unbiased)[0, 0]
                        for i in range(len(fs.x))])
