"""Bootstrap intervals over samples for full-batch CKA, from the Grams already built
(docs/design.md §5).

A resample draws n sample indices s with replacement; its Gram is the stored centered
Gram with rows and columns resampled, ``C[s][:, s]``, centered again. That is exact for
pairs of distinct samples: both centerings differ from the kernel K only by symmetric
row/column terms ``u_i + u_j`` (plus a constant), which ``HKH`` and U-centering remove.
Duplicated samples (s_i = s_j for i ≠ j, about one pair in n) are where the estimators
part:
- biased (HSIC₀): the stored ``HKH`` keeps its diagonal, so a duplicated pair gets
  ``K(x, x)`` up to those terms: the replicate is exactly the biased CKA of the resampled
  data;
- unbiased (HSIC₁): U-centering zeroes the diagonal, so the self-similarity of a sample is
  not stored. The unbiased estimator exists to leave self-similarities out, and a
  duplicated pair is one sample paired with itself: its entry is set to 0, like the
  diagonal, before centering again. The replicate is then the debiased CKA of the
  resampled data with the duplicated pairs' centered entries zeroed (not a plain function
  of the resampled data; its difference from one is O(1/n)).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from . import engine as _engine, memory as _memory
from .calibrate import gram_inputs, permutation_seed
from .engine import Settings
from .minibatch import MinibatchCKA

METHODS = ("percentile", "bca")
_STREAM = 1 << 40            # the resamples' seeds: permutation_seed(seed, _STREAM, r)


@torch.no_grad()
def bootstrap_interval(xs, ys=None, *, num_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95, method: str = "bca", kernel: str = "linear",
                       unbiased: bool = True, sigma: float | None = None,
                       threshold: float = 1.0, dtype: torch.dtype | None = None,
                       backend: str = "auto",
                       progress: bool | None = None) -> "BootstrapResult":
    """Bootstrap confidence intervals over samples for the CKA of every layer pair:
    ``xs`` (L_A representations (n, ...)), ``ys`` (L_B, or None) -> ``BootstrapResult``
    with (L_A, L_B) float64 ``observed``, ``low``, ``high``.

    Resample r draws n indices with replacement (``torch.randint`` from a generator seeded
    by (seed, r)); its CKA comes from the stored Grams (module docstring: what duplicated
    samples do to each estimator). ``method``: ``"percentile"`` (the α/2 and 1 − α/2
    quantiles of the replicates, α = 1 − level, numpy's linear interpolation) or ``"bca"``
    (Efron 1987: bias correction z₀ = Φ⁻¹(#{θ* < θ̂}/R), the proportion kept within
    [1/(2R), 1 − 1/(2R)]; acceleration a = Σ(θ̄ − θ₍ᵢ₎)³ / (6 (Σ(θ̄ − θ₍ᵢ₎)²)^{3/2}) from
    the n leave-one-out CKAs θ₍ᵢ₎, also from the stored Grams; quantiles at
    Φ(z₀ + (z₀ + z_q)/(1 − a(z₀ + z_q))) for q = α/2, 1 − α/2). BCa needs n ≥ 5
    unbiased. Cost: each resample (and each of BCa's n leave-one-out CKAs) re-centers the
    (L_A + L_B) stored Grams, O((L_A + L_B)·n²), plus a product; memory: float64 copies of
    the Grams, (L_A + L_B)·n² values. The kernel's σ (median heuristic) is the full
    sample's, not re-estimated per resample.
    """
    level = check_args(num_resamples, seed, level, method)
    s = Settings(kernel, unbiased, sigma, threshold)
    xa, na, xb, nb, n, ct, be = gram_inputs(xs, ys, s, backend, dtype)
    same = ys is None
    if method == "bca" and s.unbiased and n < 5:
        raise ValueError(f"method='bca' needs n >= 5 samples with unbiased=True (its "
                         f"leave-one-out CKAs use n - 1 >= 4), got n = {n}")
    ra = MinibatchCKA._check_constant_rows(_engine.gram_rows(be, xa, na, n, ct, s), xa, na, ct)
    rb = ra if same else MinibatchCKA._check_constant_rows(
        _engine.gram_rows(be, xb, nb, n, ct, s), xb, nb, ct)
    return bootstrap_rows(be, ra, rb, n, s.unbiased, same, na, nb, num_resamples, seed, level,
                          method, progress)


def bootstrap_rows(be, ra: _engine.Rows, rb: _engine.Rows, n: int, unbiased: bool, same: bool,
                   names_a, names_b, num_resamples: int, seed: int, level: float, method: str,
                   progress: bool | None = None) -> "BootstrapResult":
    """``bootstrap_interval`` on one batch's stored rows (arguments checked by the caller;
    ``compare(..., bootstrap=R)`` comes here with the rows of its one batch)."""
    h = _engine.hsic_from_rows(be, ra, rb, same, n, unbiased, names_a, names_b)
    bad_a = _engine.zero_variance(ra.sq_c, ra.sq, None)
    bad_b = bad_a if same else _engine.zero_variance(rb.sq_c, rb.sq, None)
    observed = _engine.cka_from_hsic(h.cross, h.self_a, h.self_b, bad_a, bad_b, names_a,
                                     names_b).cpu()
    layers = ra.g.shape[0] + (0 if same else rb.g.shape[0])
    need = 3 * layers * n * n * 8            # the copies, and a resample's two temporaries
    if need >= 2 ** 28:
        _memory.check(need, ra.g.device, f"the bootstrap's float64 copies of {layers} "
                      f"centered Grams at n = {n}", "Bootstrap fewer layers a call, or fewer "
                      "samples.")
    ca = full_matrices(ra.g, n, unbiased)
    cb = ca if same else full_matrices(rb.g, n, unbiased)
    from tqdm.auto import tqdm
    show = progress if progress is not None else sys.stderr is not None and sys.stderr.isatty()
    g = torch.Generator()
    reps = torch.empty(num_resamples, *observed.shape, dtype=torch.float64)
    for r in tqdm(range(num_resamples), disable=not show, leave=False, desc="bootstrap"):
        g.manual_seed(permutation_seed(seed, _STREAM, r))
        idx = torch.randint(n, (n,), generator=g).to(ca.device)
        reps[r] = _cka(ca, cb, idx, unbiased, same).cpu()
    reps = torch.where((bad_a[:, None] | bad_b[None, :]).cpu(), float("nan"), reps)
    alpha = 1.0 - level
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    if method == "percentile":
        lo, hi = (_quantile(reps, torch.full_like(observed, float(v))) for v in q)
    else:
        loo = torch.stack([_cka(ca, cb, torch.cat([torch.arange(i, device=ca.device),
                                                   torch.arange(i + 1, n, device=ca.device)]),
                                unbiased, same).cpu() for i in range(n)])
        lo, hi = (_quantile(reps, v) for v in _bca_levels(reps, observed, loo, q))
    return BootstrapResult(observed, lo, hi, level, method, reps, num_resamples, seed)


def check_args(num_resamples, seed, level, method, arg: str = "num_resamples") -> float:
    """Raise naming the argument; returns ``level`` as a float."""
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) \
            or num_resamples < 2:
        raise ValueError(f"{arg} must be an int >= 2, got {num_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return level


@dataclass
class BootstrapResult:
    """Bootstrap intervals of every pair (``bootstrap_interval``): ``observed``, ``low``,
    ``high`` (L_A, L_B) float64 (NaN where CKA is undefined), the interval's ``level`` and
    ``method``, and the ``replicates`` (R, L_A, L_B)."""
    observed: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    level: float
    method: str
    replicates: torch.Tensor
    num_resamples: int
    seed: int


def full_matrices(g: torch.Tensor, n: int, unbiased: bool) -> torch.Tensor:
    """(L, n, n) float64 centered Grams of rows ``g`` (packed or full), each divided by
    its largest |value| (CKA is invariant to a scale per layer)."""
    L, m = g.shape
    tri = n * (n - 1) // 2
    if m == n * n:
        c = g.to(torch.float64).view(L, n, n).clone()
    else:
        c = torch.zeros(L, n, n, dtype=torch.float64, device=g.device)
        i, j = torch.triu_indices(n, n, 1, device=g.device)
        t = g[:, :tri].to(torch.float64) / math.sqrt(2.0)
        c[:, i, j] = t
        c[:, j, i] = t
        if not unbiased:
            d = torch.arange(n, device=g.device)
            c[:, d, d] = g[:, tri:].to(torch.float64)
    top = c.abs().amax(dim=(1, 2)).clamp(min=torch.finfo(torch.float64).tiny)
    return c / top[:, None, None]


def _recentered(c: torch.Tensor, idx: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """The centered Grams (L, k, k) of the samples ``idx`` (k of them, repeats allowed):
    ``c[idx][:, idx]``, duplicated pairs zeroed (unbiased), centered again."""
    k = idx.numel()
    r = c[:, idx][:, :, idx]
    if unbiased:
        r = r.masked_fill(idx[:, None] == idx[None, :], 0.0)
        rs = r.sum(2)
        tot = rs.sum(1)
        mi = rs / (k - 2) - (tot / (2 * (k - 1) * (k - 2)))[:, None]
        u = r - mi[:, :, None] - mi[:, None, :]
        return u.masked_fill(torch.eye(k, dtype=torch.bool, device=c.device), 0.0)
    rm = r.mean(2)
    return r - rm[:, :, None] - rm[:, None, :] + rm.mean(1)[:, None, None]


def _cka(ca, cb, idx, unbiased, same) -> torch.Tensor:
    """CKA (L_A, L_B) of the resample ``idx`` (the normaliser cancels); NaN where a self
    term is not positive."""
    ua = _recentered(ca, idx, unbiased).flatten(1)
    ub = ua if same else _recentered(cb, idx, unbiased).flatten(1)
    cross = ua @ ub.T
    qa = (ua * ua).sum(1)
    qb = qa if same else (ub * ub).sum(1)
    return _engine.cka_ratio(cross, qa, qb, ~(qa > 0), ~(qb > 0))


def _bca_levels(reps, observed, loo, q):
    """The two BCa quantile levels, (L_A, L_B) each (Efron 1987; ``bootstrap_interval``)."""
    R = reps.shape[0]
    below = (reps < observed[None]).sum(0).to(torch.float64) / R
    z0 = torch.special.ndtri(below.clamp(0.5 / R, 1 - 0.5 / R))
    d = loo.mean(0)[None] - loo
    num = (d ** 3).sum(0)
    den = 6.0 * (d ** 2).sum(0) ** 1.5
    a = torch.where(den > 0, num / den, torch.zeros_like(num))
    out = []
    for v in q:
        zq = float(torch.special.ndtri(v))
        out.append(torch.special.ndtr(z0 + (z0 + zq) / (1 - a * (z0 + zq))))
    return out


def _quantile(reps: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Per-entry quantile of reps (R, ...) at levels (...) in [0, 1], numpy's linear
    interpolation; NaN where any replicate is NaN."""
    R = reps.shape[0]
    srt = reps.sort(0).values
    pos = levels.clamp(0, 1) * (R - 1)
    lo = pos.floor().long().clamp(0, R - 1)
    hi = (lo + 1).clamp(max=R - 1)
    w = pos - lo
    v = srt.gather(0, lo[None]).squeeze(0) * (1 - w) + srt.gather(0, hi[None]).squeeze(0) * w
    return torch.where(torch.isnan(reps).any(0), float("nan"), v)
