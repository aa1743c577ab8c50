"""Kornblith et al. 2019's demo functions on flashcka (numpy in, numpy out).

The functions of "Similarity of Neural Network Representations Revisited" (ICML 2019),
google-research/representation_similarity/Demo.ipynb, with the same names, arguments,
defaults and results (float64: equal to the original to ~1e-15 relative)::

    from flashcka.compat.kornblith import cka, gram_linear, feature_space_linear_cka

Shapes: features ``(n, d)`` (``(n, ...)`` is flattened to ``(n, d)``; the original's
``x.dot(x.T)`` raises there, or gives an (n, T, T, n) array when T == C), Grams ``(n, n)``. Arrays keep
their float dtype (float32 stays float32; other dtypes become float64); CKA values are numpy
float64 scalars.

Differences from the original, all on inputs where it returns a meaningless number:

* ``gram_rbf`` raises ``ValueError`` when the median squared distance is 0 but some
  distance is not (at least half the pairs are repeated samples; the original divides by
  0); when every row is identical it returns the matrix of ones, which every bandwidth
  gives (the original: NaN from 0/0). Squared distances are computed from centered features and clipped at 0
  (the original's diagonal is rounding noise, not exactly 0: the median can move by ~1 ulp).
* ``center_gram(..., unbiased=True)`` and ``cka(..., debiased=True)`` need n >= 4 (the
  U-statistic divides by n − 3); non-finite input raises ``ValueError`` (the original
  propagates NaN).
* ``center_gram`` subtracts row and column means separately; the original subtracts the
  column means from both sides. They agree exactly for a symmetric Gram and differ by at
  most the asymmetry that ``np.allclose`` tolerates otherwise.
* A zero-variance representation gives NaN with a ``FlashCKAWarning`` (the original: NaN
  with numpy's division warning).
"""
from __future__ import annotations

import numpy as np
import torch

from ..measures import cka as functional

__all__ = ["gram_linear", "gram_rbf", "center_gram", "cka", "feature_space_linear_cka"]


def _tensor(a, arg: str) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a)):
            raise TypeError(f"{arg} must hold real numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(a))


def gram_linear(x):
    """Linear Gram ``x xᵀ`` of features x (n, d) -> (n, n)."""
    t = _tensor(x, "x")
    return functional.gram(t, "linear", dtype=t.dtype).numpy()


def gram_rbf(x, threshold=1.0):
    """RBF Gram ``exp(−D / (2 · threshold² · median(D)))`` of x (n, d) -> (n, n), D the n × n
    squared Euclidean distances, the median over all n² entries (zeros of the diagonal
    included), as numpy.median computes it. A zero median raises ValueError, unless all
    rows are identical (then D = 0 and the result is all ones for any bandwidth)."""
    t = _tensor(x, "x")
    return functional.gram(t, "rbf", threshold=threshold, dtype=t.dtype).numpy()


def center_gram(gram, unbiased=False):
    """Center a symmetric Gram (n, n): ``HKH`` (biased) or its U-centered form (Székely &
    Rizzo 2014; ``unbiased=True``, n >= 4, zero diagonal). ValueError if ``gram`` is not
    symmetric (``np.allclose(gram, gram.T)``, as the original)."""
    g = np.asarray(gram)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or not np.allclose(g, g.T):
        raise ValueError("Input must be a symmetric matrix.")
    return functional.center(_tensor(g, "gram").clone(), unbiased=unbiased).numpy()


def cka(gram_x, gram_y, debiased=False):
    """CKA of two Grams (n, n): ``⟨K_c, L_c⟩_F / (‖K_c‖_F ‖L_c‖_F)`` with K_c, L_c centered
    by ``center_gram`` (HSIC's 1/(n−1)² or 1/(n(n−3)) cancels). numpy float64 scalar."""
    kc = torch.from_numpy(center_gram(gram_x, unbiased=debiased)).to(torch.float64)
    lc = torch.from_numpy(center_gram(gram_y, unbiased=debiased)).to(torch.float64)
    if kc.shape != lc.shape:
        raise ValueError(f"gram_x is {tuple(kc.shape)} but gram_y is {tuple(lc.shape)}")
    den = torch.linalg.norm(kc) * torch.linalg.norm(lc)
    if not bool(den > 0):
        import warnings
        from .._warning import FlashCKAWarning
        warnings.warn("CKA is undefined: a centered Gram is zero (zero-variance "
                      "representation); returning NaN", FlashCKAWarning, stacklevel=2)
        return np.float64("nan")
    return np.float64(float(torch.dot(kc.reshape(-1), lc.reshape(-1)) / den))


def feature_space_linear_cka(features_x, features_y, debiased=False):
    """Linear CKA from features x (n, d_x), y (n, d_y) without any n × n Gram:
    ``‖X_cᵀY_c‖²_F / (‖X_cᵀX_c‖_F ‖Y_cᵀY_c‖_F)`` on centered features; ``debiased`` uses
    Kornblith et al.'s unbiased dot-product similarity (appendix). numpy float64 scalar."""
    x, y = _tensor(features_x, "features_x"), _tensor(features_y, "features_y")
    out = functional.cka_matrix([x], [y], unbiased=debiased, route="feature")
    return np.float64(float(out[0, 0]))
