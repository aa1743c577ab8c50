"""flashcka.analysis at realistic sizes (small ones under --quick): the studies of issue 11.

Each case records the device, versions and commit (bench/conftest.py) and the sizes.
"""
from __future__ import annotations

import pytest
import torch

from conftest import device_name, git_commit, versions
from flashcka import analysis


def _run(benchmark, fn, *args, rounds=3, **extra):
    out = benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(extra, device=device_name("cpu"), commit=git_commit(),
                                **versions())
    return out


def test_vit_cnn_summary(benchmark, quick):
    """Summaries of three heatmaps: ViT-L/16 with sub-layers (~96) vs a ResNet-152 (~155)."""
    lv, lc = (12, 9) if quick else (96, 155)
    g = torch.Generator().manual_seed(0)
    vv, cc, vc = (torch.rand(a, b, generator=g, dtype=torch.float64)
                  for a, b in ((lv, lv), (lc, lc), (lv, lc)))
    s = _run(benchmark, analysis.vit_cnn_summary, vv, cc, vc, layers_vit=lv, layers_cnn=lc)
    assert len(s["best_match"]["index"]) == lv


def test_information_imbalance(benchmark, quick):
    """Δ both ways for every pair of 12 + 12 layers of n = 2000 pooled features (d = 768)."""
    la, lb, n, d = (3, 2, 64, 32) if quick else (12, 12, 2000, 768)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 16, generator=g)
    xs = [torch.tanh(z @ torch.randn(16, d, generator=g)) for _ in range(la)]
    ys = [z @ torch.randn(16, d, generator=g) + torch.randn(n, d, generator=g)
          for _ in range(lb)]
    fwd, _ = _run(benchmark, analysis.information_imbalance, xs, ys, rounds=1 if not quick else 3,
                  layers=la + lb, n=n, d=d, k=1,
                  gram_flops=2.0 * (la + lb) * n * n * d)
    assert fwd.shape == (la, lb)


def test_image_statistics(benchmark, quick):
    """Reference statistics of 256 ImageNet-sized images (3 × 224 × 224)."""
    n, s = (8, 32) if quick else (256, 224)
    x = torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(0))
    st = _run(benchmark, analysis.image_statistics, x, n=n, image=s)
    assert st["spectrum"].shape == (n, 8)


def test_trajectory(benchmark, quick):
    """Trajectories of 6 models (all 15 pairs + 6 self-similarities, 50 layers each)."""
    m, L = (3, 5) if quick else (6, 50)
    g = torch.Generator().manual_seed(0)
    res = {(f"m{a}", f"m{b}"): torch.rand(L, L, generator=g, dtype=torch.float64)
           for a in range(m) for b in range(a, m)}
    out = _run(benchmark, analysis.trajectory, res, models=m, layers=L)
    assert len(out["distance"]) == m * (m - 1) // 2


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_cross_dataset_consistency(benchmark, quick, method):
    """8 datasets × 50 models (1225 model pairs), 1000 bootstrap draws."""
    d, m, boots = (3, 6, 20) if quick else (8, 50, 1000)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(m, m, generator=g, dtype=torch.float64)
    mats = [base + 0.2 * torch.rand(m, m, generator=g, dtype=torch.float64) for _ in range(d)]
    out = _run(benchmark, analysis.cross_dataset_consistency, mats, method, rounds=1,
               n_boot=boots, datasets=d, models=m)
    assert out["correlation"].shape == (d, d)


@pytest.mark.parametrize("measure", ["l1", "cosine"])
def test_fuzzy_rand_index(benchmark, quick, measure):
    """n = 50,000 points, 20 concepts in A and 30 in B (1.25e9 point pairs, tiled)."""
    import resource
    n, ca, cb = (500, 5, 7) if quick else (50_000, 20, 30)
    g = torch.Generator().manual_seed(0)
    u = torch.softmax(3 * torch.randn(n, ca, generator=g), 1)
    v = torch.softmax(3 * torch.randn(n, cb, generator=g), 1)
    r = _run(benchmark, analysis.concept_pair_disagreement, u, v, rounds=1, measure=measure,
             n=n, concepts_a=ca, concepts_b=cb, point_pairs=n * (n - 1) // 2)
    benchmark.extra_info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 0 <= r["index"] <= 1


@pytest.mark.parametrize("method", ["correlation", "wpmi"])
def test_neuron_labels(benchmark, quick, method):
    """ViT-B-like: 12 layers × 768 units, 10,000 stimuli in batches of 250, 2,000 concepts."""
    layers, units, n, b, C = (2, 16, 64, 16, 10) if quick else (12, 768, 10_000, 250, 2_000)
    g = torch.Generator().manual_seed(0)
    acts = [[torch.randn(b, units, generator=g) for _ in range(layers)] for _ in range(n // b)]
    concepts = [torch.rand(b, C, generator=g) for _ in range(n // b)]

    def run():
        lab = analysis.NeuronLabeler(C, method, top_k=min(100, n))
        for a, c in zip(acts, concepts):
            lab.update({f"l{i}": t for i, t in enumerate(a)}, c)
        return lab.compute()

    out = _run(benchmark, run, rounds=1, layers=layers, units=units, n=n, concepts=C,
               batch=b, update_flops=2.0 * n * units * C * layers if method == "correlation"
               else None)
    assert len(out) == layers
