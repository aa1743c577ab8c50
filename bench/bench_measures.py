"""``similarity_matrix`` with the subspace measures (Procrustes, CCA, SVCCA, PWCCA, linreg)
on L × L layers of n samples, widths geometric 64..d_max, float32 inputs (float64 inside).
The issue's size: 12 × 12 layers, n = 2,000, d ≤ 1024; the comparison with netrep and
anatome on that job is bench/peers/measures_peers.py (bench/results/*/measures.md)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import flashcka

MEASURES = ("procrustes", "cca", "svcca", "pwcca", "linreg")
# (L, n, d_max): quick, full
SHAPES = {True: (3, 128, 32), False: (12, 2000, 1024)}


def job(layers: int, n: int, d_max: int):
    rng = np.random.default_rng(0)
    widths = np.geomspace(min(64, d_max), d_max, layers).round().astype(int)
    z = rng.standard_normal((n, 48))

    def side():
        return [torch.tensor(np.tanh(z @ rng.standard_normal((48, d)) / 4)
                             + 0.5 * rng.standard_normal((n, d)) + rng.uniform(-2, 2, d),
                             dtype=torch.float32) for d in widths]
    return side(), side(), widths


@pytest.mark.parametrize("measure", MEASURES)
def test_subspace_measures(benchmark, rounds, quick, measure):
    layers, n, d_max = SHAPES[quick]
    xs, ys, widths = job(layers, n, d_max)
    out = benchmark.pedantic(flashcka.similarity_matrix, args=(xs, ys),
                             kwargs={"measure": measure, "progress": False},
                             **({"rounds": 1, "iterations": 1, "warmup_rounds": 0}
                                if not quick else rounds))
    assert out.shape == (layers, layers) and bool(torch.isfinite(out).all())
    benchmark.extra_info.update(measure=measure, L=layers, n=n, widths=widths.tolist(),
                                input_dtype="float32", compute_dtype="float64")
