"""How the cost of all-pairs CKA grows with the work (issue 8): one PNG, two panels.

    python bench/scaling.py [--quick] [--backends native torch] [--out bench/results/cpu-2core]

Left: time of ``cka_matrix(xs, route="gram")`` (L layers against themselves: L Grams + one
pair stage) against the number of layers L in {10, 100, 1000}, n = 256, d = 768.
Right: the same against n in {128, 256, 512, 1024, 2048}, L = 24, d = 768.
Drawn with each: the floor, i.e. the flops that cannot be avoided (SYRK: L·n²·d for the
Grams, plus L²·m for the pair stage as one SYRK over packed rows of m = n(n−1)/2) at the
GEMM rate of ``torch.matmul`` measured in the same run (square 2048, all threads).
Writes scaling.png, scaling.json and scaling.md (device, versions, commit, load).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import flashcka

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import repeat_times  # noqa: E402
from targets import header  # noqa: E402

HERE = Path(__file__).resolve().parent


def gemm_rate(reps=10) -> float:
    """GFLOP/s of torch.matmul on square 2048 matrices, fastest of `reps` (on a loaded
    machine the median says more about the other jobs than about the cores)."""
    a = torch.randn(2048, 2048)
    torch.matmul(a, a)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, a)
        ts.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / min(ts) / 1e9


def floor_s(L, n, d, rate):
    m = n * (n - 1) // 2
    return (L * n * n * d + L * L * m) / (rate * 1e9)


def point(L, n, d, backend, reps):
    g = torch.Generator().manual_seed(L * 7 + n)
    xs = [torch.randn(n, d, generator=g) + 0.5 for _ in range(L)]
    t = statistics.median(repeat_times(
        lambda: flashcka.cka_matrix(xs, route="gram", backend=backend), reps))
    del xs
    return t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--backends", nargs="*", default=["native", "torch"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=HERE / "results" / "cpu-2core")
    p.add_argument("--gemm-rate", type=float, default=None,
                   help="GFLOP/s for the floor (default: measured now)")
    a = p.parse_args(argv)
    d = 768
    Ls, ns = ([10, 100, 1000], [128, 256, 512, 1024, 2048]) if not a.quick else ([2, 4], [16, 32])
    L_fixed, n_fixed = (24, 256) if not a.quick else (3, 16)
    rate = a.gemm_rate or gemm_rate()
    res = {"header": header(), "gemm_gflops": rate, "d": d, "by_L": {}, "by_n": {}}
    print(res["header"], f"\nGEMM rate {rate:.0f} GFLOP/s", flush=True)
    for be in a.backends:
        point(L_fixed, n_fixed, d, be, 1)  # warm-up: thread team, scratch pages, allocator
        res["by_L"][be] = []
        for L in Ls:
            if be == "torch" and L > 100 and not a.quick:
                continue  # n² rows: 1000 layers of the torch backend take minutes here
            t = point(L, n_fixed, d, be, a.reps if L < 1000 else 1)
            res["by_L"][be].append((L, t))
            print(f"{be} L={L} n={n_fixed}: {t:.3f} s (floor {floor_s(L, n_fixed, d, rate):.3f})",
                  flush=True)
        res["by_n"][be] = []
        for n in ns:
            t = point(L_fixed, n, d, be, a.reps if n < 2048 else 1)
            res["by_n"][be].append((n, t))
            print(f"{be} L={L_fixed} n={n}: {t:.3f} s (floor {floor_s(L_fixed, n, d, rate):.3f})",
                  flush=True)
    res["floor_by_L"] = [(L, floor_s(L, n_fixed, d, rate)) for L in Ls]
    res["floor_by_n"] = [(n, floor_s(L_fixed, n, d, rate)) for n in ns]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scaling.json").write_text(json.dumps(res, indent=1))
    plot(res, a.out / "scaling.png", n_fixed, L_fixed, d)
    md = [f"# Scaling of cka_matrix (d = {d})", "", res["header"], "",
          f"GEMM rate (torch.matmul, 2048², same run): {rate:.0f} GFLOP/s", "",
          "| sweep | value | " + " | ".join(f"{b} s" for b in a.backends) + " | floor s |",
          "|---|---|" + "---|" * len(a.backends) + "---|"]
    for key, fl, name in (("by_L", res["floor_by_L"], f"L (n={n_fixed})"),
                          ("by_n", res["floor_by_n"], f"n (L={L_fixed})")):
        for i, (v, f) in enumerate(fl):
            cells = []
            for b in a.backends:
                got = dict(res[key][b])
                cells.append(f"{got[v]:.3f}" if v in got else "—")
            md.append(f"| {name} | {v} | " + " | ".join(cells) + f" | {f:.3f} |")
    (a.out / "scaling.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def plot(res, path, n_fixed, L_fixed, d):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, fkey, xlabel in ((axes[0], "by_L", "floor_by_L", f"layers L (n = {n_fixed})"),
                                  (axes[1], "by_n", "floor_by_n", f"samples n (L = {L_fixed})")):
        for be, pts in res[key].items():
            if pts:
                ax.plot(*zip(*pts), "o-", label=f"flashcka backend={be}")
        ax.plot(*zip(*res[fkey]), "k--",
                label=f"floor: SYRK + pair flops at {res['gemm_gflops']:.0f} GFLOP/s (GEMM)")
        ax.set_xscale("log", base=2 if key == "by_n" else 10)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds per cka_matrix call")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"all-pairs CKA (d = {d}); {res['header'][:110]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
