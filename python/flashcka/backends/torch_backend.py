"""The plain-PyTorch backend: the readable implementation, on any device and dtype."""
from __future__ import annotations

import math

import torch

from .base import Backend, ZeroBandwidthError


def center_features(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """x (n, ...) minus its column mean mu (x.shape[1:]), flattened to (n, d) in mu's dtype.
    The subtraction is done in the wider of the two dtypes (a float64 input computed in
    float32 is centered in float64, then rounded: its spread below float32's resolution
    of the offset is kept)."""
    if x.dtype == torch.float64 and mu.dtype != torch.float64:
        return (x - mu.to(x.dtype)).to(mu.dtype).reshape(x.shape[0], -1)
    return (x.to(mu.dtype) - mu).reshape(x.shape[0], -1)


def sq_distances(kc: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Squared distances D_ab = K_aa + K_bb − 2K_ab from a linear Gram (n, n) of ``dim``
    features; D_aa = 0. A distance within the rounding noise of that formula,
    D_ab ≤ noise_tol(dim, dtype)·(K_aa + K_bb), is set to 0: duplicated rows get exactly 0
    (as ‖x_a − x_b‖² does), not noise that the median heuristic could land on."""
    diag = kc.diagonal()
    scale = diag[:, None] + diag[None, :]
    d = (scale - 2 * kc).clamp_(min=0)
    d = d.masked_fill(d <= noise_tol(dim, kc.dtype) * scale, 0.0)
    return d.fill_diagonal_(0)


def noise_tol(dim: int, dtype: torch.dtype) -> float:
    """Relative rounding noise of K_aa + K_bb − 2K_ab: 4·sqrt(dim)·eps(dtype)."""
    return 4.0 * math.sqrt(max(dim, 1)) * torch.finfo(dtype).eps


def median_sq_distance(d: torch.Tensor) -> torch.Tensor:
    """numpy.median of all n² entries of d (n zeros on the diagonal included; the mean of
    the two middle values when n² is even), by selection on the strict upper triangle:
    the sorted n² entries are n zeros followed by each off-diagonal value twice."""
    n = d.shape[0]
    iu = torch.triu_indices(n, n, 1, device=d.device)
    upper = d[iu[0], iu[1]]

    def order_stat(k: int) -> torch.Tensor:
        if k < n:
            return d.new_zeros(())
        return torch.kthvalue(upper, (k - n) // 2 + 1).values

    total = n * n
    return (order_stat((total - 1) // 2) + order_stat(total // 2)) / 2


def rbf_from_gram(kc: torch.Tensor, sigma, threshold: float, dim: int = 1) -> torch.Tensor:
    """RBF kernel exp(-D / (2σ²)) from a linear Gram of ``dim`` features; σ² = sigma² or
    threshold²·median(D). Any σ > 0: D = 0 gives exactly 1 (also when 2σ² under- or
    overflows the Gram's dtype), D > 0 with 2σ² = 0 in that dtype gives 0."""
    d = sq_distances(kc, dim)
    if sigma is not None:
        two_s2 = 2.0 * float(sigma) * float(sigma)
    else:
        med = median_sq_distance(d)
        if not bool(med > 0):
            if not bool(d.max() > 0):  # constant representation: K = 11ᵀ, centered to 0
                return torch.ones_like(d)
            raise ZeroBandwidthError(
                "the median heuristic gives sigma = 0 (at least half of the squared "
                "pairwise distances are zero, e.g. repeated samples); pass sigma=")
        two_s2 = 2.0 * threshold * threshold * med
    zero = d == 0
    return torch.exp(d.div_(-two_s2)).masked_fill(zero, 1.0)


def center_symmetric_(k: torch.Tensor, unbiased: bool, out: torch.Tensor) -> torch.Tensor:
    """``center(k, unbiased)`` of a symmetric k (n, n), written into ``out`` (n, n); k is
    overwritten (its diagonal zeroed when unbiased). Row sums stand for column sums:
    ``Û_ij = K̃_ij − m_i − m_j`` with ``m_i = r_i/(n−2) − S/(2(n−1)(n−2))`` (biased:
    ``r_i/n − S/(2n²)``), the formula of the native epilogue."""
    n = k.shape[0]
    if unbiased:
        k.fill_diagonal_(0)
    r = k.sum(1, keepdim=True)
    total = r.sum()
    m = r / (n - 2) - total / (2 * (n - 1) * (n - 2)) if unbiased else r / n - total / (2 * n * n)
    torch.sub(k, m, out=out)
    out.sub_(m.T)
    return out.fill_diagonal_(0) if unbiased else out


def center(k: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """U-centering (Székely & Rizzo 2014) or HKH of k (n, n), never forming H."""
    n = k.shape[0]
    if not unbiased:
        r = k.mean(1, keepdim=True)
        c = k.mean(0, keepdim=True)
        return k - r - c + r.mean()
    kt = k.clone()
    kt.fill_diagonal_(0)
    r = kt.sum(1, keepdim=True)
    c = kt.sum(0, keepdim=True)
    u = kt - r / (n - 2) - c / (n - 2) + r.sum() / ((n - 1) * (n - 2))
    return u.fill_diagonal_(0)


def kernel_tile(xi: torch.Tensor, xj: torch.Tensor | None, *, kernel: str, two_s2,
                shift, unbiased: bool, dim: int) -> torch.Tensor:
    """One layer's tile of the tiled route (core/tiled.py): rows I (xi, (ti, d)) against
    rows J (xj, (tj, d); None: J = I, a diagonal tile), centred features in ct.

    kernel "linear": ``xi xjᵀ``; "dist": the squared distances D of ``sq_distances`` (same
    noise rule, D_aa = 0 on a diagonal tile); "rbf": ``exp(−D / two_s2)`` (D = 0 gives 1).
    Then ``− shift`` (a per-layer constant: both estimators are invariant to K → K − c·11ᵀ,
    and it removes float32 cancellation in the closed form), and on a diagonal tile of the
    unbiased estimator a zero diagonal (K̃). -> (ti, tj) in ct."""
    diag = xj is None
    xj = xi if diag else xj
    k = xi @ xj.T
    if kernel == "linear":
        out = k
    else:
        si = k.diagonal().clone() if diag else (xi * xi).sum(1)
        sj = si if diag else (xj * xj).sum(1)
        scale = si[:, None] + sj[None, :]
        d = (scale - 2 * k).clamp_(min=0).add_(0.0)  # (+0.0: no −0.0 for the bit histogram)
        d.masked_fill_(d <= noise_tol(dim, k.dtype) * scale, 0.0)
        if diag:
            d.fill_diagonal_(0)
        if kernel == "dist":
            return d
        zero = d == 0
        out = torch.exp(d.div_(-two_s2)).masked_fill_(zero, 1.0)
    if shift is not None:
        out = out.sub_(shift)
    if diag and unbiased:
        out.fill_diagonal_(0)
    return out


class TorchBackend(Backend):
    name = "torch"
    differentiable = True

    def usable(self):
        return True, ""

    def accepts(self, x):
        return True

    def kernel_matrix(self, x, *, kernel, sigma, threshold, ct):
        if kernel == "linear":
            xf = x.reshape(x.shape[0], -1).to(ct)
            return xf @ xf.T
        mu = x.to(ct).mean(0)
        xc = center_features(x, mu)
        return rbf_from_gram(xc @ xc.T, sigma, threshold, xc.shape[1])

    def center(self, k, *, unbiased):
        return center(k, unbiased)

    def row_length(self, n, unbiased):
        return n * n

    def centered_gram_row(self, x, mu, out, *, kernel, sigma, threshold, unbiased):
        xc = center_features(x, mu)
        k = xc @ xc.T
        sq_norm = k.diagonal().sum()
        if kernel == "rbf":
            k = rbf_from_gram(k, sigma, threshold, xc.shape[1])
        n = k.shape[0]
        if out.is_contiguous() and not (torch.is_grad_enabled() and k.requires_grad):
            center_symmetric_(k, unbiased, out.view(n, n))  # in place: no copy of k
        else:
            out.copy_(center(k, unbiased).reshape(-1))
        return sq_norm

    def pair(self, ga, gb):
        return (ga @ gb.T).to(torch.float64)

    def kernel_tiles(self, xi, xj, out, *, kernel, two_s2, shift, unbiased, dims,
                     sums=None):
        """The tiled route's tiles of every layer (base.py): out[l] = ``kernel_tile``."""
        for i, x in enumerate(xi):
            out[i] = kernel_tile(x, None if xj is None else xj[i], kernel=kernel,
                                 two_s2=None if two_s2 is None else two_s2[i],
                                 shift=None if shift is None else shift[i],
                                 unbiased=unbiased, dim=dims[i])
        if sums is not None:
            torch.sum(out, 2, dtype=torch.float64, out=sums[0])
            torch.sum(out, 1, dtype=torch.float64, out=sums[1])
        return out

    def sq_row_norms(self, g):
        """‖g_i‖² (L,) float64 of rows g (L, m), accumulated in float64."""
        return torch.linalg.vector_norm(g, dim=1, dtype=torch.float64).square()
