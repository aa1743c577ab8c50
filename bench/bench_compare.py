"""``flashcka.compare`` end to end (issue 8 and 10 measures).

* ``test_compare_vit_resnet``: the demo's small ViT and ResNet (flashcka.models): hooks,
  forward passes, one fused Gram per hooked output, the pair stage per batch; time per
  call, with the two forward passes alone timed in the same run (``ratio_to_forward``:
  the issue-8 target is <= 1.10).
* ``test_hook_overhead``: many cheap hooked layers (L parallel ``nn.Linear(8, 8)``, n = 16):
  ``us_per_layer_batch`` = (compare − forward) / (L · batches), and the same with the Gram
  and the pair stage stubbed out (``hooks_us_per_layer_batch``: hooks, validation and
  bookkeeping alone; target < 50 µs).
* ``test_compiled_model``: a ``torch.compile``'d ViT alone vs under ``compare`` (not in
  ``--quick``: compiling takes tens of seconds).
* ``test_many_modules_memory``: one ``compare`` over ~1,000 hook points (every module of
  the blocks of a ViT-L-wide model of 48 blocks, inputs and outputs) at small n: peak RSS above the
  loaded model, against the plain forward pass's own peak and the row buffer L·m.
Models are untrained (the work does not depend on the weights).
"""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import flashcka
from conftest import repeat_times

models = pytest.importorskip("flashcka.models", reason="flashcka.models (the demo's "
                             "small ViT/ResNet) is not there")
_compare = getattr(flashcka, "compare", None)
if not callable(_compare):
    pytest.skip("flashcka.compare() is not there", allow_module_level=True)


@pytest.fixture
def compare_size(quick):
    return (64, 2) if quick else (256, 4)   # (batch size n, batches)


def _best(fn, repeat=3):
    """Best wall time of ``repeat`` calls after one warm-up call."""
    return min(repeat_times(fn, repeat))


def _forward_all(models_, loader):
    def run():
        with torch.no_grad():
            for x in loader:
                for m in models_:
                    m(x)
    return run


def _auto_only(target):
    """Cases measured on the backend ``auto`` picks for the target's device only."""
    auto = flashcka.backends.select("auto", torch.empty(4, 4, device=target.device))
    if target.backend != auto.name:
        pytest.skip(f"measured on the auto backend ({auto.name}) only")


def test_compare_vit_resnet(benchmark, timeit, report, target, compare_size):
    n, batches = compare_size
    torch.manual_seed(0)
    vit = models.TinyViT().to(target.device).eval()
    resnet = models.TinyResNet().to(target.device).eval()
    g = torch.Generator().manual_seed(0)
    loader = [torch.randn(n, 1, 8, 8, generator=g).to(target.device) for _ in range(batches)]
    forward = _best(_forward_all([vit, resnet], loader))
    res = timeit(lambda: _compare(vit, resnet, loader, progress=False, jackknife=False,
                                  backend=target.backend))
    shape = tuple(res.matrix.shape)
    assert len(shape) == 2 and bool(torch.isfinite(res.matrix).all())
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None and getattr(stats, "stats", None) else None
    report(n=n, batches=batches, samples=n * batches, cka_shape=str(shape),
           op="compare(TinyViT, TinyResNet)", forward_s=round(forward, 5),
           ratio_to_forward=round(median / forward, 3) if median else None)


# ---------------------------------------------------------------- hooks and bookkeeping
class _Parallel(nn.Module):
    """L cheap layers, each on the input (a deep chain of them would collapse to a
    constant and be all zero-variance warnings)."""

    def __init__(self, L, d):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d) for _ in range(L)])

    def forward(self, x):
        return [lin(x) for lin in self.layers]


def test_hook_overhead(benchmark, timeit, report, target, quick, monkeypatch):
    _auto_only(target)
    L, n, d, batches = (100, 16, 8, 2) if quick else (1000, 16, 8, 5)
    torch.manual_seed(0)
    model = _Parallel(L, d).to(target.device).eval()
    loader = [torch.randn(n, d, device=target.device) for _ in range(batches)]

    def run():
        return _compare(model, None, loader, layers_a=nn.Linear, progress=False,
                        jackknife=False, backend=target.backend)
    forward = _best(_forward_all([model], loader))
    res = timeit(run)
    assert res.matrix.shape == (L, L)
    # the same with the Gram and the pair stage stubbed: hooks, validation, bookkeeping
    from flashcka.core import engine as _engine
    from flashcka.core.minibatch import MinibatchCKA
    one = torch.ones((), dtype=torch.float64)

    def add_rows(self, be, ra, rb, n_, ct, **kw):
        self.num_batches += 1
        self.num_samples += n_
    monkeypatch.setattr(_engine, "gram_row", lambda *a, **k: (one, one))
    monkeypatch.setattr(MinibatchCKA, "add_rows", add_rows)
    monkeypatch.setattr(MinibatchCKA, "compute", lambda self: torch.zeros(
        self.num_layers_a, self.num_layers_b, dtype=torch.float64))
    hooks_only = _best(run)
    monkeypatch.undo()
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None and getattr(stats, "stats", None) else None
    per = L * batches * 1e-6
    report(L=L, n=n, d=d, batches=batches, op="compare(L parallel Linear(8, 8))",
           forward_us_per_layer_batch=round(forward / per, 1),
           us_per_layer_batch=round((median - forward) / per, 1) if median else None,
           hooks_us_per_layer_batch=round((hooks_only - forward) / per, 1))


