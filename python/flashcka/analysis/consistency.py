"""Cross-dataset consistency of model similarities (Ciernik et al. ICML 2025, "Objective
drives the consistency of representational similarity across datasets")."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ._common import as_matrix, positive_int

METHODS = ("pearson", "spearman")


def cross_dataset_consistency(matrices, method: str = "pearson", *, n_boot: int = 1000,
                              ci: float = 0.95, seed: int = 0) -> dict:
    """How consistently several datasets rank model pairs by similarity.

    ``matrices``: one (M, M) model × model similarity matrix per dataset (any measure:
    ``cka_matrix`` of the models' representations, ``CKAResult``s, arrays), as a
    ``{dataset: matrix}`` dict or a sequence (names "0", "1", …). Only the strict upper
    triangles ``s_d = (S_d[p, q])_{p<q}`` enter (C(M, 2) model pairs); no NaN allowed there.

    ``correlation[d, e] = ρ(s_d, s_e)``: Pearson's r, or Spearman's ρ (Pearson's r of the
    average ranks, ties sharing their mean rank), for every pair of datasets -> (D, D).

    Uncertainty: a bootstrap over models. Draw ``idx = torch.randint(M, (n_boot, M),
    generator=torch.Generator().manual_seed(seed))``; for draw b take every position
    pair p < q with ``idx[b, p] ≠ idx[b, q]`` (a model paired with its own copy is
    dropped; pairs of distinct models drawn several times count that often), recompute
    ρ on those values (Spearman re-ranks them). ``std`` is the standard deviation of the
    draws (ddof = 1), ``ci_low``/``ci_high`` their (1 − ci)/2 and (1 + ci)/2 quantiles
    (linear interpolation, ``torch.nanquantile``); draws where ρ is undefined (fewer than
    two pairs, or constant values) are left out and counted in ``undefined_draws``.

    Returns a dict: ``datasets`` (names), ``correlation``, ``std``, ``ci_low``,
    ``ci_high`` ((D, D) float64), ``undefined_draws`` ((D, D) int64), ``method``,
    ``n_boot``, ``ci``, ``seed``, ``num_models``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n_boot = positive_int(n_boot, "n_boot", minimum=0)
    if not (isinstance(ci, float) or isinstance(ci, int)) or not 0 < ci < 1:
        raise ValueError(f"ci must be a number in (0, 1), got {ci!r}")
    seed = positive_int(seed, "seed", minimum=0)
    names, mats = _matrices(matrices)
    M = mats[0].shape[0]
    iu = torch.triu_indices(M, M, 1)
    s = torch.stack([m[iu[0], iu[1]] for m in mats])            # (D, P)
    corr = _corr(s, method)
    D = len(names)
    out = {"datasets": names, "correlation": corr, "method": method, "n_boot": n_boot,
           "ci": float(ci), "seed": seed, "num_models": M}
    nan = torch.full((D, D), float("nan"), dtype=torch.float64)
    if n_boot == 0:
        out.update(std=nan, ci_low=nan.clone(), ci_high=nan.clone(),
                   undefined_draws=torch.zeros(D, D, dtype=torch.int64))
        return out
    idx = torch.randint(M, (n_boot, M), generator=torch.Generator().manual_seed(seed))
    # Resampling models = weighting model pairs: pair (p, q) of distinct models occurs
    # c_p · c_q times in a draw where model p was drawn c_p times (copies of one model are
    # never paired), so each draw is a weighted correlation over the C(M, 2) pairs.
    counts = torch.zeros(n_boot, M, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, M, dtype=torch.float64))
    w = counts[:, iu[0]] * counts[:, iu[1]]                      # (B, P)
    draws = torch.cat([_weighted_corr(s, w[b0:b0 + 128], method)
                       for b0 in range(0, n_boot, 128)])
    undefined = torch.isnan(draws).sum(0)
    lo, hi = (1 - ci) / 2, (1 + ci) / 2
    q = torch.nanquantile(draws, torch.tensor([lo, hi], dtype=torch.float64), dim=0)
    valid = (~torch.isnan(draws)).sum(0)
    mean = torch.nanmean(draws, 0)
    var = torch.nansum((draws - mean).pow(2), 0) / (valid - 1).clamp_min(1)
    out.update(std=torch.where(valid > 1, var.sqrt(), nan), ci_low=q[0], ci_high=q[1],
               undefined_draws=undefined)
    return out


