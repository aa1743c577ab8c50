"""Native CPU backend vs the torch backend, float32, same run (docs/design.md §2 floors).

(a) centered Gram + U-centering of one layer, n=512, d=32768 (SYRK: n²d flops);
(b) pair stage, 48 layers × n=512 (rows against themselves: one SYRK of packed rows);
(c) MinibatchCKA.update end to end, 24 + 24 layers, n=256, d=16384.

Run: python -m pytest bench/bench_native.py --benchmark-only --benchmark-columns=min,median,rounds
"""
import pytest
import torch

import flashcka
from flashcka.backends import get

pytestmark = pytest.mark.native
BACKENDS = ["torch", "native"]


def _skip_unusable(name):
    ok, why = get(name).usable()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(0)
    return torch.randn(512, 32768, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_ucenter_n512_d32768(benchmark, backend, layer):
    _skip_unusable(backend)
    be = get(backend)
    mu = layer.mean(0)
    out = torch.empty(be.row_length(512, True))
    benchmark.extra_info["gflop_syrk"] = 512 * 512 * 32768 / 1e9
    benchmark.pedantic(be.centered_gram_row, args=(layer, mu, out),
                       kwargs=dict(kernel="linear", sigma=None, threshold=1.0, unbiased=True),
                       rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pair_48_layers_n512(benchmark, backend):
    _skip_unusable(backend)
    be = get(backend)
    g = torch.randn(48, be.row_length(512, True), generator=torch.Generator().manual_seed(1))
    benchmark.pedantic(be.pair, args=(g, g), rounds=5, warmup_rounds=1)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(256, 16384, generator=g) for _ in range(24)]
    ys = [torch.randn(256, 64, 256, generator=g) for _ in range(24)]  # (n, T, C) tokens
    return xs, ys


@pytest.mark.parametrize("backend", BACKENDS)
def test_minibatch_update_24x24_n256_d16384(benchmark, backend, batch):
    _skip_unusable(backend)
    xs, ys = batch
    m = flashcka.MinibatchCKA(24, 24, backend=backend)
    benchmark.pedantic(m.update, args=(xs, ys), rounds=3, warmup_rounds=1)
