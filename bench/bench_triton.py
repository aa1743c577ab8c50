"""Triton backend on a CUDA GPU (skipped without one): the floors of docs/design.md §2.

* ``test_gram_centering``: one layer's centered Gram row (fused centering, upper triangle,
  U-centering epilogue, packed row) for n ∈ {256, 1024}, d ∈ {16384, 151296} in fp32,
  tf32 and bf16, against the torch backend (``torch.matmul(x, x.T)`` + torch centering,
  with torch's TF32 switch matching). extra_info: achieved TFLOP/s counted as the GEMM's
  2n²d (so both impls are on one scale; the Triton kernel does ≈ n²d of it).
* ``test_pair_1000``: the pair stage for 1000 × 1000 layers of n = 256, GB/s of rows read
  against a measured device copy bandwidth.
* ``test_minibatch_update``: ``MinibatchCKA.update`` for 12 × (256, 197, 768) bf16 (ViT-B
  tokens) and 16 ResNet-50 bottleneck outputs (256, C, H, W) bf16, triton vs torch.

Run: ``pytest bench/bench_triton.py --benchmark-json=...`` (bench/gpu.sh does it all).
"""
from __future__ import annotations

import importlib

import pytest
import torch

import flashcka
from flashcka import backends

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
_conf = importlib.import_module("conftest")  # bench/conftest.py: provenance helpers
ROUNDS = dict(rounds=5, iterations=1, warmup_rounds=2)  # warm-up includes Triton's JIT


def _time(benchmark, fn, *args):
    def call():
        out = fn(*args)
        torch.cuda.synchronize()
        return out
    return benchmark.pedantic(call, **ROUNDS)


def _record(benchmark, impl, *, flops=None, bytes_read=None, **extra):
    info = benchmark.extra_info
    info.update(extra, impl=impl, device=_conf.device_name("cuda"),
                commit=_conf.git_commit(), **_conf.versions())
    median = benchmark.stats.stats.median
    if flops is not None:
        info["flops"] = flops
        info["tflops_per_s"] = round(flops / median / 1e12, 3)
    if bytes_read is not None:
        info["bytes_read"] = bytes_read
        info["gbytes_per_s"] = round(bytes_read / median / 1e9, 1)


@pytest.fixture(scope="module")
def copy_gbytes_per_s() -> float:
    """Device copy bandwidth (bytes read + written per second) over 1 GiB, best of 5."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return round(2 * src.numel() * 4 / best / 1e9, 1)


@pytest.fixture
def tf32_switch():
    """Restore torch's TF32 matmul switch after a case that flips it."""
    old = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("mode", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("d", [16384, 151296])
@pytest.mark.parametrize("n", [256, 1024])
def test_gram_centering(benchmark, tf32_switch, n, d, mode, impl):
    x = torch.randn(n, d, device="cuda") + 2
    if mode == "bf16":
        x = x.to(torch.bfloat16)
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    if impl == "triton":
        from flashcka.backends.triton_backend import TritonBackend
        be = TritonBackend(allow_tf32=mode == "tf32")
    else:
        be = backends.get("torch")
    mu = x.mean(0, dtype=torch.float32)
    out = torch.empty(be.row_length(n, True), dtype=torch.float32, device="cuda")
    _time(benchmark, lambda: be.centered_gram_row(x, mu, out, kernel="linear", sigma=None,
                                                  threshold=1.0, unbiased=True))
    _record(benchmark, impl, flops=2 * n * n * d, bytes_read=x.numel() * x.element_size(),
            n=n, d=d, mode=mode, op="centered_gram_row")


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_pair_1000(benchmark, copy_gbytes_per_s, impl):
    L, n = 1000, 256
    be = backends.get(impl)
    m = be.row_length(n, True)
    g = torch.randn(2 * L, m, device="cuda")
    ga, gb = g[:L], g[L:]
    _time(benchmark, be.pair, ga, gb)
    _record(benchmark, impl, flops=2 * L * L * m, bytes_read=2 * L * m * 4, L_A=L, L_B=L,
            n=n, row_length=m, copy_gbytes_per_s=copy_gbytes_per_s, op="pair")


def _resnet50_shapes(batch: int):
    """The 16 bottleneck outputs of ResNet-50 (stages of 3, 4, 6, 3 blocks), NCHW."""
    stages = [(3, 256, 56), (4, 512, 28), (6, 1024, 14), (3, 2048, 7)]
    return [(batch, c, s, s) for blocks, c, s in stages for _ in range(blocks)]


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("model", ["vit_b_12x256x197x768", "resnet50_16x256"])
def test_minibatch_update(benchmark, model, impl):
    if model.startswith("vit"):
        shapes = [(256, 197, 768)] * 12
    else:
        shapes = _resnet50_shapes(256)
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(s, device="cuda", generator=g, dtype=torch.bfloat16) for s in shapes]
    acc = flashcka.MinibatchCKA(len(xs), backend=impl)
    _time(benchmark, acc.update, xs)
    flops = sum(2 * s[0] ** 2 * x[0].numel() for s, x in zip(shapes, xs))
    _record(benchmark, impl, flops=flops,
            bytes_read=sum(x.numel() * x.element_size() for x in xs),
            model=model, layers=len(xs), op="MinibatchCKA.update",
            peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))
