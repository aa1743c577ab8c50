"""Information imbalance (Glielmo et al. 2022, "Ranking the information content of
distance measures", PNAS Nexus) between every pair of layers, from the same linear Grams
that CKA uses."""
from __future__ import annotations

import torch

from ..core import validate as _validate
from ._common import positive_int


def information_imbalance(xs, ys=None, k: int = 1, *, grams: bool = False,
                          dtype: torch.dtype | None = None,
                          tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Information imbalance of every layer pair, both directions.

    ``xs``: L_A representations (n, ...) (a sequence or name -> tensor dict), ``ys``: L_B
    (None: xs against itself). Returns ``(fwd, bwd)``, two (L_A, L_B) float64 tensors:
    ``fwd[a, b] = Δ(A_a → B_b)`` and ``bwd[a, b] = Δ(B_b → A_a)``.

    Distances are Euclidean on the flattened features, from the linear Gram of the
    centered features ``K = X_c X_cᵀ``: ``d²(i, j) = K_ii + K_jj − 2 K_ij``. With
    ``r^B_ij`` the rank of j among i's neighbours in B (1 = nearest) and ``NN^A_k(i)`` the
    k nearest neighbours of i in A,

        ``Δ(A → B) = 2/n · 1/(n k) · Σ_i Σ_{j ∈ NN^A_k(i)} r^B_ij``

    (for k = 1 Glielmo et al.'s ``2/N ⟨r^B | r^A = 1⟩``; for k > 1 the mean rank over the
    k nearest neighbours, as DADApy's ``MetricComparisons`` does). Near 0: A's neighbours
    are neighbours in B (A predicts B); about 1: unrelated.

    ``grams=True``: xs/ys are (n, n) kernel matrices K (e.g. ``flashcka.gram(x)``, or any
    positive semi-definite similarity), and ``d²(i, j) = K_ii + K_jj − 2 K_ij`` is taken from
    them directly (the feature-space distance of the kernel).

    Ties: neighbours are ordered by (distance, index): a point that is as far from i as
    another comes after it when its index is larger, and i itself always comes first
    (rank 0), even among duplicates. DADApy gets its order from scikit-learn's neighbour
    search, which orders exact ties by its own rule; with distinct distances the two agree
    (see tests/test_analysis_imbalance.py).

    Compute dtype as in ``cka_matrix`` (float32 unless an input is float64 or
    ``dtype=torch.float64``); rounding can reorder distances closer than its precision.
    Memory: features, plus (L_A + L_B) · tile · n int64 ranks; no n × n matrix per layer is
    kept. Rows are processed ``tile`` at a time (default: ~256 MB of ranks). Cost:
    ``n²(d + log n)`` per layer and ``L_A · L_B · n · k`` for the pairs.
    """
    xa, na = _validate.representations(xs, "xs")
    same = ys is None
    xb, nb = (xa, na) if same else _validate.representations(ys, "ys")
    groups = [(xa, na)] + ([] if same else [(xb, nb)])
    n = _validate.sample_count(groups, unbiased=False)
    _validate.device_of(groups)
    ct = _validate.compute_dtype(groups, dtype)
    k = positive_int(k, "k")
    if k > n - 1:
        raise ValueError(f"k = {k} needs at least k + 1 = {k + 1} samples; there are n = {n}")
    layers = list(zip(xa, na)) + ([] if same else list(zip(xb, nb)))
    feats = []
    for t, name in layers:
        f = t.detach().reshape(n, -1).to(ct)
        if not bool(torch.isfinite(f).all()):
            _validate.raise_non_finite(t, name, ct)
        if grams:
            if t.shape != (n, n):
                raise ValueError(f"{name} must be an (n, n) = ({n}, {n}) kernel matrix with "
                                 f"grams=True, got shape {tuple(t.shape)}")
            feats.append((f, f.diagonal().clone()))
        else:
            f = f - f.mean(0, keepdim=True)
            feats.append((f, f.pow(2).sum(1)))
    L = len(feats)
    if tile is None:
        tile = max(1, min(n, (256 << 20) // (8 * n * L)))
    tile = positive_int(tile, "tile")
    sums = torch.zeros(L, L, dtype=torch.float64, device=feats[0][0].device)
    ar = torch.arange(n, device=feats[0][0].device)
    for r0 in range(0, n, tile):
        r1 = min(n, r0 + tile)
        rows = ar[r0:r1]
        ranks, nns = [], []
        for f, sq in feats:
            d = sq[r0:r1, None] + sq[None, :] - 2.0 * (f[r0:r1] if grams else f[r0:r1] @ f.T)
            d[torch.arange(r1 - r0), rows] = -float("inf")      # i itself comes first
            order = torch.sort(d, dim=1, stable=True).indices
            rank = torch.empty_like(order).scatter_(1, order, ar.expand(r1 - r0, n))
            ranks.append(rank)
            nns.append(order[:, 1:k + 1])
        R = torch.stack(ranks)                                  # (L, t, n): rank of j for row i
        N = torch.stack(nns)                                    # (L, t, k): neighbours
        # sums[a, b] = Σ rank_b at the neighbours of a
        g = R[None].expand(L, L, r1 - r0, n).gather(3, N[:, None].expand(L, L, r1 - r0, k))
        sums += g.sum((2, 3)).to(torch.float64)
    delta = sums * (2.0 / (n * n * k))
    la = len(xa)
    fwd = delta[:la, :la] if same else delta[:la, la:]
    bwd = delta[:la, :la].T if same else delta[la:, :la].T
    return fwd.cpu().contiguous(), bwd.cpu().contiguous()
