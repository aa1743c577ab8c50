"""Concept-based alignment (Vielhaben et al. NeurIPS 2025, "Beyond Scalars: Concept-Based
Alignment Analysis in Vision Transformers"): the generalized (fuzzy) Rand index of
Hüllermeier et al. 2012 between two concept-proximity matrices, and its partition into
pairs of concepts. Tiled over blocks of point pairs: no n × n matrix is ever held."""
from __future__ import annotations


import torch

from ..core import validate as _validate
from ._common import positive_int

MEASURES = ("l1", "cosine")


def fuzzy_rand_index(u: torch.Tensor, v: torch.Tensor, *, measure: str = "l1",
                     normalize: bool = False, dtype: torch.dtype | None = None,
                     tile: int = 2048) -> float:
    """Generalized Rand index of two fuzzy concept assignments of the same n points.

    ``u`` (n, c_A) and ``v`` (n, c_B): non-negative concept memberships/proximities of each
    point under representations A and B. With the pairwise equivalence

        ``l1``:     ``E_u(i, j) = 1 − ‖u_i − u_j‖₁ / 2``  (rows must sum to 1, a fuzzy
                    partition; ``normalize=True`` divides each row by its sum first)
        ``cosine``: ``E_u(i, j) = ⟨u_i, u_j⟩ / (‖u_i‖ ‖u_j‖)``

    the index is (Hüllermeier, Rifqi, Henzgen & Senge 2012, "Comparing fuzzy partitions: a
    generalization of the Rand index and related measures", IEEE TFS)

        ``R(u, v) = 1 − Σ_{i<j} |E_u(i, j) − E_v(i, j)| / C(n, 2)``  ∈ [0, 1] for l1.

    Computed over ``tile`` × ``tile`` blocks of point pairs (upper-triangle blocks only),
    per-row sums within a block in the compute dtype, accumulated in float64: memory O(n·c + tile²); time O(n² (c_A + c_B)),
    cosine through matrix products. Compute dtype: float64 if an input is float64 or
    ``dtype=torch.float64``, else float32. n ≥ 2.
    """
    return _disagreement(u, v, measure, normalize, dtype, tile)[0]


def concept_pair_disagreement(u: torch.Tensor, v: torch.Tensor, *, measure: str = "l1",
                              normalize: bool = False, dtype: torch.dtype | None = None,
                              tile: int = 2048) -> dict:
    """``fuzzy_rand_index`` and how much of the disagreement each pair of concepts carries.

    With ``δ_ij = |E_u(i, j) − E_v(i, j)|`` (as in ``fuzzy_rand_index``), ``p_i = u_i /
    Σ_a u_ia`` and ``q_i = v_i / Σ_b v_ib`` (each point's memberships as distributions), a
    point pair (i, j) belongs to the concept pair (a ∈ A, b ∈ B) with weight
    ``w_ij(a, b) = ½ (p_ia q_ib + p_ja q_jb)`` (the mean over its two points of the joint
    membership; ``Σ_{a,b} w_ij(a, b) = 1``). Then

        ``disagreement[a, b] = Σ_{i<j} w_ij(a, b) δ_ij / C(n, 2)``
                             ``= Σ_i p_ia q_ib s_i / (2 C(n, 2))``, ``s_i = Σ_{j≠i} δ_ij``,

    so ``disagreement`` sums to ``1 − R`` over all concept pairs;
    ``weight[a, b] = Σ_{i<j} w_ij(a, b) / C(n, 2) = Σ_i p_ia q_ib / n`` (sums to 1: how much
    of the data the pair covers); ``pair_index = 1 − disagreement / weight`` (the Rand
    index restricted to the pair's share of point pairs; NaN where weight is 0).

    Returns a dict: ``index`` (R, float), ``disagreement``, ``weight``, ``pair_index``
    ((c_A, c_B) float64) and ``point_disagreement`` ((n,) float64, ``s_i / (n − 1)``: each
    point's mean disagreement with all others).
    """
    r, s, p, q, n = _disagreement(u, v, measure, normalize, dtype, tile, want_rows=True)
    pairs = n * (n - 1) / 2
    dis = (p * s[:, None]).T @ q / (2 * pairs)
    weight = p.T @ q / n
    pair_index = torch.where(weight > 0, 1 - dis / weight.clamp_min(1e-300),
                             torch.full_like(weight, float("nan")))
    return {"index": r, "disagreement": dis, "weight": weight, "pair_index": pair_index,
            "point_disagreement": s / (n - 1)}


