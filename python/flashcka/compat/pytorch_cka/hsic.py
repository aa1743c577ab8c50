"""pytorch-cka 1.1.3's ``cka.hsic`` module: unbiased HSIC of stacked Gram matrices.

Both functions take Gram matrices ``grams_x`` (L_x, n, n) and ``grams_y`` (L_y, n, n) and
compute every cross term at once, as the original does, but from U-centred Grams
(Székely & Rizzo 2014), in float64:

    HSIC₁(K, L) = ⟨Û(K), Û(L)⟩_F / (n(n−3))

which equals Song et al. 2012's formula for symmetric K and L (the original evaluates that
formula term by term in the inputs' dtype; with float32 Grams of un-centred features its
terms cancel). Results are float64 on the inputs' device (the original: the inputs' dtype).
"""
from __future__ import annotations

import torch

from ... import _validate
from ...functional import center

__all__ = ["hsic", "hsic_cross"]


def hsic(grams_x: torch.Tensor, grams_y: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unbiased HSIC of every pair and of each Gram with itself.

    ``grams_x`` (L_x, n, n), ``grams_y`` (L_y, n, n), symmetric, n > 3 ->
    ``(hsic_xy (L_x, L_y), hsic_xx (L_x,), hsic_yy (L_y,))``, float64.
    """
    ux, uy = _centred_rows(grams_x, grams_y, "hsic")
    n = grams_x.shape[-1]
    norm = n * (n - 3)
    return (ux @ uy.T / norm, (ux * ux).sum(1) / norm, (uy * uy).sum(1) / norm)


def hsic_cross(grams_x: torch.Tensor, grams_y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of every pair: ``grams_x`` (L_x, n, n), ``grams_y`` (L_y, n, n)
    -> (L_x, L_y) float64, ``⟨Û(K_i), Û(L_j)⟩_F / (n(n−3))``."""
    ux, uy = _centred_rows(grams_x, grams_y, "hsic_cross")
    n = grams_x.shape[-1]
    return ux @ uy.T / (n * (n - 3))


def _centred_rows(grams_x, grams_y, fn: str):
    """Validate as the original does (3-D, square, same n, n > 3), then each Gram
    U-centred in float64 and flattened to a row."""
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
    rows = []
    for g, arg in ((grams_x, "grams_x"), (grams_y, "grams_y")):
        g64 = g.detach().to(torch.float64)
        if not bool(torch.isfinite(g64).all()):
            raise ValueError(f"{fn}: {arg} has non-finite entries (NaN or inf)")
        asym = (g64 - g64.transpose(1, 2)).abs().amax()
        if float(asym) > 1e-3 * float(g64.abs().amax()):
            raise ValueError(f"{fn}: {arg} is not symmetric (max |K - Kᵀ| = {float(asym):.3g}); "
                             f"pass Gram matrices X Xᵀ")
        g64 = (g64 + g64.transpose(1, 2)) / 2
        rows.append(torch.stack([center(k, unbiased=True, backend="torch").reshape(-1)
                                 for k in g64]))
    return rows[0], rows[1]
