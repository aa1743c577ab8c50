"""Linear-regression fit R² between every pair of layers, from ``subspace``'s factorisations."""
from __future__ import annotations

from . import subspace as _sub


def linreg_pairs(ba, bb, n, *, progress=None):
    """R² of a least-squares fit of each column layer from each row layer; see
    ``similarity_matrix(measure="linreg")``. Only the predictors (rows) can degenerate."""
    _sub.require_proper(ba, n, "linreg")
    return _sub.pairs(ba, bb, _r2, symmetric=False, progress=progress,
                      desc="flashcka linreg")


def _r2(a, bs, m):
    # ‖Q_Xᵀ Ỹ‖²_F with Ỹ = U_B S_B V_Bᵀ (Σ s² = 1): Σ_ij (U_Aᵀ U_B)_ij² s_Bj²
    return ((m * m).sum(-2) * (_sub.stack_s(bs) ** 2)).sum(-1).clamp(0.0, 1.0)