def _disagreement(u, v, measure, normalize, dtype, tile, want_rows=False):
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    tile = positive_int(tile, "tile")
    for t, name in ((u, "u"), (v, "v")):
        _validate.representation(t, name)
        if t.dim() != 2:
            raise ValueError(f"{name} must be a (n, concepts) matrix, got shape {tuple(t.shape)}")
    groups = [([u, v], ["u", "v"])]
    n = _validate.sample_count(groups, unbiased=False)
    _validate.device_of(groups)
    ct = _validate.compute_dtype(groups, dtype)
    mats = []
    for t, name in ((u, "u"), (v, "v")):
        t = t.detach().to(ct)
        if not bool(torch.isfinite(t).all()):
            _validate.raise_non_finite(t, name, ct)
        if bool((t < 0).any()):
            raise ValueError(f"{name} has negative entries (min {t.min().item():.3g}); concept "
                             f"memberships/proximities must be >= 0")
        sums = t.sum(1, keepdim=True)
        if bool((sums <= 0).any()):
            i = int((sums[:, 0] <= 0).nonzero()[0])
            raise ValueError(f"{name} row {i} is all zero: that point belongs to no concept")
        if normalize:
            t = t / sums
        elif measure == "l1":
            tol = 1e-4 if ct == torch.float32 else 1e-10
            worst = (sums - 1).abs().max().item()
            if worst > tol:
                raise ValueError(f"{name}'s rows must sum to 1 for measure='l1' (a fuzzy "
                                 f"partition; largest |row sum − 1| = {worst:.3g}); pass "
                                 f"normalize=True to divide each row by its sum")
        mats.append((t, t / sums))
    (u_, p), (v_, q) = mats
    if measure == "cosine":
        # E_u − E_v for a block is one product: [û_I, v̂_I] [û_J, −v̂_J]ᵀ = Û_I Û_Jᵀ − V̂_I V̂_Jᵀ
        left = torch.cat([u_ / u_.norm(dim=1, keepdim=True), v_ / v_.norm(dim=1, keepdim=True)], 1)
        right = torch.cat([left[:, :u_.shape[1]], -left[:, u_.shape[1]:]], 1)
    rows = torch.zeros(n, dtype=torch.float64, device=u_.device)
    for i0 in range(0, n, tile):
        i1 = min(n, i0 + tile)
        for j0 in range(i0, n, tile):
            j1 = min(n, j0 + tile)
            if measure == "l1":      # |E_u − E_v| = |‖v_i − v_j‖₁ − ‖u_i − u_j‖₁| / 2
                d = torch.cdist(v_[i0:i1], v_[j0:j1], p=1)
                d.sub_(torch.cdist(u_[i0:i1], u_[j0:j1], p=1)).abs_().mul_(0.5)
            else:
                d = (left[i0:i1] @ right[j0:j1].T).abs_()
            if j0 == i0:
                d.fill_diagonal_(0)
            rows[i0:i1] += d.sum(1).to(torch.float64)     # per-row sums of ≤ tile terms
            if j0 != i0:
                rows[j0:j1] += d.sum(0).to(torch.float64)
    total = float(rows.sum()) / 2                          # Σ_i s_i = 2 Σ_{i<j} δ_ij
    r = 1.0 - total / (n * (n - 1) / 2)
    if not want_rows:
        return (r,)
    return r, rows.cpu(), p.to(torch.float64).cpu(), q.to(torch.float64).cpu(), n


