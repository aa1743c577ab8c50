"""pytorch-cka 1.1.3's ``cka.hsic`` module: unbiased HSIC of stacked Gram matrices.

Both functions take Gram matrices ``grams_x`` (L_x, n, n) and ``grams_y`` (L_y, n, n) and
compute every cross term at once, as the original does, but from U-centred Grams
(Székely & Rizzo 2014), in float64:

    HSIC₁(K, L) = ⟨Û(K), Û(L)⟩_F / (n(n−3))

which equals Song et al. 2012's formula for symmetric K and L (other square matrices get
the original's definition, also in float64) (the original evaluates that
formula term by term in the inputs' dtype; with float32 Grams of un-centred features its
terms cancel). Results are float64 on the inputs' device (the original: the inputs' dtype).
"""
from __future__ import annotations

import torch

from ...core import validate as _validate
from ...measures.cka import center

__all__ = ["hsic", "hsic_cross"]


def hsic(grams_x: torch.Tensor, grams_y: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unbiased HSIC of every pair and of each Gram with itself.

    ``grams_x`` (L_x, n, n), ``grams_y`` (L_y, n, n), n > 3 ->
    ``(hsic_xy (L_x, L_y), hsic_xx (L_x,), hsic_yy (L_y,))``, float64.
    """
    xy, xx, yy = _terms(grams_x, grams_y, "hsic_all")
    return xy, xx, yy


def hsic_cross(grams_x: torch.Tensor, grams_y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of every pair: ``grams_x`` (L_x, n, n), ``grams_y`` (L_y, n, n)
    -> (L_x, L_y) float64."""
    return _terms(grams_x, grams_y, "hsic_cross")[0]


def _terms(grams_x, grams_y, fn: str):
    """Validate as the original does (3-D, square, same n, n > 3; its messages, which
    name ``hsic_all`` for ``hsic``), then the three HSIC terms in float64.

    Symmetric Grams (every X Xᵀ, up to 16 ulp of the inputs' dtype): U-centred rows, ``⟨Û(K), Û(L)⟩_F / (n(n−3))``.
    Other square matrices: the original's definition, with K̃ = K, diagonal zeroed and
    c_K its column sums, ``[⟨K̃, L̃⟩_F + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2 c_K·c_L/(n−2)] /
    (n(n−3))`` (both agree on symmetric matrices)."""
    for g, arg in ((grams_x, "grams_x"), (grams_y, "grams_y")):
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{fn}: {arg} must be a torch.Tensor, got {type(g).__name__}")
    if grams_x.dim() != 3 or grams_y.dim() != 3:
        raise ValueError(f"{fn} requires 3D tensors (L, n, n), got shapes "
                         f"{tuple(grams_x.shape)} (grams_x) and {tuple(grams_y.shape)} (grams_y)")
    for g, arg in ((grams_x, "grams_x"), (grams_y, "grams_y")):
        if g.shape[1] != g.shape[2]:
            raise ValueError(f"{fn} requires square matrices; {arg} has shape {tuple(g.shape)}")
        _validate.representation(g, arg)
    n, n_y = grams_x.shape[1], grams_y.shape[1]
    if n != n_y:
        raise ValueError(f"Gram matrices must have same sample dimension, got {n} (grams_x) "
                         f"and {n_y} (grams_y)")
    if n <= 3:
        raise ValueError(f"{fn} requires n > 3 (unbiased HSIC divides by n(n-3)), got n={n}")
    gs = []
    for g, arg in ((grams_x, "grams_x"), (grams_y, "grams_y")):
        g64 = g.detach().to(torch.float64)
        if not bool(torch.isfinite(g64).all()):
            raise ValueError(f"{fn}: {arg} has non-finite entries (NaN or inf)")
        gs.append(g64)
    norm = n * (n - 3)
    eps = [torch.finfo(g.dtype).eps if g.is_floating_point() else 0.0
           for g in (grams_x, grams_y)]
    if all(float((g - g.transpose(1, 2)).abs().amax()) <= 16 * e * float(g.abs().amax())
           for g, e in zip(gs, eps)):                # symmetric up to the inputs' rounding
        gs = [(g + g.transpose(1, 2)) / 2 for g in gs]
        ux, uy = (torch.stack([center(k, unbiased=True, backend="torch").reshape(-1)
                               for k in g]) for g in gs)
        return ux @ uy.T / norm, (ux * ux).sum(1) / norm, (uy * uy).sum(1) / norm
    flat, tot, col = [], [], []
    for g in gs:
        t = g.clone()
        t.diagonal(dim1=1, dim2=2).zero_()
        flat.append(t.reshape(len(t), -1))
        tot.append(t.sum((1, 2)))
        col.append(t.sum(1))

    def pair(i, j):
        return (flat[i] @ flat[j].T + torch.outer(tot[i], tot[j]) / ((n - 1) * (n - 2))
                - 2 * col[i] @ col[j].T / (n - 2)) / norm
    return pair(0, 1), pair(0, 0).diagonal().clone(), pair(1, 1).diagonal().clone()
