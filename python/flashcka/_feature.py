"""Feature-space route for the linear kernel (small widths): every HSIC from X_cᵀY_c.

With K = X_c X_cᵀ and L = Y_c Y_cᵀ (X_c = X − 1μᵀ for *any* μ), the quantities HSIC needs
come from the features (Kornblith et al. 2019, appendix; Song et al. 2012, eq. 5):

    tr(KL) = ‖X_cᵀY_c‖²_F,   K1 = X_c s_x (s_x = X_cᵀ1),   diag K = row norms² of X_c.

Biased:   (n−1)² HSIC₀ = tr(KL) − (2/n)·(K1)ᵀ(L1) + (1ᵀK1)(1ᵀL1)/n².
Unbiased: n(n−3) HSIC₁ = tr(KL) − ⟨diag K, diag L⟩ + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2))
                          − 2/(n−2)·(K̃1)ᵀ(L̃1),   K̃1 = K1 − diag K,  1ᵀK̃1 = ‖s_x‖² − tr K.
Both are the full formulas, not their s_x = 0 special case, so the result does not depend
on the rounding residue of the column mean (a 1e8 offset in float64 loses nothing).

Scale: each representation is multiplied by a power of two (exact) before and after
centering so that max |X_c| lies in [1/2, 1); HSICs are divided by scale² per side in
float64. Float32 products then neither overflow nor underflow at any input scale.
Centering is finished in float64, so a large offset costs no precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _validate


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
    ``scale[i] · (X_i − 1μ_iᵀ)``; ``sq_c``/``sq`` (L,) float64 are ‖X_c‖²_F and ‖X‖²_F in
    the input's own units; ``constant`` (L,) bool marks representations whose rows are
    all equal (zero variance: CKA undefined), found exactly, not by a threshold."""
    x: list
    scale: torch.Tensor
    sq_c: torch.Tensor
    sq: torch.Tensor
    constant: torch.Tensor


def _pow2_scale(amax: float, ct: torch.dtype) -> float:
    """2^-e with amax = m·2^e, m in [1/2, 1) (1 for amax = 0), kept inside ct's range."""
    if amax == 0.0:
        return 1.0
    e = math.frexp(amax)[1]
    lim = 125 if ct == torch.float32 else 1021   # 2^±lim is a normal number of ct
    return math.ldexp(1.0, max(-lim, min(lim, -e)))


def centered(tensors, names, ct) -> Features:
    """Flatten each representation (n, ...) to (n, d) in float64, scale it by a power of
    two s₁ (max |x·s₁| in [1/2, 1): the mean cannot overflow), center it twice (the
    second pass removes the rounding residue of the first mean, so an offset costs no
    precision), scale by s₂ (max |X_c·s₂| in [1/2, 1)) and round to ct."""
    xs, scales, sq_c, sq, const = [], [], [], [], []
    for x, name in zip(tensors, names):
        n = x.shape[0]
        x64 = x.reshape(n, -1).to(torch.float64)
        xd = x64.detach()
        amax = float(xd.abs().amax())
        if not math.isfinite(amax):
            _validate.raise_non_finite(x, name, ct)
        constant = bool((xd == xd[:1]).all())
        s1 = _pow2_scale(amax, ct)
        x64 = x64 * s1
        mu = x64.mean(0)
        xc = x64 - mu
        xc = xc - xc.mean(0)
        if constant:
            xc = xc * 0.0
        s2 = _pow2_scale(float(xc.detach().abs().amax()), torch.float64)
        xc = xc * s2
        c = xc.detach().square().sum()
        s = s1 * s2
        xs.append(xc.to(ct))
        scales.append(s)
        const.append(constant)
        sq_c.append(c / (s * s))
        sq.append(c / (s * s) + n * (mu.detach() / s1).square().sum())
    dev = tensors[0].device
    return Features(xs, torch.tensor(scales, dtype=torch.float64, device=dev),
                    torch.stack(sq_c), torch.stack(sq),
                    torch.tensor(const, dtype=torch.bool, device=dev))


def _side(fs: Features):
    """Per representation: K1 = X_c(X_cᵀ1) and diag K (each (L, n) float64), ‖s‖² (L,)."""
    k1, dk, ss = [], [], []
    for x in fs.x:
        x64 = x.to(torch.float64)
        s = x64.sum(0)
        k1.append(x64 @ s)
        dk.append(x64.square().sum(1))
        ss.append(s.square().sum())
    return torch.stack(k1), torch.stack(dk), torch.stack(ss)


def hsic(fa: Features, fb: Features, n: int, unbiased: bool) -> torch.Tensor:
    """Unnormalised HSIC of every pair (L_A, L_B) float64 in the inputs' units:
    n(n−3)·HSIC₁ (unbiased) or (n−1)²·HSIC₀ (biased), from the formulas in the module
    docstring; ‖X_cᵀY_c‖²_F of all pairs from one product of the concatenated features."""
    A, B = torch.cat(fa.x, 1), torch.cat(fb.x, 1)
    m2 = (A.T @ B).to(torch.float64).square()
    seg_a = _segments([x.shape[1] for x in fa.x], A.device)
    seg_b = _segments([x.shape[1] for x in fb.x], A.device)
    rows = torch.zeros(len(fa.x), m2.shape[1], dtype=torch.float64, device=A.device)
    rows = rows.index_add(0, seg_a, m2)
    out = torch.zeros(len(fa.x), len(fb.x), dtype=torch.float64, device=A.device)
    out = out.index_add(1, seg_b, rows)
    k1a, dka, ssa = _side(fa)
    k1b, dkb, ssb = (k1a, dka, ssa) if fb is fa else _side(fb)
    if unbiased:
        ta, tb = k1a - dka, k1b - dkb                      # K̃1, L̃1
        out = out - dka @ dkb.T - 2.0 / (n - 2) * (ta @ tb.T) \
            + ta.sum(1)[:, None] * tb.sum(1)[None, :] / ((n - 1) * (n - 2))
    else:
        out = out - 2.0 / n * (k1a @ k1b.T) + ssa[:, None] * ssb[None, :] / (n * n)
    sa2, sb2 = fa.scale.square(), fb.scale.square()
    return out / (sa2[:, None] * sb2[None, :])


def self_hsic(fs: Features, n: int, unbiased: bool) -> torch.Tensor:
    """Unnormalised HSIC(K_i, K_i) (L,) float64, one representation at a time."""
    out = []
    for x, s, c, q in zip(fs.x, fs.scale, fs.sq_c, fs.sq):
        one = Features([x], s[None], c[None], q[None], None)
        out.append(hsic(one, one, n, unbiased)[0, 0])
    return torch.stack(out)


def _segments(dims, device):
    return torch.repeat_interleave(torch.arange(len(dims), device=device),
                                   torch.tensor(dims, device=device))
