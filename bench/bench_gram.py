"""Gram + centering stage (docs/design.md §2): about n²d flops per layer when one triangle is
computed (SYRK), 2n²d as a plain GEMM. Every case records ``flops_syrk = n²d`` and the rate
achieved against it (GFLOP/s), so a symmetric kernel can show up to 2× over the
``torch.matmul(X, X.T)`` reference case."""
from __future__ import annotations

import pytest
import torch

import flashcka
from flashcka import backends


def _x(n, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + 0.5).to(dtype=dtype, device=device)


def test_gram_center(benchmark, timeit, report, target, dtype, gram_shape):
    """Public API, two calls: ``center(gram(x))`` (U-centering), reading x once."""
    n, d = gram_shape
    x = _x(n, d, dtype, target.device)
    b = target.backend
    out = timeit(lambda: flashcka.center(flashcka.gram(x, backend=b), unbiased=True, backend=b))
    assert out.shape == (n, n)
    report(flops=n * n * d, flops_syrk=n * n * d, n=n, d=d, dtype=str(dtype), op="gram+center")


def test_centered_gram_row(benchmark, timeit, report, target, dtype, gram_shape):
    """The fused path: the backend's ``centered_gram_row`` (mean-subtract, Gram, U-center,
    written once in the backend's row layout)."""
    n, d = gram_shape
    x = _x(n, d, dtype, target.device)
    be = backends.get(target.backend)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty(be.row_length(n, True), dtype=ct, device=target.device)
    mu = x.mean(0, dtype=ct)
    timeit(lambda: be.centered_gram_row(x, mu, out, kernel="linear", sigma=None,
                                        threshold=1.0, unbiased=True))
    report(flops=n * n * d, flops_syrk=n * n * d, n=n, d=d, dtype=str(dtype),
           op="centered_gram_row")


def test_cka_matrix_gram_route(benchmark, timeit, report, target, dtype, gram_shape):
    """``cka_matrix([x, y], route="gram")``: two fused Grams + one 2×2 pair product."""
    n, d = gram_shape
    xs = [_x(n, d, dtype, target.device, seed) for seed in (1, 2)]
    out = timeit(lambda: flashcka.cka_matrix(xs, route="gram", backend=target.backend))
    assert out.shape == (2, 2)
    report(flops=2 * n * n * d, flops_syrk=2 * n * n * d, n=n, d=d, dtype=str(dtype),
           op="cka_matrix[gram route]")


def test_matmul_reference(benchmark, timeit, report, target, dtype, gram_shape):
    """The floor's yardstick: plain ``torch.matmul(X, X.T)`` (2n²d flops as GEMM, rate given
    against n²d like the others so the numbers compare directly)."""
    if target.backend != "torch":
        pytest.skip("reference GEMM is backend-independent: timed once, under torch")
    n, d = gram_shape
    x = _x(n, d, dtype, target.device)
    timeit(lambda: x @ x.T)
    report(flops=n * n * d, flops_syrk=n * n * d, n=n, d=d, dtype=str(dtype),
           op="torch.matmul(X, X.T)")
