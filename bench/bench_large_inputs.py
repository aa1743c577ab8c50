"""Inputs larger than RAM (issue 19): peak RSS and time of streaming `.npy` feature files.

    python bench/bench_large_inputs.py [--quick] [--cases read,cka,knn] [--knn-n 5000,10000]
        [--cka-n 20000,100000] [--limit SECONDS] [--folder /tmp/flashcka_large]
        [--out bench/results/amd-epyc-zen5-2cpu/large_inputs.md]
    python -m pytest bench/bench_large_inputs.py -q --quick --benchmark-disable   # CI smoke

Every case runs in a fresh process (``--worker``) so that its peak RSS (``VmHWM`` of
/proc/self/status: anonymous memory plus file pages mapped into the process) is its own;
the OS page cache is reported apart (the rise of ``Cached`` in /proc/meminfo over the run,
system-wide, so other jobs on a shared machine move it too). The inputs are written as
float32 `.npy` files under ``--folder`` (``L`` files of n x d each) and deleted at the end.

Cases:
  * ``read``: every layer streamed once in 2048-row tiles through ``core.sources``, from the
    `.npy` paths (positional reads) and from ``np.load(mmap_mode="r")`` memmaps, with the
    page cache dropped first where this process may (root), then warm.
  * ``cka``: ``cka_matrix(paths, route="tiled")`` (linear, unbiased).
  * ``knn``: ``similarity_matrix(paths_a, paths_b, measure="mutual_knn", topk=10)``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import proc_status

HERE = Path(__file__).resolve().parent
FULL = {"n": 100_000, "layers": 12, "d": 768, "knn_n": [5000, 10000, 20000]}
QUICK = {"n": 3000, "layers": 2, "d": 64, "knn_n": [1000, 2000]}


# ------------------------------------------------------------------ measurement helpers
def page_cache() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


def drop_caches() -> bool:
    """Drop the OS page cache (root only); whether it was dropped."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def write_inputs(folder: Path, prefix: str, n: int, layers: int, d: int, seed: int) -> list:
    """``layers`` float32 .npy files of (n, d), written in blocks (low memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(layers):
        p = folder / f"{prefix}{i}.npy"
        mm = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, d))
        for s in range(0, n, 8192):
            mm[s:s + 8192] = rng.standard_normal((min(8192, n - s), d), dtype=np.float32)
        mm.flush()
        del mm
        paths.append(str(p))
    return paths


# ------------------------------------------------------------------ the worker (own process)
def worker(case: str, paths_a: list, paths_b: list, cold: bool) -> dict:
    import torch
    from flashcka import cka_matrix, similarity_matrix
    from flashcka.core import sources
    dropped = drop_caches() if cold else False
    cache0, base = page_cache(), proc_status()["VmRSS"]
    t = time.perf_counter()
    if case in ("read_npy", "read_memmap"):
        xs = paths_a if case == "read_npy" else [np.load(p, mmap_mode="r") for p in paths_a]
        total = 0
        for src in sources.open_layers(xs, "xs"):
            for s in range(0, src.n, 2048):
                total += src.read(s, min(s + 2048, src.n)).numel() * 4
        extra = {"bytes": total}
    elif case == "cka":
        m = cka_matrix(paths_a, route="tiled", progress=False)
        extra = {"finite": bool(torch.isfinite(m).all())}
    elif case == "knn":
        m = similarity_matrix(paths_a, paths_b, measure="mutual_knn", topk=10, progress=False)
        extra = {"mean": float(m.mean())}
    else:
        raise ValueError(case)
    seconds = time.perf_counter() - t
    st = proc_status()
    return {"case": case, "seconds": seconds, "peak_rss": st["VmHWM"], "rss_at_start": base,
            "rss_file_end": st["RssFile"], "page_cache_rise": page_cache() - cache0,
            "cache_dropped": dropped, "threads": torch.get_num_threads(), **extra}


def run_worker(case, paths_a, paths_b=(), cold=False, limit=None) -> dict:
    """The case in its own process; with ``limit`` seconds, a run still going then is
    stopped and reported with the peak RSS it had reached (polled from /proc/PID)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case,
           "--paths-a", *paths_a] + (["--paths-b", *paths_b] if paths_b else []) + \
        (["--cold"] if cold else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0, peak = time.perf_counter(), 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        if limit is not None and time.perf_counter() - t0 > limit:
            proc.kill()
            proc.wait()
            return {"case": case, "seconds": time.perf_counter() - t0, "peak_rss": peak,
                    "rss_at_start": float("nan"), "page_cache_rise": float("nan"),
                    "stopped": True}
        time.sleep(0.5)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{case} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------ the full run
def gib(b) -> str:
    return f"{b / 2**30:.2f} GiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", default=None)
    p.add_argument("--paths-a", nargs="*", default=[])
    p.add_argument("--paths-b", nargs="*", default=[])
    p.add_argument("--cold", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", default="read,cka,knn")
    p.add_argument("--knn-n", default=None)
    p.add_argument("--cka-n", default=None, help="n of the cka case (default: --n's)")
    p.add_argument("--limit", type=float, default=None,
                   help="stop the cka and knn runs after this many seconds (peak RSS so far)")
    p.add_argument("--folder", default="/tmp/flashcka_large")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.paths_a, a.paths_b, a.cold)))
        return 0
    size = QUICK if a.quick else FULL
    knn_n = [int(v) for v in a.knn_n.split(",")] if a.knn_n else size["knn_n"]
    cases = a.cases.split(",")
    folder = Path(a.folder)
    n, L, d = size["n"], size["layers"], size["d"]
    need = (L * n * d + 2 * L * max(knn_n) * d) * 4
    free = shutil.disk_usage(folder.parent).free
    if need > free * 0.8:
        raise SystemExit(f"needs {gib(need)} under {folder}, {gib(free)} free")
    lines, rows = [], []
    try:
        if "read" in cases or "cka" in cases:
            t = time.perf_counter()
            paths = write_inputs(folder, "x", n, L, d, 0)
            lines.append(f"Inputs: {L} x ({n}, {d}) float32 .npy files, {gib(L * n * d * 4)} "
                         f"(written in {time.perf_counter() - t:.0f} s).")
            if "read" in cases:
                for case in ("read_npy", "read_memmap"):
                    for cold in (True, False):
                        r = run_worker(case, paths, cold=cold)
                        r["what"] = f"{case} ({'cold' if r['cache_dropped'] else 'warm'})"
                        r["gbps"] = r["bytes"] / r["seconds"] / 1e9
                        rows.append(r)
            if "cka" in cases:
                for m in ([int(v) for v in a.cka_n.split(",")] if a.cka_n else [n]):
                    sub = paths
                    if m < n:           # the first m rows of each file, as files
                        sub = []
                        for q in paths:
                            np.save(q + f".{m}.npy", np.load(q, mmap_mode="r")[:m])
                            sub.append(q + f".{m}.npy")
                    r = run_worker("cka", sub, limit=a.limit)
                    r["what"] = f"cka_matrix tiled, {L} layers, n = {m}" + (
                        f" (stopped after {r['seconds']:.0f} s)" if r.get("stopped") else "")
                    rows.append(r)
                    for q in sub if m < n else ():
                        os.remove(q)
            for q in paths:
                os.remove(q)
        if "knn" in cases:
            for m in knn_n:
                pa = write_inputs(folder, "a", m, L, d, 1)
                pb = write_inputs(folder, "b", m, L, d, 2)
                r = run_worker("knn", pa, pb, limit=a.limit)
                r["what"] = f"mutual_knn k=10, {L}+{L} layers, n = {m}" + (
                    f" (stopped after {r['seconds']:.0f} s)" if r.get("stopped") else "")
                r["n"] = m
                rows.append(r)
                for q in pa + pb:
                    os.remove(q)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table = ["| case | seconds | peak RSS (VmHWM) | RSS at start | page cache rise | GB/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['what']} | {r['seconds']:.1f} | {gib(r['peak_rss'])} | "
                     f"{gib(r['rss_at_start'])} | {gib(r['page_cache_rise'])} | "
                     f"{r.get('gbps', float('nan')):.2f} |")
    text = "\n".join(lines + [""] + table)
    print(text)
    print(json.dumps(rows))
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


# ------------------------------------------------------------------ pytest (CI smoke)
def test_large_inputs_quick(benchmark, tmp_path):
    """The quick sizes end to end in worker processes (CI: --quick --benchmark-disable)."""
    paths = write_inputs(tmp_path, "x", 600, 2, 16, 0)
    pb = write_inputs(tmp_path, "b", 600, 2, 16, 1)
    out = benchmark.pedantic(lambda: [run_worker("read_npy", paths),
                                      run_worker("read_memmap", paths),
                                      run_worker("knn", paths, pb)], rounds=1, iterations=1)
    for r in out:
        benchmark.extra_info[r["case"]] = {k: r[k] for k in ("seconds", "peak_rss")}
    assert out[0]["bytes"] == 600 * 16 * 4 * 2 and 0 <= out[2]["mean"] <= 1


if __name__ == "__main__":
    sys.exit(main())
