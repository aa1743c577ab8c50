"""Float64 numpy reference for the estimators, written from the papers' formulas.

Independent of flashcka (it imports nothing from it) and never edited to match it:
explicit centering matrices, Song et al.'s formula term by term, numpy's median.
"""
import numpy as np


def as2d(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def gram_linear(x):
    x = as2d(x)
    return x @ x.T


def gram_rbf(x, sigma=None, threshold=1.0):
    """Kornblith et al. 2019: σ² = threshold² · median of all n² squared distances."""
    x = as2d(x)
    sq = np.sum(x * x, 1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    np.fill_diagonal(d, 0)
    s2 = sigma ** 2 if sigma is not None else threshold ** 2 * np.median(d)
    return np.exp(-d / (2 * s2))


def gram(x, kernel="linear", sigma=None, threshold=1.0):
    return gram_linear(x) if kernel == "linear" else gram_rbf(x, sigma, threshold)


def unpack_row(row, n, unbiased):
    """A packed centered-Gram row (docs/design.md §4: √2·C_ij for i < j, row by row, then
    C_ii when biased) -> the symmetric (n, n) float64 matrix C."""
    row = np.asarray(row, dtype=np.float64)
    c = np.zeros((n, n))
    c[np.triu_indices(n, 1)] = row[: n * (n - 1) // 2] / np.sqrt(2)
    c = c + c.T
    if not unbiased:
        c += np.diag(row[n * (n - 1) // 2:])
    return c


def center_biased(k):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return h @ k @ h


def center_unbiased(k):
    """Székely & Rizzo 2014 U-centering, entry by entry from its definition."""
    n = k.shape[0]
    kt = k.copy()
    np.fill_diagonal(kt, 0)
    u = np.zeros_like(k)
    tot = kt.sum()
    for i in range(n):
        for j in range(n):
            if i != j:
                u[i, j] = kt[i, j] - kt[i].sum() / (n - 2) - kt[:, j].sum() / (n - 2) \
                    + tot / ((n - 1) * (n - 2))
    return u


def hsic_biased(k, l):
    """Gretton et al. 2005: tr(KHLH) / (n−1)²."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic_song(k, l):
    """Song et al. 2012, eq. (5), term by term."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def hsic_ucentered(k, l):
    n = k.shape[0]
    return np.sum(center_unbiased(k) * center_unbiased(l)) / (n * (n - 3))


def hsic(x, y, kernel="linear", unbiased=True, sigma=None, threshold=1.0):
    k, l = gram(x, kernel, sigma, threshold), gram(y, kernel, sigma, threshold)
    return hsic_song(k, l) if unbiased else hsic_biased(k, l)


def cka(x, y, kernel="linear", unbiased=True, sigma=None, threshold=1.0):
    k, l = gram(x, kernel, sigma, threshold), gram(y, kernel, sigma, threshold)
    f = hsic_song if unbiased else hsic_biased
    return f(k, l) / np.sqrt(f(k, k) * f(l, l))


def cka_feature_biased(x, y):
    """Biased linear CKA in feature space: ‖XcᵀYc‖² / (‖XcᵀXc‖ ‖YcᵀYc‖)."""
    x, y = as2d(x), as2d(y)
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def minibatch_cka(batches_x, batches_y, kernel="linear", unbiased=True, sigma=None):
    """Nguyen et al. 2021: Σ_b HSIC(K_b, L_b) / sqrt(Σ_b HSIC(K_b,K_b) · Σ_b HSIC(L_b,L_b)),
    batches_x[b][i] the i-th layer's activations in batch b. Returns (L_A, L_B)."""
    la, lb = len(batches_x[0]), len(batches_y[0])
    cross, sa, sb = np.zeros((la, lb)), np.zeros(la), np.zeros(lb)
    f = hsic_song if unbiased else hsic_biased
    for bx, by in zip(batches_x, batches_y):
        ks = [gram(x, kernel, sigma) for x in bx]
        ls = [gram(y, kernel, sigma) for y in by]
        for i, k in enumerate(ks):
            sa[i] += f(k, k)
            for j, l in enumerate(ls):
                cross[i, j] += f(k, l)
        for j, l in enumerate(ls):
            sb[j] += f(l, l)
    return cross / np.sqrt(sa[:, None] * sb[None, :])


def center_unbiased_fast(k):
    """The same U-centering as center_unbiased, vectorised (row sums r, column sums c of
    the zero-diagonal K̃, total S): Û = K̃ − r/(n−2) − c/(n−2) + S/((n−1)(n−2)), Û_ii = 0."""
    n = k.shape[0]
    kt = np.array(k, dtype=np.float64)
    np.fill_diagonal(kt, 0)
    r, c = kt.sum(1), kt.sum(0)
    u = kt - r[:, None] / (n - 2) - c[None, :] / (n - 2) + kt.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0)
    return u
