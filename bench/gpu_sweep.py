#!/usr/bin/env python
"""Candidate configurations of the Triton Gram (``gram_stats_triton``: the pre-centred
copy X_c = x − 1μᵀ, the triangle-GEMM kernel, split-K reduction, row sums) against
``torch.matmul(x, x.T)`` in the same precision, on one GPU.

    python bench/gpu_sweep.py [--out sweep.json] [--seconds 40] [--dry-run]

Modes: fp32 (IEEE products; matmul with TF32 off), tf32 (allow_tf32; matmul with TF32 on),
bf16 (bfloat16 input, allow_bf16; matmul in bfloat16). Shapes (n, d): (256, 151296),
(1024, 151296), (4096, 4096), (4096, 151296). For each mode the launcher's own
configuration (``default``) comes first, then the alternatives. Timing: CUDA events around
each call, inputs rotated over 3 buffers (no L2 reuse between calls), one warm-up call
(compiles), then the median of 3 to 30 repetitions (as many as fit in ~0.1 s). Columns: ms
of ours, of the centring copy alone (``centred_rows``) and of matmul; useful TFLOP/s (ours
n²d / t: the triangle is half a GEMM; matmul 2n²d / t); speed-up = matmul / ours (the
target is ≥ 1.6); err = max |K − K64| / max K64_ii over the upper triangle, K64 the
float64 Gram of the same centred values (X_c rounded to bfloat16 in bf16 mode); err ≥ 0.05
(wrong tiles, not rounding) is reported as WRONG and makes the exit status 1. Stops
starting new measurements after --seconds. --dry-run: the same steps on the CPU through
the Triton interpreter at tiny sizes (CI; seconds). On an H200 (Triton 3.6) the whole
sweep took 31 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"          # before triton is imported

import torch  # noqa: E402

from flashcka.backends import triton_launch as tl  # noqa: E402
from conftest import call_seconds  # noqa: E402

SHAPES = [(256, 151296), (1024, 151296), (4096, 4096), (4096, 151296)]
DRY_SHAPES = [(5, 70), (37, 200)]
CANDIDATES = {    # beyond the launcher's own (triton_configs.gram_config); TMA: Hopper only
    "fp32": [dict(BLOCK=64, BLOCK_K=32, num_warps=4, num_stages=2),
             dict(BLOCK=128, BLOCK_K=16, num_warps=8, num_stages=2)],
    "tf32": [dict(BLOCK=128, BLOCK_K=32, num_warps=8, num_stages=4),
             dict(BLOCK=128, BLOCK_K=32, num_warps=8, num_stages=4, TMA=True)],
    "bf16": [dict(BLOCK=128, BLOCK_K=64, num_warps=8, num_stages=3),
             dict(BLOCK=128, BLOCK_K=64, num_warps=8, num_stages=3, TMA=True)],
}
FLAGS = {"fp32": dict(allow_tf32=False, allow_bf16=False),
         "tf32": dict(allow_tf32=True, allow_bf16=False),
         "bf16": dict(allow_tf32=False, allow_bf16=True)}


def _label(cfg: dict) -> str:
    return (f"{cfg['BLOCK']}x{cfg['BLOCK']}x{cfg['BLOCK_K']}"
            + (f" w{cfg['num_warps']} s{cfg['num_stages']}" if "num_warps" in cfg else "")
            + (" TMA" if cfg.get("TMA") else ""))


def _timer(dev):
    """f -> list of ms per call (CUDA events on a GPU, perf_counter on the CPU)."""
    def run(f, reps):
        return [call_seconds(lambda: f(i), dev.type == "cuda") * 1e3 for i in range(reps)]
    return run


def _median_ms(timer, f, budget_s: float, reps: tuple[int, int]) -> float:
    """Median ms of f(i) over reps[0]..reps[1] calls (as many as fit in budget_s, by the
    second call's time), after one warm-up call (which compiles)."""
    timer(f, 1)
    est = timer(f, 1)[0]
    n = max(reps[0], min(reps[1], int(budget_s * 1e3 / max(est, 1e-3))))
    return statistics.median(timer(f, n))


def _inputs(n, d, mode, dev, gen):
    dt = torch.bfloat16 if mode == "bf16" else torch.float32
    xs = [(torch.randn(n, d, generator=gen, device=dev) + 2.0).to(dt) for _ in range(3)]
    mus = [x.mean(0, dtype=torch.float32) for x in xs]
    return xs, mus


def _reference(x, mu, mode):
    """Float64 Gram of the centred values the kernel multiplies."""
    xc = x.float() - mu
    if mode == "bf16":
        xc = xc.to(torch.bfloat16)
    xc = xc.double()
    return xc @ xc.T


def _err(k, k64) -> float:
    up = torch.triu(torch.ones_like(k64, dtype=torch.bool))
    return ((k.double() - k64).abs()[up].max() / k64.diagonal().max()).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    t_end = time.perf_counter() + args.seconds
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_sweep: no CUDA device (use --dry-run on the CPU)")
    dev = torch.device("cpu" if args.dry_run else "cuda")
    shapes = DRY_SHAPES if args.dry_run else SHAPES
    budget, reps = (0.0, (1, 1)) if args.dry_run else (0.1, (3, 30))
    timer = _timer(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows, skipped = [], 0
    for mode in ("tf32", "bf16", "fp32"):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"   # (tf32 mode only)
        for n, d in shapes:
            xs, mus = _inputs(n, d, mode, dev, gen)
            prec = tl._precision(xs[0].dtype, torch.float32, **FLAGS[mode])
            hopper = tl._hopper(dev)
            own = tl._gram_config(torch.float32, n, prec=prec, hopper=hopper)
            cfgs = [("default", own)] + [("alt", c) for c in CANDIDATES[mode]
                                         if c != own and not args.dry_run
                                         and (hopper or not c.get("TMA"))]
            if args.dry_run:                      # the interpreter: one small override too
                cfgs += [("alt", dict(BLOCK=64, BLOCK_K=32)),
                         ("alt", dict(BLOCK=64, BLOCK_K=32, TMA=True))]
            k64 = _reference(xs[0], mus[0], mode)
            mm = _median_ms(timer, lambda i: torch.matmul(xs[i % 3], xs[i % 3].T), budget,
                            reps)
            centre = _median_ms(timer, lambda i: tl.centred_rows(
                xs[i % 3], mus[i % 3], prec, own["BLOCK_K"]), budget, reps)
            for kind, cfg in cfgs:
                if time.perf_counter() > t_end:
                    skipped += 1
                    continue
                call = lambda i: tl.gram_stats_triton(  # noqa: E731
                    xs[i % 3], mus[i % 3], config=cfg, **FLAGS[mode])
                err = _err(call(0)[0], k64)
                ms = _median_ms(timer, call, budget, reps)
                plan = tl.gram_plan(n, d, torch.float32, sms=tl._num_sms(dev), prec=prec,
                                    hopper=hopper, config=cfg)
                rows.append(dict(
                    mode=mode, n=n, d=d, config=_label(cfg), kind=kind, splits=plan.splits,
                    ours_ms=round(ms, 4), centre_ms=round(centre, 4), matmul_ms=round(mm, 4),
                    ours_tflops=round(n * n * d / ms / 1e9, 1),
                    matmul_tflops=round(2 * n * n * d / mm / 1e9, 1),
                    speedup=round(mm / ms, 3), err=err))
                r = rows[-1]
                print(f"{mode:4} {n:5} {d:6} {r['config']:<18} {kind:7} S={r['splits']:<3} "
                      f"ours {r['ours_ms']:9.3f} ms (centre {r['centre_ms']:7.3f}) "
                      f"matmul {r['matmul_ms']:8.3f} ms  {r['ours_tflops']:7.1f} vs "
                      f"{r['matmul_tflops']:7.1f} TFLOP/s  x{r['speedup']:.2f}  "
                      f"err {err:.2e}", flush=True)
            del xs, mus, k64
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if skipped:
        print(f"gpu_sweep: --seconds {args.seconds:g} reached: {skipped} measurements skipped")
    if args.out:
        import triton
        meta = dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    triton=triton.__version__, torch=torch.__version__,
                    host=platform.node(), dry_run=args.dry_run, skipped=skipped)
        with open(args.out, "w") as f:
            json.dump(dict(meta, rows=rows), f, indent=1)
    bad = [r for r in rows if not r["err"] < 0.05]
    for r in bad:
        print(f"gpu_sweep: WRONG {r['mode']} {r['n']}x{r['d']} {r['config']}: err {r['err']:.3g}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
