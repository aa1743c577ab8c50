"""The peers job's fastest runners timed alternately in one process (medians), so that the
ratios hold on a shared machine where fresh processes vary by up to 1.6x:

    python bench/peers/interleaved.py [--rounds 12]      # FLASHCKA_SIMD=avx2 for the AVX2 kernels

Same data and runners as run_peers.py (12 x 12 layers, widths 256-4096, 4 batches of 256):
flashcka compare() vs pytorch-cka, MinibatchCKA vs plain torch with centred features, and
MinibatchCKA's torch backend vs the same plain torch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_peers as rp  # noqa: E402

NAMES = ("flashcka compare", "pytorch-cka", "flashcka MinibatchCKA",
         "flashcka MinibatchCKA (torch backend)", "plain torch (features centred)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    args = p.parse_args(argv)
    A, B = rp.make_data(12, 256, 4)[:2]
    from flashcka.backends.native import _load
    fns = [rp.RUNNERS[k][2] for k in NAMES]
    for f in fns:
        f(A, B, 256, 4)                               # warm-up
    times = {k: [] for k in NAMES}
    for _ in range(args.rounds):
        for k, f in zip(NAMES, fns):
            t = time.perf_counter()
            f(A, B, 256, 4)
            times[k].append(time.perf_counter() - t)
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"{_load().simd}, load {os.getloadavg()[0]:.1f}, medians of {args.rounds}: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in m.items()))
    plain = m["plain torch (features centred)"]
    print(f"compare vs pytorch-cka {m['pytorch-cka'] / m['flashcka compare']:.2f}x; "
          f"MinibatchCKA vs plain torch {plain / m['flashcka MinibatchCKA']:.2f}x; "
          f"torch backend vs plain torch {plain / m['flashcka MinibatchCKA (torch backend)']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
