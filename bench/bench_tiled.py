"""The tiled route (issue 19): exact full-batch CKA at large n, time against the SYRK floor
and peak memory against the inputs.

    python bench/bench_tiled.py [--quick] [--cases linear,rbf,scaling] [--n 100000]
        [--out bench/results/amd-epyc-zen5-2cpu/tiled.md]
    python -m pytest bench/bench_tiled.py -q --quick --benchmark-disable   # CI smoke

Every case runs in a fresh process (``--worker``), so its peak RSS (``VmHWM``, reset once
the inputs are made) is its own, the process's baseline (~0.25 GiB: Python, torch) included;
the inputs (float32, correlated layers: a shared latent through a random map per layer,
plus noise) are made in that process and their bytes reported apart. The machine's GEMM
rate is measured in the same process, just before and just after the case
(``torch.matmul`` of 2048 × 768 by 768 × 2048, best of five; the better of the two is
the rate), and the floor is the SYRK count ``L·n²·d`` flops at that rate.

Cases:
  * ``linear``: ``cka_matrix(xs, route="tiled")``, n × 12 layers × d = 768, float32,
    unbiased and biased (one process each).
  * ``rbf``: ``cka_matrix(xs, kernel="rbf", route="tiled")`` with the exact median
    heuristic, 50,000 × 4 layers × d = 256: time and passes over the tiles.
  * ``scaling``: time and peak memory against n (10³ … 3·10⁴, and the ``linear`` case's n),
    tiled route vs the Gram route (where its packed Grams fit), written as a PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = dict(n=100_000, layers=12, d=768, rbf=(50_000, 4, 256),
            scaling=[1000, 3000, 10_000, 30_000], gram_max=10_000)
QUICK = dict(n=2000, layers=3, d=64, rbf=(1500, 2, 32), scaling=[500, 1000], gram_max=1000)


def gemm_rate() -> float:
    """FLOP/s of torch.matmul (float32) 2048 × 768 @ 768 × 2048, best of five."""
    import torch
    a, b = torch.randn(2048, 768), torch.randn(768, 2048)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 * 2048 * 768 / best


def layers(n: int, count: int, d: int, seed: int = 0):
    """``count`` correlated float32 layers (n, d): a shared 64-d latent through a random map
    per layer, tanh, plus noise and an offset (so centring matters)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    out = []
    for _ in range(count):
        w = torch.randn(64, d, generator=g) / 8
        x = torch.tanh(z @ w)
        x += 0.3 * torch.randn(n, d, generator=g)
        x += 2.0
        out.append(x)
    return out


# ------------------------------------------------------------------ the worker (own process)
def worker(case: dict) -> dict:
    import torch
    import flashcka
    from flashcka.core import tiled_median
    xs = layers(case["n"], case["layers"], case["d"])
    inputs = sum(x.numel() * x.element_size() for x in xs)
    try:   # reset VmHWM: the peak below is the call's (the inputs' temporaries are gone)
        Path("/proc/self/clear_refs").write_text("5\n")
    except OSError:
        pass
    from conftest import proc_status
    base = proc_status()["VmHWM"]
    r0 = gemm_rate()
    kw = dict(kernel=case.get("kernel", "linear"), unbiased=case.get("unbiased", True),
              route=case["route"], progress=case.get("progress", False))
    t = time.perf_counter()
    m = flashcka.cka_matrix(xs, **kw)
    seconds = time.perf_counter() - t
    peak = proc_status()["VmHWM"]
    rate = max(r0, gemm_rate())
    n, L, d = case["n"], case["layers"], case["d"]
    passes = 1 + (tiled_median.passes(torch.float32) if kw["kernel"] == "rbf" else 0)
    floor = L * n * n * d / rate
    return dict(case, seconds=seconds, gemm_gflops=rate / 1e9, floor_s=floor,
                ratio=seconds / floor, passes=passes if case["route"] == "tiled" else 1,
                peak_rss=peak, rss_after_inputs=base, inputs_bytes=inputs,
                over_inputs=peak - inputs, finite=bool(torch.isfinite(m).all()),
                threads=torch.get_num_threads())


