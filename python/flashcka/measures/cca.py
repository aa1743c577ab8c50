"""CCA, SVCCA and PWCCA between every pair of layers, from ``subspace``'s factorisations.

With X_c = U_A S_A V_Aᵀ and Y_c = U_B S_B V_Bᵀ (centred, thin SVDs), the canonical
correlations of X and Y are the singular values of U_Aᵀ U_B (Björck & Golub 1973: the
cosines of the principal angles between the two column spaces).
"""
from __future__ import annotations

import numbers

import torch

from . import subspace as _sub


def cca_pairs(ba, bb, n, *, progress=None) -> torch.Tensor:
    """Mean canonical correlation of every pair; see ``similarity_matrix(measure="cca")``."""
    _sub.require_proper(ba + (bb or []), n, "cca")
    return _sub.pairs(ba, bb, _mean_rho, symmetric=True, progress=progress,
                      desc="flashcka cca")


def svcca_pairs(ba, bb, n, threshold: float, *, progress=None) -> torch.Tensor:
    """SVCCA of every pair; see ``similarity_matrix(measure="svcca")``."""
    threshold_arg(threshold)
    keep = lambda bs: [_sub.Basis(b.name, b.d, b.u[:, :k], b.s[:k], b.vt[:k])  # noqa: E731
                       for b, k in zip(bs, kept(bs, float(threshold)))]
    ka = keep(ba)
    kb = None if bb is None else keep(bb)
    _sub.require_proper(ka + (kb or []), n, "svcca")
    return _sub.pairs(ka, kb, _mean_rho, symmetric=True, progress=progress,
                      desc="flashcka svcca")


def pwcca_pairs(ba, bb, n, *, progress=None) -> torch.Tensor:
    """PWCCA of every pair, weighted by the row layer; see
    ``similarity_matrix(measure="pwcca")``."""
    _sub.require_proper(ba + (bb or []), n, "pwcca")
    return _sub.pairs(ba, bb, _pwcca, symmetric=False, progress=progress,
                      desc="flashcka pwcca")


def threshold_arg(threshold) -> None:
    """``svcca_threshold``: a real number in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
            or not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"svcca_threshold must be a number in (0, 1], got {threshold!r}")


def kept(bs, threshold: float) -> list[int]:
    """Per layer, the fewest leading singular directions whose variance Σ_{i≤k} s_i² reaches
    ``threshold`` of the total (the s are normalised: the total is 1)."""
    out = []
    for b in bs:
        short = int((torch.cumsum(b.s * b.s, 0) < threshold).sum())
        out.append(min(b.rank, short + 1))
    return out


def _rho(m) -> torch.Tensor:
    return torch.linalg.svdvals(m).clamp(max=1.0)


def _mean_rho(a, bs, m):
    return _rho(m).mean(-1)


def _pwcca(a, bs, m):
    # canonical variates of X: h_i = U_A p_i (p_i: left singular vectors of U_Aᵀ U_B); their
    # inner products with X's centred neurons x_j = U_A S_A V_Aᵀ e_j are (Pᵀ S_A V_Aᵀ)_ij
    p, rho, _ = torch.linalg.svd(m, full_matrices=False)
    k = rho.shape[-1]
    weights = (p[..., :k].transpose(-1, -2) @ (a.s[:, None] * a.vt)).abs().sum(-1)
    return (weights * rho.clamp(max=1.0)).sum(-1) / weights.sum(-1)
