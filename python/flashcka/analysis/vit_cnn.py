"""ViT vs CNN (Raghu et al. 2021, "Do Vision Transformers See Like Convolutional Neural
Networks?", NeurIPS): the summaries the paper reads off its minibatch-CKA heatmaps.

Inputs are ``CKAResult``s (from ``flashcka.compare``) or plain (L_A, L_B) matrices; NaN
entries (undefined CKA) are left out of every mean and every argmax.
"""
from __future__ import annotations

import torch

from ._common import as_matrix, relative_depth


def similarity_by_distance(result) -> torch.Tensor:
    """Mean CKA of layer pairs δ layers apart, of one model's (L, L) self-similarity.

    ``s(δ) = mean_{i, j : |i − j| = δ} M_ij`` for δ = 0 … L−1 (both triangles, NaN left
    out; NaN where a distance has no finite entry) -> (L,) float64. A slow decay with δ is
    Raghu et al. 2021's "uniform representations across depth" of ViTs (their Fig. 1);
    ResNets drop faster, with stage-wise blocks.
    """
    m = as_matrix(result, "result", square=True)
    L = m.shape[0]
    i, j = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    dist = (i - j).abs().reshape(-1)
    vals = m.reshape(-1)
    ok = torch.isfinite(vals)
    total = torch.zeros(L, dtype=torch.float64).index_add_(0, dist[ok], vals[ok])
    count = torch.zeros(L, dtype=torch.float64).index_add_(0, dist[ok], torch.ones_like(vals[ok]))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def uniformity(result) -> float:
    """How uniform a model's representations are across depth: the mean off-diagonal CKA
    of its (L, L) layer self-similarity, ``u = Σ_{i≠j} M_ij / (L(L − 1))`` (NaN left out).

    1 when every layer is like every other; Raghu et al. 2021 find ViTs (high CKA between
    lower and higher layers) more uniform than ResNets. NaN for L = 1.
    """
    m = as_matrix(result, "result", square=True)
    off = ~torch.eye(m.shape[0], dtype=torch.bool) & torch.isfinite(m)
    return float(m[off].mean()) if bool(off.any()) else float("nan")


def best_match(result) -> dict:
    """For each layer i of model A (rows of an (L_A, L_B) cross-model CKA matrix), the
    layer of model B it matches best: ``j*(i) = argmax_j M_ij`` (NaN left out).

    Returns a dict of (L_A,) tensors: ``index`` (int64 j*, −1 where a row is all NaN),
    ``cka`` (``M_{i j*}``), ``depth_a`` (``i / (L_A − 1)``), ``depth_b``
    (``j* / (L_B − 1)``), ``mean_depth_b`` (the CKA-weighted mean relative depth of B,
    ``Σ_j max(M_ij, 0) d_j / Σ_j max(M_ij, 0)``, smoother than the argmax); and
    ``names`` (B's layer names at j*, when ``result`` is a ``CKAResult``). Raghu et al.
    2021 (Fig. 2) read from it that the lower half of a ViT matches the lower quarter of a
    ResNet.
    """
    m = as_matrix(result, "result")
    la, lb = m.shape
    finite = torch.isfinite(m)
    filled = torch.where(finite, m, torch.full_like(m, -float("inf")))
    idx = filled.argmax(1)
    has = finite.any(1)
    idx = torch.where(has, idx, torch.full_like(idx, -1))
    cka = torch.where(has, m.gather(1, idx.clamp_min(0)[:, None])[:, 0],
                      torch.full((la,), float("nan"), dtype=torch.float64))
    db = relative_depth(lb)
    depth_b = torch.where(has, db[idx.clamp_min(0)], torch.full((la,), float("nan"),
                                                                 dtype=torch.float64))
    w = torch.where(finite, m.clamp_min(0), torch.zeros_like(m))
    wsum = w.sum(1)
    mean_depth_b = torch.where(wsum > 0, (w @ db) / wsum.clamp_min(1e-300),
                               torch.full((la,), float("nan"), dtype=torch.float64))
    out = {"index": idx, "cka": cka, "depth_a": relative_depth(la), "depth_b": depth_b,
           "mean_depth_b": mean_depth_b}
    names_b = getattr(result, "names_b", None)
    if names_b is not None:
        out["names"] = [names_b[j] if j >= 0 else None for j in idx.tolist()]
    return out


def vit_cnn_summary(vit_vit, cnn_cnn, vit_cnn) -> dict:
    """The numbers Raghu et al. 2021 read from their three heatmaps, JSON-ready:
    ``uniformity`` and ``similarity_by_distance`` of the ViT (``vit_vit``, (L_V, L_V)) and
    the CNN (``cnn_cnn``, (L_C, L_C)), and ``best_match`` of every ViT layer in the CNN
    (``vit_cnn``, (L_V, L_C))."""
    bm = best_match(vit_cnn)
    out = {"uniformity": {"vit": uniformity(vit_vit), "cnn": uniformity(cnn_cnn)},
           "similarity_by_distance": {"vit": _list(similarity_by_distance(vit_vit)),
                                      "cnn": _list(similarity_by_distance(cnn_cnn))},
           "best_match": {k: (_list(v) if isinstance(v, torch.Tensor) else v)
                          for k, v in bm.items()}}
    names_a = getattr(vit_cnn, "names_a", None)
    if names_a is not None:
        out["best_match"]["layers"] = list(names_a)
    return out


def _list(t: torch.Tensor) -> list:
    return [None if (isinstance(v, float) and v != v) else v for v in t.tolist()]