# ---------------------------------------------------------------- torch.compile
def test_compiled_model(benchmark, timeit, report, target, quick):
    _auto_only(target)
    if quick:
        pytest.skip("torch.compile takes tens of seconds: measured without --quick")
    n, batches = 64, 3
    torch.manual_seed(0)
    vit = models.TinyViT(image=16, patch=2, dim=128, depth=6).to(target.device).eval()
    compiled = torch.compile(vit)
    g = torch.Generator().manual_seed(0)
    loader = [torch.randn(n, 1, 16, 16, generator=g).to(target.device) for _ in range(batches)]
    eager = _best(_forward_all([vit], loader))
    alone = _best(_forward_all([compiled], loader))           # first call compiles
    res = timeit(lambda: _compare(compiled, None, loader, layers_a="sublayers",
                                  progress=False, jackknife=False, backend=target.backend))
    plain = _compare(vit, None, loader, layers_a="sublayers", progress=False, jackknife=False,
                     backend=target.backend)
    torch.testing.assert_close(res.matrix, plain.matrix, rtol=0, atol=1e-5, equal_nan=True)
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None and getattr(stats, "stats", None) else None
    report(n=n, batches=batches, layers=len(res.names_a), op="compare(torch.compile(TinyViT))",
           eager_forward_s=round(eager, 5), compiled_forward_s=round(alone, 5),
           ratio_to_compiled_forward=round(median / alone, 3) if median else None,
           ratio_to_eager_forward=round(median / eager, 3) if median else None)


# ---------------------------------------------------------------- ~1,000 hook points
def _peak_rss_kib() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def test_many_modules_memory(benchmark, report, target, quick):
    _auto_only(target)
    if target.device != "cpu" or _peak_rss_kib() is None or not _reset_peak():
        pytest.skip("peak RSS is measured through /proc on the CPU only")
    dim, depth, n = (64, 4, 16) if quick else (1024, 48, 32)   # ViT-L width, 48 blocks
    torch.manual_seed(0)
    vit = models.TinyViT(image=16, patch=4, dim=dim, depth=depth, heads=16).eval()
    x = torch.randn(n, 1, 16, 16)
    loader = [x, x.clone()]
    spec = ["blocks.**", "blocks.**:input"]
    model_bytes = sum(p.numel() * p.element_size() for p in vit.parameters())

    def peak_above(fn):
        import gc
        gc.collect()
        base = _rss_kib()
        _reset_peak()
        out = fn()
        return out, (_peak_rss_kib() - base) * 1024

    _, forward_peak = peak_above(_forward_all([vit], loader))
    t = time.perf_counter()
    res, compare_peak = peak_above(lambda: benchmark.pedantic(
        _compare, (vit, None, loader), dict(layers_a=spec, progress=False, jackknife=False,
                                            backend=target.backend),
        rounds=1, iterations=1, warmup_rounds=0))
    seconds = time.perf_counter() - t
    L = len(res.names_a)
    m = flashcka.backends.get(res.settings["backend"]).row_length(n, True)
    rows_bytes = L * m * 4
    benchmark.extra_info.update(
        L=L, n=n, dim=dim, depth=depth, op="compare(ViT-shaped, every block module in+out)",
        seconds=round(seconds, 2), model_mb=round(model_bytes / 2**20, 1),
        forward_peak_mb=round(forward_peak / 2**20, 1),
        compare_peak_mb=round(compare_peak / 2**20, 1),
        rows_mb=round(rows_bytes / 2**20, 2),
        accumulators_mb=round(6 * L * L * 8 / 2**20, 1))
    # hook points: a tensor hooked under two names (a block's output and the next block's
    # input) is one row named "a = b" (hooks.py), so rows are fewer than the points hooked
    points = sum(name.count(" = ") + 1 for name in res.names_a)
    benchmark.extra_info.update(hook_points=points)
    report(L=L)
    assert points >= (80 if quick else 900)