def _corr(s: torch.Tensor, method: str) -> torch.Tensor:
    """(D, P) -> (D, D) Pearson correlation of the rows (of their average ranks for
    Spearman); NaN where a row is constant (max = min: its rounded mean need not be its
    value, so the norm of the centred row is no test)."""
    if method == "spearman":
        s = torch.stack([_average_ranks(r) for r in s])
    c = s - s.mean(1, keepdim=True)
    norm = c.norm(dim=1)
    r = (c @ c.T) / (norm[:, None] * norm[None, :])
    ok = (s.amax(1) > s.amin(1)) & (norm > 0)
    r = torch.where(ok[:, None] & ok[None, :], r, torch.full_like(r, float("nan")))
    return r.clamp(-1.0, 1.0)


def _weighted_corr(s: torch.Tensor, w: torch.Tensor, method: str) -> torch.Tensor:
    """s (D, P) values, w (B, P) integer weights (multiplicities) -> (B, D, D): the
    correlation of the rows over the multiset in which value p appears w[b, p] times;
    Spearman ranks that multiset (ties: mean rank). NaN where a row is constant over the
    multiset (its max = its min; the rounded weighted mean need not be that value)."""
    D, P = s.shape
    B = w.shape[0]
    if method == "spearman":
        ranks = torch.empty(B, D, P, dtype=torch.float64)
        for d in range(D):
            order = torch.argsort(s[d], stable=True)
            _, group = torch.unique_consecutive(s[d][order], return_inverse=True)
            G = int(group.max()) + 1
            gsum = torch.zeros(B, G, dtype=torch.float64).index_add_(1, group, w[:, order])
            start = gsum.cumsum(1) - gsum                    # weight of smaller values
            r_sorted = (start + (gsum + 1) / 2)[:, group]    # mean rank of each tie group
            ranks[:, d].scatter_(1, order.expand(B, P), r_sorted)
        x = ranks
    else:
        x = s.expand(B, D, P)
    total = w.sum(1)                                         # (B,)
    mu = (x * w[:, None]).sum(2) / total.clamp_min(1)[:, None]
    c = (x - mu[..., None]) * w[:, None].sqrt()
    cov = c @ c.transpose(1, 2)                              # (B, D, D)
    var = cov.diagonal(dim1=1, dim2=2)
    r = cov / (var[:, :, None] * var[:, None, :]).sqrt()
    drawn = (w > 0)[:, None]                                 # (B, 1, P)
    const = (x.masked_fill(~drawn, -math.inf).amax(2)
             <= x.masked_fill(~drawn, math.inf).amin(2)) | (var <= 0)     # (B, D)
    bad = const[:, :, None] | const[:, None, :] | (total < 2)[:, None, None]
    return torch.where(bad, torch.full_like(r, float("nan")), r).clamp(-1.0, 1.0)


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P of v, ties sharing the mean of their positions (scipy's 'average')."""
    uniq, inverse, counts = torch.unique(v, sorted=True, return_inverse=True,
                                         return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    return mean_rank[inverse]


def _matrices(matrices):
    if isinstance(matrices, Mapping):
        names, items = [str(k) for k in matrices.keys()], list(matrices.values())
    elif isinstance(matrices, Sequence) and not isinstance(matrices, (str, bytes)):
        names, items = [str(i) for i in range(len(matrices))], list(matrices)
    else:
        raise TypeError(f"matrices must be a dict {{dataset: (M, M) matrix}} or a sequence "
                        f"of matrices, got {type(matrices).__name__}")
    if len(items) < 2:
        raise ValueError(f"matrices needs at least 2 datasets, got {len(items)}")
    mats = [as_matrix(m, f"matrices[{n!r}]", square=True) for n, m in zip(names, items)]
    M = mats[0].shape[0]
    if M < 3:
        raise ValueError(f"matrices[{names[0]!r}] compares {M} models; at least 3 are needed "
                         f"(a correlation needs 2 or more model pairs)")
    for n, m in zip(names, mats):
        if m.shape[0] != M:
            raise ValueError(f"matrices[{n!r}] compares {m.shape[0]} models but "
                             f"matrices[{names[0]!r}] compares {M}: use the same models, in "
                             f"the same order, for every dataset")
        iu = torch.triu_indices(M, M, 1)
        upper = m[iu[0], iu[1]]
        if not bool(torch.isfinite(upper).all()):
            bad = int((~torch.isfinite(upper)).nonzero()[0])
            raise ValueError(f"matrices[{n!r}] has a non-finite similarity for models "
                             f"({int(iu[0][bad])}, {int(iu[1][bad])})")
    return names, mats
