"""Float64 numpy references for Procrustes, CCA, SVCCA, PWCCA and linear-regression R²,
written from the papers' definitions, one pair at a time.

Independent of flashcka (it imports nothing from it) and never edited to match it. The
routes differ on purpose from flashcka's (which works from each layer's SVD): CCA here
whitens the covariance matrices (Hotelling's Σxx^{-1/2} Σxy Σyy^{-1/2}), regression is a
least-squares solve with an intercept column, PWCCA forms the canonical variates and the
neurons explicitly.
"""
import numpy as np


def as2d(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def centred(x):
    x = as2d(x)
    return x - x.mean(0)


def procrustes(x, y):
    """Williams et al. 2021: ‖X̃ᵀỸ‖_* with X̃ = X_c/‖X_c‖_F (nuclear norm = Σ singular values)."""
    xt = centred(x)
    yt = centred(y)
    xt /= np.linalg.norm(xt)
    yt /= np.linalg.norm(yt)
    return np.linalg.svd(xt.T @ yt, compute_uv=False).sum()


def _inv_sqrt(c, rtol=1e-10):
    """Σ^{-1/2} on the span of Σ's eigenvectors with eigenvalue > rtol·λ_max: (d, r)."""
    lam, v = np.linalg.eigh(c)
    keep = lam > rtol * lam.max()
    return v[:, keep] / np.sqrt(lam[keep])


def canonical(x, y):
    """Hotelling's CCA: ρ = singular values of Σxx^{-1/2} Σxy Σyy^{-1/2} (on the supports),
    and the X-side canonical directions a_i = Σxx^{-1/2} u_i. -> (ρ, A (d_x, k))."""
    xc, yc = centred(x), centred(y)
    wx, wy = _inv_sqrt(xc.T @ xc), _inv_sqrt(yc.T @ yc)
    u, rho, _ = np.linalg.svd(wx.T @ (xc.T @ yc) @ wy, full_matrices=False)
    k = min(wx.shape[1], wy.shape[1])
    return np.minimum(rho[:k], 1.0), wx @ u[:, :k]


def cca(x, y):
    """Mean canonical correlation."""
    return canonical(x, y)[0].mean()


def svcca(x, y, threshold=0.99):
    """Raghu et al. 2017: project each layer on its top singular directions explaining
    ``threshold`` of the variance (Σ s_i² over the kept / Σ s_i² over all), then CCA
    (directions without variance drop out of the whitening)."""
    def reduce(a):
        ac = centred(a)
        u, s, _ = np.linalg.svd(ac, full_matrices=False)
        frac = np.cumsum(s ** 2) / np.sum(s ** 2)
        k = int(np.searchsorted(frac, threshold) + 1)     # first k with frac[k-1] >= threshold
        return u[:, :k] * s[:k]
    return cca(reduce(x), reduce(y))


def pwcca(x, y):
    """Morcos et al. 2018 (projection weighting): Σ_i α_i ρ_i / Σ_i α_i, α_i = Σ_j |⟨h_i, x_j⟩|, h_i the
    (unit-norm) canonical variates of X, x_j the (centred) neurons of X; X is weighted."""
    rho, a = canonical(x, y)
    xc = centred(x)
    h = xc @ a
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(1)
    return (alpha * rho).sum() / alpha.sum()


def linreg(x, y):
    """Kornblith et al. 2019: R² of the least-squares fit of Y from X (with intercept):
    1 − min_B ‖Y − [1 X] B‖²_F / ‖Y_c‖²_F."""
    x, y = as2d(x), as2d(y)
    x1 = np.hstack([np.ones((x.shape[0], 1)), x])
    b, *_ = np.linalg.lstsq(x1, y, rcond=None)
    return 1.0 - np.sum((y - x1 @ b) ** 2) / np.sum(centred(y) ** 2)


MEASURES = {"procrustes": procrustes, "cca": cca, "svcca": svcca, "pwcca": pwcca,
            "linreg": linreg}


def matrix(measure, xs, ys=None, **kw):
    ys = xs if ys is None else ys
    f = MEASURES[measure]
    return np.array([[f(x, y, **kw) for y in ys] for x in xs])
