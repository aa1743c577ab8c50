"""The torch backend's linear rows on a CPU: one ``engine.gram_rows`` call (same-shape
layers stacked, core/batched_rows.py) against the per-layer path it replaced
(``engine.gram_row`` for each layer), timed alternately in one process (medians):

    python bench/device_rows.py [--rounds 25]

Layers: the peers job's first batch (bench/peers/run_peers.py: 24 layers of 256 samples,
widths 256-4096), float32, unbiased.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import run_peers as rp  # noqa: E402

from flashcka import backends  # noqa: E402
from flashcka.core import engine  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=25)
    args = p.parse_args(argv)
    n = 256
    a, b = rp.make_data(12, n, 1)[:2]
    xs = [torch.from_numpy(x).contiguous() for x in a + b]
    names = [f"layer{i}" for i in range(len(xs))]
    be, s, ct = backends.get("torch"), engine.Settings(), torch.float32
    g = torch.empty(len(xs), be.row_length(n, s.unbiased), dtype=ct)
    scale = torch.ones(len(xs), dtype=torch.float64)

    def one_call():
        engine.gram_rows(be, xs, names, n, ct, s, out=g)

    def per_layer():
        for i, x in enumerate(xs):
            engine.gram_row(be, x, names[i], g[i], n, ct, s, scale_out=scale[i])

    runs = {"gram_rows": one_call, "gram_row per layer": per_layer}
    times = {k: [] for k in runs}
    for f in runs.values():
        f()                                                  # warm-up
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}, medians of "
          f"{args.rounds}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in m.items())
          + f"; per-layer / one call {m['gram_row per layer'] / m['gram_rows']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
