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
