"""``flashcka.compare`` end to end on the demo's small ViT and ResNet (flashcka.models):
hooks, forward passes, one fused Gram per hooked output, the pair stage per batch. Time
per call of ``compare`` over a fixed number of batches; the models are untrained (the
work does not depend on the weights)."""
from __future__ import annotations

import pytest
import torch

import flashcka

models = pytest.importorskip("flashcka.models", reason="flashcka.models (the demo's "
                             "small ViT/ResNet) is not there")
_compare = getattr(flashcka, "compare", None)
if not callable(_compare):
    pytest.skip("flashcka.compare() is not there", allow_module_level=True)


@pytest.fixture
def compare_size(quick):
    return (64, 2) if quick else (256, 4)   # (batch size n, batches)


def test_compare_vit_resnet(benchmark, timeit, report, target, compare_size):
    n, batches = compare_size
    torch.manual_seed(0)
    vit = models.TinyViT().to(target.device)
    resnet = models.TinyResNet().to(target.device)
    g = torch.Generator().manual_seed(0)
    loader = [torch.randn(n, 1, 8, 8, generator=g).to(target.device) for _ in range(batches)]
    res = timeit(lambda: _compare(vit, resnet, loader, progress=False,
                                  backend=target.backend))
    shape = tuple(res.matrix.shape)
    assert len(shape) == 2 and bool(torch.isfinite(res.matrix).all())
    report(n=n, batches=batches, samples=n * batches, cka_shape=str(shape),
           op="compare(TinyViT, TinyResNet)")
