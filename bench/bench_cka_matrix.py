"""All-pairs CKA vs the Grams alone (issue 2's proof that no Gram is computed per pair).

On 24 layers of n = 256, d = 16384 (float32) ``cka_matrix`` should cost at most 1.3× the
time of computing the 24 Gram matrices with ``torch.matmul`` — everything beyond the Grams
(centering, the 24×24 pair product) rides along. Compare the medians of
``test_cka_matrix_all_pairs[<backend>-cpu]`` and ``test_grams_matmul_reference``.
"""
from __future__ import annotations

import pytest
import torch

import flashcka


def _layers(quick: bool, device: str):
    L, n, d = (4, 64, 512) if quick else (24, 256, 16384)
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, d, generator=g) + 1.0).to(device) for _ in range(L)]


def test_grams_matmul_reference(benchmark, timeit, report, target, quick):
    """The yardstick: the L Gram matrices alone, ``x @ x.T`` each (2n²d flops as GEMM)."""
    if target.backend != "torch":
        pytest.skip("reference GEMMs are backend-independent: timed once, under torch")
    xs = _layers(quick, target.device)
    timeit(lambda: [x @ x.T for x in xs])
    L, (n, d) = len(xs), xs[0].shape
    report(flops=L * 2 * n * n * d, L=L, n=n, d=d, op="L x torch.matmul(X, X.T)")


def test_cka_matrix_all_pairs(benchmark, timeit, report, target, quick):
    """``cka_matrix(xs)`` for every pair of L layers: L fused Grams + one pair product."""
    xs = _layers(quick, target.device)
    out = timeit(lambda: flashcka.cka_matrix(xs, backend=target.backend, route="gram"))
    L, (n, d) = len(xs), xs[0].shape
    assert out.shape == (L, L)
    report(flops=L * n * n * d + 2 * L * L * n * n, L=L, n=n, d=d, op="cka_matrix(xs)")
