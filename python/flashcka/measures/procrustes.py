"""Orthogonal Procrustes similarity between every pair of layers, and its two distances."""
from __future__ import annotations

import torch

from . import subspace as _sub

DISTANCES = ("angular", "euclidean")


def procrustes_pairs(ba, bb, *, progress=None) -> torch.Tensor:
    """Procrustes similarity of every pair of layers from ``subspace.prepare(...,
    factor=subspace.features)``: (L_A, L_B) float64; see
    ``similarity_matrix(measure="procrustes")``."""
    return _sub.pairs(ba, bb, _similarity, symmetric=True, progress=progress,
                      desc="flashcka procrustes")


def _similarity(a, bs, m):
    # m = X̃ᵀỸ (or the same with an n × n factor in place of a layer wider than n)
    return torch.linalg.svdvals(m).sum(-1).clamp(0.0, 1.0)


def procrustes_distance(similarity: torch.Tensor, kind: str = "angular") -> torch.Tensor:
    """Procrustes distances from ``similarity_matrix(..., measure="procrustes")``'s
    similarities S = ‖X̃ᵀỸ‖_* (Williams et al. 2021, "Generalized shape metrics on neural
    representations", §2; X̃, Ỹ centred and scaled to unit Frobenius norm):

    * ``"angular"``: arccos S, the angle between the two shapes after the best rotation
      (their shape metric with α = 1; netrep's ``LinearMetric(alpha=1)`` score).
    * ``"euclidean"``: sqrt(2 − 2 S) = min over orthogonal Q of ‖X̃ − ỸQ‖_F (the Procrustes
      distance; Ding et al. 2021's d_Proc is its square, anatome's "opd" is 1 − S).

    Both are metrics (triangle inequality) on shapes; S itself is not.
    """
    if kind not in DISTANCES:
        raise ValueError(f"kind must be one of {DISTANCES}, got {kind!r}")
    s = similarity.clamp(0.0, 1.0)
    return torch.arccos(s) if kind == "angular" else torch.sqrt(2.0 - 2.0 * s)
