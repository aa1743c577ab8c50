"""``MinibatchCKA.update`` on one minibatch of L_A + L_B layers: one fused Gram per layer
(n²d each, SYRK floor) plus one pair product (2·L_A·L_B·n²). The issue's size: 24 + 24
layers, n = 256, d = 16384."""
from __future__ import annotations

import torch

import flashcka


def test_minibatch_update(benchmark, timeit, report, target, dtype, minibatch_shape):
    la, lb, n, d = minibatch_shape
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(n, 64, generator=g)

    def layer(i):  # correlated layers with non-zero means, like real activations
        w = torch.randn(64, d, generator=g) / 8
        x = latent @ w + 0.5 * torch.randn(n, d, generator=g) + (i % 5)
        return x.to(dtype=dtype, device=target.device)

    xs = [layer(i) for i in range(la)]
    ys = [layer(i) for i in range(lb)]
    acc = flashcka.MinibatchCKA(la, lb, backend=target.backend)
    timeit(acc.update, xs, ys)
    cka = acc.compute()
    assert cka.shape == (la, lb) and bool(torch.isfinite(cka).all())
    flops = (la + lb) * n * n * d + 2 * la * lb * n * n
    report(flops=flops, flops_syrk=(la + lb) * n * n * d, L_A=la, L_B=lb, n=n, d=d,
           dtype=str(dtype), op="MinibatchCKA.update")
