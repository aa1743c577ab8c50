"""Pair stage (docs/design.md §2): every cross HSIC of one minibatch is ``G_A G_Bᵀ`` over the
stacked centered-Gram rows, ``2·L_A·L_B·m`` flops reading each row once — memory-bound
unless L is large. Records GB/s of rows read and GFLOP/s."""
from __future__ import annotations

import torch

from flashcka import backends


def test_pair(benchmark, timeit, report, target, dtype, pair_shape):
    la, lb, n = pair_shape
    be = backends.get(target.backend)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    m = be.row_length(n, True)
    g = torch.Generator().manual_seed(0)
    ga = torch.randn(la, m, generator=g, dtype=ct).to(target.device)
    gb = torch.randn(lb, m, generator=g, dtype=ct).to(target.device)
    out = timeit(be.pair, ga, gb)
    assert out.shape == (la, lb)
    item = ga.element_size()
    report(bytes_read=(la + lb) * m * item, flops=2 * la * lb * m, L_A=la, L_B=lb, n=n,
           row_length=m, dtype=str(ct), op="pair")
