"""Nearest-neighbour measures on inner-product Grams (Huh et al. 2024, platonic-rep):
mutual kNN and CKNNA, all layer pairs from batched products.

Neighbours of sample i: the ``topk`` samples j with the largest ``⟨x_i, x_j⟩`` (raw
features, as platonic-rep's ``compute_nearest_neighbors``), i itself excluded (included
as a candidate only by CKNNA with ``unbiased=False``, as in the original). Ties are broken
by ``torch.topk``. ``A`` below is a layer's (n, n) 0/1 neighbour mask (row i marks i's
neighbours), ``K`` its Gram.
"""
from __future__ import annotations

import torch


def knn_indices(k: torch.Tensor, topk: int, exclude_self: bool = True) -> torch.Tensor:
    """(n, topk) indices of each row's largest entries of Gram ``k`` (n, n), in decreasing
    order; the diagonal is skipped when ``exclude_self``."""
    if exclude_self:
        k = k.clone()
        k.fill_diagonal_(float("-inf"))
    return torch.topk(k, topk, dim=1).indices


def knn_mask(k: torch.Tensor, topk: int, exclude_self: bool = True,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """(n, n) 0/1 mask of each row's ``topk`` nearest neighbours (by inner product)."""
    idx = knn_indices(k, topk, exclude_self)
    mask = torch.zeros(k.shape, dtype=dtype or k.dtype, device=k.device)
    return mask.scatter_(1, idx, 1.0)


def mutual_knn_pairs(masks_a: torch.Tensor, masks_b: torch.Tensor, topk: int) -> torch.Tensor:
    """Mutual kNN accuracy of every pair: masks (L_A, n, n), (L_B, n, n) ->
    (L_A, L_B) float64, ``⟨A_k, B_l⟩_F / (n · topk)`` (the mean over samples of the
    fraction of shared neighbours), from one product of the flattened masks."""
    n = masks_a.shape[1]
    return (masks_a.reshape(len(masks_a), -1) @ masks_b.reshape(len(masks_b), -1).T
            ).to(torch.float64) / (n * topk)


class CknnaLayers:
    """What CKNNA needs of each layer, float64: the mask A, P = A∘K, S = (A∘Aᵀ)∘K (the
    diagonal of K zeroed when unbiased)."""

    def __init__(self, grams: list[torch.Tensor], topk: int, unbiased: bool):
        a, p, s = [], [], []
        for k in grams:
            k = k.to(torch.float64)
            m = knn_mask(k, topk, exclude_self=unbiased)
            if unbiased:
                k = k.clone()
                k.fill_diagonal_(0)
            a.append(m)
            p.append(m * k)
            s.append(m * m.T * k)
        self.a, self.p, self.s = torch.stack(a), torch.stack(p), torch.stack(s)
        self.n, self.unbiased = grams[0].shape[0], unbiased


def cknna_hsic_pairs(x: CknnaLayers, y: CknnaLayers) -> torch.Tensor:
    """HSIC(M∘K_k, M∘L_l), M = A_k∘B_l, for every pair (L_A, L_B) float64 — platonic-rep's
    ``hsic_unbiased`` (Song et al. 2012) or biased ``tr(K'HL'H)``, on the masked (not
    symmetric) kernels K' = M∘K, L' = M∘L, here normalised by n(n−3) resp. (n−1)²:

      tr(K'L')  = ⟨S_k, S_l⟩                    1ᵀK'1 = ⟨P_k, B_l⟩,  1ᵀL'1 = ⟨A_k, Q_l⟩
      1ᵀK'L'1  = Σ_j (Σ_i P_k[i,j] B_l[i,j]) (Σ_m A_k[j,m] Q_l[j,m])
      1ᵀL'K'1  = Σ_j (Σ_i A_k[i,j] Q_l[i,j]) (Σ_m P_k[j,m] B_l[j,m])

    (P = A∘K, Q = B∘L, S = (A∘Aᵀ)∘K): GEMMs of flattened rows and two batched products
    over j, never a loop over pairs."""
    n = x.n
    la, lb = len(x.a), len(y.a)
    flat = lambda t: t.reshape(len(t), -1)  # noqa: E731
    t1 = flat(x.s) @ flat(y.s).T
    sk = flat(x.p) @ flat(y.a).T
    sl = flat(x.a) @ flat(y.p).T
    # column j of layer k as a row: (n_j, L, n_i)
    col = lambda t: t.permute(2, 0, 1)  # noqa: E731
    row = lambda t: t.permute(1, 0, 2)  # noqa: E731
    colsum_k = torch.bmm(col(x.p), col(y.a).transpose(1, 2))      # (n, LA, LB)
    rowsum_l = torch.bmm(row(x.a), row(y.p).transpose(1, 2))
    kl = (colsum_k * rowsum_l).sum(0)
    if x.unbiased:
        return (t1 + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl) / (n * (n - 3))
    colsum_l = torch.bmm(col(x.a), col(y.p).transpose(1, 2))
    rowsum_k = torch.bmm(row(x.p), row(y.a).transpose(1, 2))
    lk = (colsum_l * rowsum_k).sum(0)
    return (t1 - (kl + lk) / n + sk * sl / n ** 2) / (n - 1) ** 2


def cknna_self(x: CknnaLayers) -> torch.Tensor:
    """HSIC(A_k∘K_k, A_k∘K_k) of every layer (L,) float64 (the mask of a layer with
    itself is its own A), O(L·n²)."""
    n = x.n
    t1 = (x.s * x.s).sum((1, 2))
    tot = x.p.sum((1, 2))
    kl = (x.p.sum(1) * x.p.sum(2)).sum(1)        # Σ_j colsum_j · rowsum_j
    if x.unbiased:
        return (t1 + tot * tot / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl) / (n * (n - 3))
    return (t1 - 2 * kl / n + tot * tot / n ** 2) / (n - 1) ** 2


def cknna_bytes(n: int, la: int, lb: int) -> int:
    """Peak float64 memory of all-pairs CKNNA: A, P, S per layer (plus a Gram and a
    permuted copy at a time) and four (n, L_A, L_B) batched products."""
    return 8 * (n * n * (3 * (la + lb) + 4) + 4 * n * la * lb)


def mutual_knn_bytes(n: int, la: int, lb: int) -> int:
    """Peak memory of all-pairs mutual kNN: one float32 (n, n) mask per layer plus a Gram."""
    return 4 * n * n * (la + lb + 2)
