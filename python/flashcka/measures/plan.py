"""``flashcka.plan``: what a ``cka_matrix`` call will cost before it starts, per route."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .. import backends
from ..core import feature as _feature, sources as _sources, tiled as _tiled
from ..core import validate as _validate
from ..core.engine import Settings
from . import tiled_route as _tiled_route


@dataclass
class RouteCost:
    """One route's estimate: working memory beyond the inputs (bytes), floating-point
    operations, and seconds at the measured GEMM rate (a lower bound: the floor)."""
    memory: int
    flops: float
    seconds: float
    passes: int = 1


@dataclass
class Plan:
    """The estimate ``plan`` returns: the route ``cka_matrix`` would take (``route``), the
    problem (n samples, L_A × L_B layers, compute dtype), the budget it was checked
    against, the GEMM rate measured on this machine just now (GFLOP/s), and a
    ``RouteCost`` per route that can run (``routes``). ``str(plan)`` is a table."""
    route: str
    n: int
    layers: tuple
    dtype: torch.dtype
    budget: int | None
    gflops: float
    routes: dict = field(default_factory=dict)
    tile: int = 0

    def __str__(self) -> str:
        gib = 2.0 ** 30
        lines = [f"cka_matrix of {self.layers[0]} x {self.layers[1]} layers, n = {self.n:,}, "
                 f"{str(self.dtype).rsplit('.', 1)[-1]}; GEMM {self.gflops:.0f} GFLOP/s here; "
                 f"budget {'unknown' if self.budget is None else f'{self.budget / gib:.2f} GiB'}",
                 f"{'route':8} {'memory':>12} {'TFLOP':>9} {'passes':>6} {'time >=':>10}"]
        for name, c in self.routes.items():
            mark = "  <- auto" if name == self.route else ""
            lines.append(f"{name:8} {c.memory / gib:9.2f} GiB {c.flops / 1e12:9.2f} "
                         f"{c.passes:6d} {_duration(c.seconds):>10}{mark}")
        return "\n".join(lines)


def plan(xs, ys=None, *, kernel: str = "linear", unbiased: bool = True,
         sigma: float | None = None, threshold: float = 1.0,
         dtype: torch.dtype | None = None, backend: str = "auto", route: str = "auto",
         max_memory: int | None = None) -> Plan:
    """Estimate a ``cka_matrix(xs, ys, ...)`` call (same arguments) without running it:
    the route it takes and, per route, its working memory, flops and time.

    Reads only shapes and dtypes (files: their headers). Flops: Gram route
    ``n²·Σd`` (one triangle per layer) ``+ L_A·L_B·n²`` (packed pair stage); tiled route
    the same per pass over the tiles (1, or 3 in float32 with the RBF median heuristic);
    feature route ``2n·Σd_A·Σd_B``. Time is flops at this machine's GEMM rate, measured
    here (a few matmuls in the compute dtype, ~0.1 s): a floor, not a promise.
    """
    s = Settings(kernel, unbiased, sigma, threshold)
    s.check()
    _validate.route_arg(route, kernel)
    sa = _sources.open_layers(xs, "xs")
    sb = None if ys is None else _sources.open_layers(ys, "ys")
    n = _sources.same_n([sa] + ([] if sb is None else [sb]))
    allsrc = sa + ([] if sb is None else sb)
    ct = _validate.compute_dtype([([torch.empty(0, dtype=src.dtype)], [src.name])
                                  for src in allsrc], dtype)
    device = allsrc[0].device
    same = sb is None
    da = [src.d for src in sa]
    db = da if same else [src.d for src in sb]
    la, lb = len(da), len(db)
    rate = _gemm_rate(ct, device)
    pair = la * lb * n * n
    syrk = n * n * (sum(da) + (0 if same else sum(db)))
    out: dict = {}
    be = backends.select(backend, torch.empty(1, 1, dtype=ct, device=device))
    gram_mem = _tiled_route.gram_bytes(be, n, la + (0 if same else lb), ct, unbiased)
    out["gram"] = RouteCost(gram_mem, syrk + pair, (syrk + pair) / rate)
    if kernel == "linear":
        f = 2 * n * sum(da) * sum(db)
        mem = ct.itemsize * n * (sum(da) + (0 if same else sum(db))) + 8 * sum(da) * sum(db)
        out["feature"] = RouteCost(mem, f, f / rate)
    passes = 1 + (2 if kernel == "rbf" and sigma is None else 0)
    dims = da + ([] if same else db)
    tile = _tiled.choose_tile(n, dims, ct)
    t = passes * syrk + pair
    out["tiled"] = RouteCost(_tiled.tiled_bytes(n, dims, ct), t, t / rate, passes)
    cap = _tiled_route.budget(max_memory, device)
    if route != "auto":
        chosen = route
    elif _tiled_route.needs_sources(xs) or (ys is not None and _tiled_route.needs_sources(ys)):
        chosen = "tiled"
    elif kernel == "linear" and backend in ("auto", "torch") and _feature.cheaper(
            da, db, n, same):
        chosen = "feature"
    else:
        chosen = "tiled" if cap is not None and gram_mem > cap else "gram"
    return Plan(chosen, n, (la, lb), ct, cap, rate / 1e9, out, tile)


def _gemm_rate(ct: torch.dtype, device: torch.device) -> float:
    """FLOP/s of a 1024 × 768 × 1024 matmul in ct on device, best of five after a warm-up."""
    a = torch.randn(1024, 768, dtype=ct, device=device)
    b = torch.randn(1024, 768, dtype=ct, device=device)
    a @ b.T
    best = math.inf
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b.T
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024 * 1024 * 768 / max(best, 1e-9)


def _duration(sec: float) -> str:
    if sec < 60:
        return f"{sec:.1f} s"
    if sec < 3600:
        return f"{sec / 60:.1f} min"
    return f"{sec / 3600:.1f} h"
