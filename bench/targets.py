"""Issue 8's CPU targets, one command each; prints ratio tables (markdown).

    python bench/targets.py gram  [--n 128 256 512 1024] [--d 256 1024 4096 16384 65536]
                                  [--layout nd tokens] [--dtype float32] [--budget 1.5]
    python bench/targets.py pair                     # pair stage vs the machine's GEMM rate
    python bench/targets.py all                      # both (the peers job: bench/peers)

gram: ``_engine.gram_row`` on the native backend (column means, Gram, U-centering and
packing of one layer, as the hooks call it) against ``torch.matmul(x, x.T)`` in the same
dtype (after ``reshape(n, -1)`` for the (n, T, C) layout, which copies, as a user must).
The (n, T, C) input is ``(n, T + 1, C)[:, 1:]`` (CLS token dropped: no merge to (n, d)).
Target: ratio = t(matmul) / t(native) >= 1.4 everywhere.

pair: ``native.pair(G, G)`` and ``native.pair(G_A, G_B)`` on packed rows against the GEMM
rate of ``torch.matmul`` on square 2048 matrices, measured in the same run, warm (rows in
cache) and cold (caches flushed), the cold ones also against the memory roofline. Target:
the pair stage's rate (2·L_A·L_B·m flops, the GEMM-equivalent count) >= 80% of it.

Timings are interleaved (native, torch, native, ...) and the median of each is taken,
so that load from other processes hits both sides alike; every table says the device,
versions, thread count, OpenBLAS core and the commit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import flashcka
from flashcka.core import engine as _engine
from flashcka.backends import get

ROOT = Path(__file__).resolve().parent.parent


def header() -> str:
    from conftest import device_name, git_commit
    commit, cpu = git_commit(), device_name("cpu")
    from flashcka.backends.native import _load
    lib = _load()
    blas = f"kernels: {lib.simd}; threads: {lib.threads}; {lib.blas}" if lib else "no native"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, load average {load:.1f}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), flashcka {flashcka.__version__} @ {commit}; "
            f"{blas}")


def interleaved(fa, fb, budget: float, min_reps: int = 3, max_reps: int = 200):
    """Medians of fa and fb timed alternately until `budget` seconds or max_reps."""
    fa(), fb()                                       # warm-up
    ta, tb = [], []
    start = time.perf_counter()
    while len(ta) < max_reps and (len(ta) < min_reps or time.perf_counter() - start < budget):
        t = time.perf_counter(); fa(); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); fb(); tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb), len(ta)


def make(n, d, layout, dtype, gen):
    if layout == "nd":
        return torch.randn(n, d, generator=gen, dtype=dtype) + 1.0
    T = 16
    return (torch.randn(n, T + 1, d // T, generator=gen, dtype=dtype) + 1.0)[:, 1:]


def gram(args) -> list[str]:
    be = get("native")
    s = _engine.Settings()
    dtype = getattr(torch, args.dtype)
    rows = [f"### Gram + U-centering (native `_engine.gram_row`) vs `torch.matmul(x, x.T)`, "
            f"{args.dtype}", "", header(), "",
            "| n | d | layout | native ms | matmul ms | ratio | native GFLOP/s (n²d) | reps |",
            "|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for n in args.n:
        out = torch.empty(be.row_length(n, True), dtype=dtype)
        scale = torch.ones((), dtype=torch.float64)
        for d in args.d:
            for layout in args.layout:
                x = make(n, d, layout, dtype, gen)
                xf = x if layout == "nd" else None

                def native():
                    _engine.gram_row(be, x, "x", out, n, dtype, s, scale_out=scale)

                def matmul():
                    a = x.reshape(n, -1) if xf is None else xf
                    torch.matmul(a, a.T)

                tn, tm, reps = interleaved(native, matmul, args.budget)
                ratios.append(tm / tn)
                line = (f"| {n} | {d} | {layout} | {tn * 1e3:.3f} | {tm * 1e3:.3f} | "
                        f"{tm / tn:.2f}x | {n * n * d / tn / 1e9:.0f} | {reps} |")
                rows.append(line)
                print(line, flush=True)
                del x, xf
    tail = (f"\nmin ratio {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x "
            f"over {len(ratios)} shapes (target >= 1.4x everywhere)")
    print(tail)
    return rows + [tail]


def gemm_rate(budget: float) -> float:
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    t, _, _ = interleaved(lambda: torch.matmul(a, b), lambda: None, budget)
    return 2 * 2048 ** 3 / t / 1e9


def stream_rate(budget: float) -> float:
    """Bytes a second of torch's sum over 256 MiB (far beyond the caches): the rate at which
    this machine reads memory."""
    x = torch.ones(64 * 2 ** 20)
    t, _, _ = interleaved(lambda: x.sum(), lambda: None, budget)
    return x.numel() * 4 / t / 1e9


def pair(args) -> list[str]:
    """The pair stage warm (rows in cache, as right after the Gram stage wrote them) and
    cold (after a 64 MiB write has evicted them), against the GEMM rate and against the
    roofline min(GEMM rate, flops/byte x memory rate): with few layers the pair stage reads
    (L_A + L_B)·m values for 2·L_A·L_B·m flops and no code can beat the memory."""
    be = get("native")
    gemm, bw = gemm_rate(args.budget), stream_rate(args.budget)
    rows = ["### Pair stage (native `pair`) vs the machine's GEMM rate and the memory roofline",
            "", header(), "",
            f"GEMM rate (torch.matmul, 2048², float32): {gemm:.0f} GFLOP/s; memory read rate "
            f"(torch sum over 256 MiB): {bw:.1f} GB/s.", "",
            "| L_A | L_B | n | same rows | warm ms | warm GFLOP/s | warm % of GEMM | cold ms | "
            "cold GFLOP/s | roofline GFLOP/s | cold % of roofline |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    gen = torch.Generator().manual_seed(1)
    evict = torch.empty(16 * 2 ** 20)
    for la, lb, n in ((12, 12, 256), (24, 24, 256), (48, 48, 512), (100, 100, 256),
                      (1000, 1000, 64)):
        m = be.row_length(n, True)
        ga = torch.randn(la, m, generator=gen)
        gb = torch.randn(lb, m, generator=gen)
        for same in (True, False):
            other = ga if same else gb
            tw, _, _ = interleaved(lambda: be.pair(ga, other), lambda: None, args.budget)
            tc, _, _ = interleaved(lambda: be.pair(ga, other), lambda: evict.fill_(1.0),
                                   args.budget)
            flops = 2 * la * lb * m
            bytes_ = (la if same else la + lb) * m * 4
            roof = min(gemm, flops / bytes_ * bw)
            line = (f"| {la} | {lb} | {n} | {same} | {tw * 1e3:.2f} | {flops / tw / 1e9:.0f} | "
                    f"{100 * flops / tw / 1e9 / gemm:.0f}% | {tc * 1e3:.2f} | "
                    f"{flops / tc / 1e9:.0f} | {roof:.0f} | {100 * flops / tc / 1e9 / roof:.0f}% |")
            rows.append(line)
            print(line, flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["gram", "pair", "all"])
    p.add_argument("--n", type=int, nargs="*", default=[128, 256, 512, 1024])
    p.add_argument("--d", type=int, nargs="*", default=[256, 1024, 4096, 16384, 65536])
    p.add_argument("--layout", nargs="*", default=["nd", "tokens"], choices=["nd", "tokens"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--budget", type=float, default=1.5, help="seconds of timing per case")
    p.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = p.parse_args(argv)
    rows = []
    if args.what in ("gram", "all"):
        rows += gram(args) + [""]
    if args.what in ("pair", "all"):
        rows += pair(args)
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
