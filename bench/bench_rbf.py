"""RBF kernel stage: the linear Gram of centered features (n²d, SYRK floor), squared
distances, the median-heuristic bandwidth (a selection over n²/2 values) and exp, then
U-centering. Rates are given against ``flops_syrk = n²d``."""
from __future__ import annotations

import torch

import flashcka
from flashcka import backends


def _x(n, d, dtype, device):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, d, generator=g) + 0.5).to(dtype=dtype, device=device)


def test_rbf_gram_median(benchmark, timeit, report, target, dtype, rbf_shape):
    """Public ``gram(x, "rbf")`` with the median heuristic (sigma=None)."""
    n, d = rbf_shape
    x = _x(n, d, dtype, target.device)
    out = timeit(lambda: flashcka.gram(x, "rbf", backend=target.backend))
    assert out.shape == (n, n)
    report(flops=n * n * d, flops_syrk=n * n * d, n=n, d=d, dtype=str(dtype),
           op="gram[rbf, median]")


def test_rbf_centered_gram_row(benchmark, timeit, report, target, dtype, rbf_shape):
    """Fused path: the backend's ``centered_gram_row(kernel="rbf")`` (median bandwidth)."""
    n, d = rbf_shape
    x = _x(n, d, dtype, target.device)
    be = backends.get(target.backend)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty(be.row_length(n, True), dtype=ct, device=target.device)
    mu = x.mean(0, dtype=ct)
    timeit(lambda: be.centered_gram_row(x, mu, out, kernel="rbf", sigma=None, threshold=1.0,
                                        unbiased=True))
    report(flops=n * n * d, flops_syrk=n * n * d, n=n, d=d, dtype=str(dtype),
           op="centered_gram_row[rbf, median]")
