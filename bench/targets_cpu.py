"""Issue 17's targets on every CPU kernel set, through the public API, ratios in one run.

    python bench/targets_cpu.py [--simd avx512 avx2 0] [--budget 1.0] [--out FILE]

Each kernel set this CPU runs (``FLASHCKA_SIMD``; sets it cannot run are skipped) is timed
in a fresh process of its own. Per shape, 12 layers of (n, d) float32 activations with
non-zero means (or (n, T, C) tokens, merged by the reshape a user writes):

* ``flashcka``: ``cka_matrix(xs, route="gram")``, every layer against every layer
  (``backend="auto"``: what a user gets), against the 12 bare ``torch.matmul(x, x.T)``
  a plain-torch user would start from. Target >= 1.4x; the SYRK floor is 2x (half the
  flops of a GEMM).
* ``torch backend``: the same call with ``backend="torch"`` against the same matmuls (the
  GPU's fallback, on the CPU).
* ``auto``: the backend ``auto`` ran (``backends.select``).

Timings are interleaved (flashcka, matmul, torch backend, ...) and medians taken, so load
from other processes hits every side alike; the header names the CPU, the kernel set, the
thread count and the commit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = [(n, d) for n in (128, 256, 512) for d in (256, 1024, 4096, 16384)] + [(256, 197, 384)]


def child(budget: float) -> list[str]:
    import torch

    import flashcka
    from flashcka.backends import select
    sys.path.insert(0, str(HERE))
    from targets import header

    rows = [header(), "", "| shape | flashcka ms | 12 × matmul ms | ratio | torch backend ms | "
            "torch backend ratio | auto |", "|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for shape in SHAPES:
        xs = [torch.randn(*shape, generator=gen) + 1.0 for _ in range(12)]
        flat = [x.reshape(shape[0], -1) for x in xs]

        def fl():
            flashcka.cka_matrix(xs, route="gram")

        def tb():
            flashcka.cka_matrix(xs, route="gram", backend="torch")

        def mm():
            for x in xs:
                a = x.reshape(shape[0], -1)          # a copy for (n, T, C), as a user's
                torch.matmul(a, a.T)

        fns = (fl, mm, tb)
        times = [[] for _ in fns]
        for f in fns:
            f()                                      # warm-up
        start = time.perf_counter()
        while len(times[0]) < 3 or (time.perf_counter() - start < budget and len(times[0]) < 200):
            for f, t in zip(fns, times):
                s = time.perf_counter()
                f()
                t.append(time.perf_counter() - s)
        t_fl, t_mm, t_tb = (statistics.median(t) for t in times)
        ratios.append(t_mm / t_fl)
        line = (f"| {shape} | {t_fl * 1e3:.3f} | {t_mm * 1e3:.3f} | {t_mm / t_fl:.2f}x | "
                f"{t_tb * 1e3:.3f} | {t_mm / t_tb:.2f}x | {select('auto', flat[0]).name} |")
        rows.append(line)
        print(line, flush=True)
    tail = (f"\nflashcka / 12 × matmul: min {min(ratios):.2f}x, median "
            f"{statistics.median(ratios):.2f}x over {len(ratios)} shapes (target >= 1.4x)")
    print(tail, flush=True)
    return rows + [tail]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simd", nargs="*", default=["avx512", "avx2", "0"])
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per shape")
    p.add_argument("--out", type=Path, default=None, help="also write the tables here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.budget)
        return 0
    from flashcka.backends.native import _load
    supported = _load().simd_supported
    out = [f"### `cka_matrix(12 layers, route=\"gram\")` vs 12 × `torch.matmul(x, x.T)`, "
           f"float32, every kernel set", ""]
    for simd in args.simd:
        if simd not in supported:
            print(f"(FLASHCKA_SIMD={simd}: this CPU cannot run it; skipped)")
            continue
        title = f"#### FLASHCKA_SIMD={simd}" + ("" if simd == supported[0] else " (forced)")
        print(title, flush=True)
        r = subprocess.run([sys.executable, __file__, "--child", "--budget", str(args.budget)],
                           env=dict(os.environ, FLASHCKA_SIMD=simd), capture_output=True,
                           text=True)
        if r.returncode != 0:
            print(r.stderr)
            return r.returncode
        print(r.stdout, flush=True)
        out += [title, "", r.stdout.strip(), ""]
    if args.out:
        args.out.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