def run_worker(case: dict, timeout: float | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return dict(case, error=out.stderr.strip().splitlines()[-1] if out.stderr else "?")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the full run
def gib(b) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def cases_for(which, size, n_big):
    out = []
    if "linear" in which:
        for unbiased in (True, False):
            out.append(dict(kind="linear", route="tiled", n=n_big, layers=size["layers"],
                            d=size["d"], unbiased=unbiased))
    if "rbf" in which:
        n, L, d = size["rbf"]
        out.append(dict(kind="rbf", route="tiled", kernel="rbf", n=n, layers=L, d=d))
    if "scaling" in which:
        for n in size["scaling"]:
            for route in ("tiled", "gram"):
                if route == "gram" and n > size["gram_max"]:
                    continue
                out.append(dict(kind="scaling", route=route, n=n, layers=size["layers"],
                                d=size["d"]))
    return out


def header(argv) -> str:
    """Where and how the rows were measured: command, commit, CPU, load, versions."""
    import torch
    from conftest import device_name, git_commit
    commit, cpu = git_commit(), device_name("cpu")
    cmd = "python bench/bench_tiled.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return (f"`{cmd}` at {commit}; {cpu}, {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.1f} at the end (a machine shared with other jobs); torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; float32. Floor: "
            f"L·n²·d flops at torch.matmul's rate measured in the same process.\n")


def table(rows) -> str:
    head = ("| case | route | n | L × d | estimator | time | floor | ratio | passes | "
            "peak RSS | inputs | peak − inputs |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['route']} | {r['n']:,} | {r['layers']} × {r['d']} "
                         f"| | failed: {r['error']} | | | | | | |")
            continue
        est = "biased" if not r.get("unbiased", True) else "unbiased"
        lines.append(
            f"| {r['kind']}{' rbf' if r.get('kernel') == 'rbf' else ''} | {r['route']} | "
            f"{r['n']:,} | {r['layers']} × {r['d']} | {est} | {r['seconds']:.1f} s | "
            f"{r['floor_s']:.1f} s | {r['ratio']:.2f} | {r['passes']} | {gib(r['peak_rss'])} | "
            f"{gib(r['inputs_bytes'])} | {gib(r['over_inputs'])} |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sc = [r for r in rows if r.get("kind") in ("scaling", "linear") and "error" not in r
          and r.get("unbiased", True)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for route, style in (("tiled", "o-"), ("gram", "s--")):
        pts = sorted((r["n"], r["seconds"], r["peak_rss"] - r["inputs_bytes"]) for r in sc
                     if r["route"] == route)
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{route} route")
            ax2.plot([p[0] for p in pts], [p[2] / 2 ** 30 for p in pts], style,
                     label=f"{route} route")
    if sc:
        rate = max(r["gemm_gflops"] for r in sc) * 1e9
        L, d = sc[0]["layers"], sc[0]["d"]
        ns = sorted({r["n"] for r in sc})
        ax1.plot(ns, [L * n * n * d / rate for n in ns], ":", color="gray",
                 label=f"SYRK floor L·n²·d at {rate / 1e9:.0f} GFLOP/s")
        ax1.set_title(f"exact linear CKA, {L} layers × d = {d}, float32")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (samples)")
        ax.legend(fontsize=8)
    ax1.set_ylabel("seconds")
    ax2.set_ylabel("peak RSS − inputs (GiB)")
    ax2.set_title("memory beyond the inputs")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", default="linear,rbf,scaling")
    p.add_argument("--n", type=int, default=None, help="n of the linear case")
    p.add_argument("--out", default=None, help="markdown; a .json and a -scaling.png beside")
    p.add_argument("--from-json", nargs="*", default=None,
                   help="no runs: the rows of these .json files (of earlier --out runs, or "
                        "a worker's output line) written again as one table and plot")
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    size = QUICK if a.quick else FULL
    rows = []
    for f in a.from_json or []:
        got = json.loads(Path(f).read_text().strip().splitlines()[-1]) \
            if not Path(f).read_text().lstrip().startswith("[") else \
            json.loads(Path(f).read_text())
        rows += got if isinstance(got, list) else [got]
    for case in [] if a.from_json else cases_for(a.cases.split(","), size, a.n or size["n"]):
        r = run_worker(case)
        rows.append(r)
        print(json.dumps(r), flush=True)
    text = table(rows)
    print(text)
    if a.out:
        out = Path(a.out)
        out.write_text(header(argv) + "\n" + text + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        if any(r.get("kind") in ("scaling", "linear") for r in rows):
            plot(rows, out.with_name(out.stem + "-scaling.png"))
    return 0


# ------------------------------------------------------------------ pytest (CI smoke)
def test_tiled_quick(benchmark):
    """--quick sizes, in this process: the tiled route and the Gram route on the same
    inputs, once each (the numbers must agree: a broken route is not a benchmark)."""
    import torch
    import flashcka
    xs = layers(600, 3, 32)
    got = benchmark.pedantic(lambda: flashcka.cka_matrix(xs, route="tiled", progress=False),
                             rounds=1, iterations=1)
    want = flashcka.cka_matrix(xs, route="gram")
    assert torch.allclose(got, want, rtol=0, atol=1e-5)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
