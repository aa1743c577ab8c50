#!/usr/bin/env python
"""The GPU benchmarks of issue 23, in one process that fits a short GPU call (bench/gpu.sh).

    python bench/gpu_bench.py --out DIR [--dry-run]

1. Ceilings measured here: device copy bandwidth (bytes read + written), torch.matmul rate
   in fp32, tf32 and bf16.
2. Gram + centring (``centered_gram_row``: fused centring, upper triangle, U-centring,
   packed row) against ``torch.matmul(x, x.T)`` in the same precision (fp32 IEEE, tf32,
   bf16 inputs), n ∈ {256, 1024, 4096}, d ∈ {4096, 197·768}. Speed-up = matmul time / ours.
3. Pair stage at L = 1000 layers of n = 256 (rows of n(n−1)/2): GB/s of rows read as a
   fraction of the copy bandwidth, and TFLOP/s.
4. ``MinibatchCKA.update`` on the activations of random-weight ViT-B/16 (48 sub-layers:
   per block ln_1 output, attention output, ln_2 input, MLP output; 197 × 768 tokens) and
   ResNet-50 (16 bottleneck outputs) at n = 256, against the two models' forward time.
5. The million-pair job: ``MinibatchCKA(1000, 1000).update`` on layers of width 768 at
   n = 256, timed per batch and extrapolated to 196 batches (50,000 samples); a 16 × 16
   block checked against float64.
6. pytorch-cka's README job on the same GPU: two random-weight ResNet-18s (18 layers: conv1,
   the 16 block convolutions, fc), 10,240 CIFAR-10-sized inputs in batches of 256;
   ``flashcka.compare`` against ``cka.compute_cka``, both against the float64 minibatch CKA
   of the same activations (cuDNN deterministic, so every pass sees the same numbers).
7. The tiled full-batch route: ``cka_matrix(12 layers of (n, 768), route="tiled")`` at
   n = 20,000 and, if that extrapolates to under 90 s, n = 100,000, against the floors
   L·n²·d at the measured tf32 and fp32 matmul rates (the SYRK count of
   bench/bench_tiled.py; the route multiplies in IEEE float32), and
   against float64 unbiased CKA from features (Song et al.'s formula, no n × n matrix).

Timing: CUDA events around each call, median of REPS after WARMUP calls (JIT included in
warm-up), inputs rotated over 3 buffers. --dry-run: CPU, Triton interpreter, tiny sizes (the
same code paths; the numbers mean nothing). Writes bench.json (rows + environment + commit)
and bench.md into --out; exit status 1 if any case raised or a result is wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"      # before triton is imported
import torch  # noqa: E402

import flashcka  # noqa: E402
from flashcka import backends  # noqa: E402
from flashcka.backends.triton_backend import TritonBackend  # noqa: E402
from conftest import call_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = "cpu" if DRY else "cuda"
WARMUP, REPS = (1, 1) if DRY else (2, 7)
SIZES = dict(
    gram_n=[8, 24] if DRY else [256, 1024, 4096],
    gram_d=[40, 300] if DRY else [4096, 197 * 768],
    pair=(6, 8) if DRY else (1000, 256),                  # (L, n)
    batch=6 if DRY else 256,
    matmul=64 if DRY else 8192,
    million=(12, 8, 32) if DRY else (1000, 256, 768),        # (L, n, d)
    peer=(48, 8) if DRY else (10240, 256),                  # (samples, batch)
    tiled=([40, 96], 12, 24) if DRY else ([20000, 100000], 12, 768),   # (ns, L, d)
)
rows: list[dict] = []
errors: list[str] = []


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def timeit(fn, inputs) -> float:
    """Median seconds of fn(inp), inputs rotated; CUDA events on the GPU."""
    for i in range(WARMUP):
        fn(inputs[i % len(inputs)])
    sync()
    return statistics.median(call_seconds(lambda: fn(inputs[i % len(inputs)]), DEV == "cuda")
                             for i in range(REPS))


T0 = time.perf_counter()
BUDGET = [float("inf")]            # seconds; --budget: cases past it are skipped, said so


def case(name):
    def wrap(f):
        def run(*a, **k):
            if time.perf_counter() - T0 > BUDGET[0]:
                errors.append(f"{name}{a}: skipped, past the {BUDGET[0]:.0f} s budget")
                return None
            try:
                return f(*a, **k)
            except Exception as e:  # noqa: BLE001 - recorded, the script goes on
                errors.append(f"{name}{a}: {type(e).__name__}: {e}")
                traceback.print_exc()
                if DEV == "cuda":
                    torch.cuda.empty_cache()
        return run
    return wrap


def randn(*shape, dtype=torch.float32, shift=2.0):
    return torch.randn(*shape, device=DEV).add_(shift).to(dtype)


@case("ceilings")
def ceilings() -> dict:
    n = (1 << 16) if DRY else (1 << 28)
    src = [randn(n) for _ in range(2)]
    dst = torch.empty_like(src[0])
    t = timeit(lambda s: dst.copy_(s), src)
    out = {"copy_gbytes_per_s": round(2 * n * 4 / t / 1e9, 1)}
    m = SIZES["matmul"]
    for mode, dt in (("fp32", torch.float32), ("tf32", torch.float32), ("bf16", torch.bfloat16)):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        xs = [randn(m, m, dtype=dt, shift=0) for _ in range(2)]
        t = timeit(lambda x: x @ x, xs)
        out[f"matmul_{mode}_tflops"] = round(2 * m ** 3 / t / 1e12, 2)
    torch.backends.cuda.matmul.allow_tf32 = False
    rows.append(dict(op="ceilings", **out))
    return out


@case("gram")
def gram(n: int, d: int, mode: str):
    dt = torch.bfloat16 if mode == "bf16" else torch.float32
    xs = [randn(n, d, dtype=dt) for _ in range(3)]
    be = TritonBackend(allow_tf32=mode == "tf32", allow_bf16=mode == "bf16")
    m = be.row_length(n, True)
    out = torch.empty(m, dtype=torch.float32, device=DEV)

    def ours(x):
        mu = x.mean(0, dtype=torch.float32)
        be.centered_gram_row(x, mu, out, kernel="linear", sigma=None, threshold=1.0,
                             unbiased=True)
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    t_mm = timeit(lambda x: x @ x.T, xs)
    t_ours = timeit(ours, xs)
    torch.backends.cuda.matmul.allow_tf32 = False
    # correctness of the timed path: against the torch backend's row in float64
    x = xs[0]
    ours(x)
    xc = x.double() - x.double().mean(0)
    want = torch.empty(n * n, dtype=torch.float64, device=DEV)
    backends.get("torch").centered_gram_row(xc, torch.zeros(d, dtype=torch.float64,
                                                             device=DEV), want,
                                            kernel="linear", sigma=None, threshold=1.0,
                                            unbiased=True)
    iu = torch.triu_indices(n, n, 1, device=DEV)
    ref = want.reshape(n, n)[iu[0], iu[1]] * 2 ** 0.5
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    limit = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2}[mode]
    if not rel <= limit:
        errors.append(f"gram n={n} d={d} {mode}: relative error {rel:.3g} > {limit}")
    rows.append(dict(op="gram+centring", n=n, d=d, mode=mode, ms=round(t_ours * 1e3, 4),
                     matmul_ms=round(t_mm * 1e3, 4), speedup_vs_matmul=round(t_mm / t_ours, 3),
                     tflops_gemm_equiv=round(2 * n * n * d / t_ours / 1e12, 2),
                     rel_error_vs_f64=float(f"{rel:.3g}")))


@case("pair")
def pair(ceil: dict, tf32: bool):
    L, n = SIZES["pair"]
    be = TritonBackend(allow_tf32=tf32)
    m = be.row_length(n, True)
    gs = [randn(2 * L, m, shift=0) for _ in range(2)]
    t = timeit(lambda g: be.pair(g[:L], g[L:]), gs)
    got = be.pair(gs[0][:L], gs[0][L:])
    want = gs[0][:L].double() @ gs[0][L:].double().T
    rel = ((got - want).norm() / want.norm()).item()
    if not rel <= (1e-2 if tf32 else 1e-5):
        errors.append(f"pair tf32={tf32}: relative error {rel:.3g}")
    gbs = 2 * L * m * 4 / t / 1e9
    copy_gbs = ceil.get("copy_gbytes_per_s")
    rate = ceil.get("matmul_tf32_tflops" if tf32 else "matmul_fp32_tflops")
    # The roofline: reading both row sets once at the copy bandwidth, or 2·L²·m flops at
    # the matmul rate of the same precision, whichever is longer (at L = 1000 the flops:
    # L/4 flops per byte read).
    floor = max(2 * L * m * 4 / (copy_gbs * 1e9), 2 * L * L * m / (rate * 1e12)) \
        if copy_gbs and rate else None
    rows.append(dict(op="pair", L=L, n=n, row_length=m, tf32=tf32, ms=round(t * 1e3, 4),
                     gbytes_per_s=round(gbs, 1), fraction_of_copy_bw=round(gbs / copy_gbs, 3)
                     if copy_gbs else None, tflops=round(2 * L * L * m / t / 1e12, 2),
                     roofline_ms=round(floor * 1e3, 4) if floor else None,
                     fraction_of_roofline=round(floor / t, 3) if floor else None,
                     rel_error_vs_f64=float(f"{rel:.3g}")))


def _models():
    sys.path.insert(0, str(Path(__file__).parent))
    import gpu_models
    if DRY:
        v = gpu_models.vit(image=32, patch=16, layers=2, heads=2, width=32, mlp=64)
        size = 32
    else:
        v = gpu_models.vit()
        size = 224
    rn, rblocks = gpu_models.resnet50()
    return (v[0].to(DEV).eval(), v[1], v[2]), (rn.to(DEV).eval(), rblocks), size


def _capture(model, modules, pre):
    acts, hooks = [], []
    for m, is_pre in zip(modules, pre):
        if is_pre:
            hooks.append(m.register_forward_pre_hook(lambda mod, inp: acts.append(inp[0])))
        else:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: acts.append(out[0] if isinstance(out, tuple) else out)))
    return acts, hooks


@case("minibatch")
def minibatch():
    (vit, mods, pre), (rn, rmods), size = _models()
    b = SIZES["batch"]
    imgs = [torch.randn(b, 3, size, size, device=DEV) for _ in range(2)]
    amp = torch.autocast(DEV, dtype=torch.bfloat16)
    with torch.no_grad(), amp:
        t_vit = timeit(vit, imgs)
        t_rn = timeit(rn, imgs)
        va, vh = _capture(vit, mods, pre)
        ra, rh = _capture(rn, rmods, [False] * len(rmods))
        vit(imgs[0])
        rn(imgs[0])
    for h in vh + rh:
        h.remove()
    assert len(va) == len(mods) and len(ra) == len(rmods), (len(va), len(ra))
    for impl, mode in (("triton", ""), ("triton", "tf32"), ("triton", "bf16"),
                       ("torch", "")):
        tb = backends.get("triton")
        old = tb.allow_tf32, tb.allow_bf16
        tb.allow_tf32, tb.allow_bf16 = mode == "tf32", mode == "bf16"
        try:
            acc = flashcka.MinibatchCKA(len(va), len(ra), backend=impl)
            t = timeit(lambda _: acc.update(va, ra), [None])
        finally:
            tb.allow_tf32, tb.allow_bf16 = old
        rows.append(dict(op="MinibatchCKA.update", impl=impl + ("+" + mode if mode else ""),
                         batch=b, layers_a=len(va), layers_b=len(ra),
                         act_dtype=str(va[0].dtype), ms=round(t * 1e3, 3),
                         forward_ms=round((t_vit + t_rn) * 1e3, 3),
                         vit_forward_ms=round(t_vit * 1e3, 3),
                         resnet_forward_ms=round(t_rn * 1e3, 3),
                         fraction_of_forward=round(t / (t_vit + t_rn), 3)))


def hsic_u_from_grams(ka, kb):
    """Song et al.'s unbiased HSIC for every pair of float64 Grams (La, n, n) × (Lb, n, n)."""
    n = ka.shape[-1]
    ka, kb = ka.clone(), kb.clone()
    ka.diagonal(dim1=-2, dim2=-1).zero_()
    kb.diagonal(dim1=-2, dim2=-1).zero_()
    ra, rb = ka.sum(-1), kb.sum(-1)
    tr = ka.flatten(1) @ kb.flatten(1).T
    return (tr + ra.sum(-1)[:, None] * rb.sum(-1)[None, :] / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ra @ rb.T) / (n * (n - 3))


def minibatch_cka_f64(batches_a, batches_b):
    """Nguyen et al.'s minibatch CKA in float64: batches_x[b] a list of (n, ...) layers."""
    cross = sa = sb = 0
    for xa, xb in zip(batches_a, batches_b):
        ka = torch.stack([(lambda z: z @ z.T)(x.reshape(x.shape[0], -1).double()) for x in xa])
        kb = torch.stack([(lambda z: z @ z.T)(x.reshape(x.shape[0], -1).double()) for x in xb])
        cross = cross + hsic_u_from_grams(ka, kb)
        sa = sa + hsic_u_from_grams(ka, ka).diagonal()
        sb = sb + hsic_u_from_grams(kb, kb).diagonal()
    return cross / (sa[:, None] * sb[None, :]).sqrt()


def cka_u_from_features(xs):
    """Unbiased linear CKA of every pair of (n, d_i) layers in float64 without an n × n
    matrix (Song et al.): tr(K̃L̃) = ‖XᵀY‖² − Σ k_i l_i, 1ᵀK̃1 = ‖Xᵀ1‖² − Σ k_i,
    K̃1 = X Xᵀ1 − k, with k the squared row norms; features centred first (HSIC₁ does not
    change: U-centring removes row and column constants)."""
    n = xs[0].shape[0]
    cs = [x.double() - x.double().mean(0) for x in xs]
    g = torch.cat(cs, 1)
    g = g.T @ g
    edges = [0]
    for c in cs:
        edges.append(edges[-1] + c.shape[1])
    L = len(cs)
    tr = torch.empty(L, L, dtype=torch.float64, device=g.device)
    for i in range(L):
        for j in range(L):
            tr[i, j] = g[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].square().sum()
    k = torch.stack([c.square().sum(1) for c in cs])                     # (L, n)
    tr -= k @ k.T
    s = torch.stack([c.sum(0).square().sum() for c in cs]) - k.sum(1)
    r = torch.stack([c @ c.sum(0) for c in cs]) - k                      # K̃1, (L, n)
    h = (tr + s[:, None] * s[None, :] / ((n - 1) * (n - 2)) - 2 / (n - 2) * r @ r.T) \
        / (n * (n - 3))
    return h / (h.diagonal()[:, None] * h.diagonal()[None, :]).sqrt()


def _correlated(L, n, d):
    """L layers (n, d) sharing a random signal with weights from 0.2 to 2, so the CKAs
    spread over (0, 1) rather than sit at the independent-noise floor."""
    z = torch.randn(n, d, device=DEV)
    return [z * (0.2 + 1.8 * i / max(L - 1, 1)) + randn(n, d) for i in range(L)]


@case("million")
def million_pairs():
    L, n, d = SIZES["million"]
    sets = [(_correlated(L, n, d), _correlated(L, n, d)) for _ in range(2)]
    acc = flashcka.MinibatchCKA(L, L)
    t = timeit(lambda s: acc.update(*s), sets)
    check = flashcka.MinibatchCKA(L, L)
    for a, b in sets:
        check.update(a, b)
    k = min(16, L)
    got = check.compute()[:k, :k].to(DEV)
    want = minibatch_cka_f64([a[:k] for a, _ in sets], [b[:k] for _, b in sets])
    err = ((got - want).abs().max()).item()
    if not err <= 1e-3:
        errors.append(f"million-pair job: max |CKA - float64| {err:.3g} > 1e-3")
    rows.append(dict(op="million-pair job", layers_a=L, layers_b=L, n=n, d=d,
                     backend=backends.select("auto", sets[0][0][0]).name,
                     update_ms=round(t * 1e3, 3), batches=196,
                     extrapolated_s=round(196 * t, 2),
                     max_abs_err_vs_f64_16x16=float(f"{err:.3g}")))


class _Batches:
    """(input, target) batches of one tensor already on the device, with a length (pytorch-cka
    sizes its progress bar by it)."""

    def __init__(self, data, size):
        self.data, self.size = data, size

    def __len__(self):
        return -(-len(self.data) // self.size)

    def __iter__(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i:i + self.size], None


@case("peer")
def peer_job():
    sys.path.insert(0, str(Path(__file__).parent))
    import gpu_models
    from cka import compute_cka
    N, B = SIZES["peer"]
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.manual_seed(1)
    m1, names = gpu_models.resnet18()
    m2, _ = gpu_models.resnet18()
    m1, m2 = m1.to(DEV).eval(), m2.to(DEV).eval()
    data = torch.rand(N, 3, 32, 32, device=DEV)
    loader = _Batches(data, B)
    acts = {}

    def hook(key):
        return lambda mod, inp, out: acts.setdefault(key, []).append(out.detach().clone())
    hs = [dict(m.named_modules())[nm].register_forward_hook(hook((k, nm)))
          for k, m in (("a", m1), ("b", m2)) for nm in names]
    with torch.no_grad():
        for x, _ in loader:
            m1(x)
            m2(x)
    for h in hs:
        h.remove()
    nb = len(loader)
    want = minibatch_cka_f64([[acts["a", nm][b] for nm in names] for b in range(nb)],
                             [[acts["b", nm][b] for nm in names] for b in range(nb)])
    del acts
    jobs = {
        "flashcka.compare": lambda _: flashcka.compare(
            m1, m2, loader, layers_a=names, layers_b=names, progress=False).matrix,
        "pytorch-cka compute_cka": lambda _: compute_cka(
            m1, m2, loader, layers=names, model2_layers=names, device=DEV,
            progress=False)[0],
    }

    def forward(_):
        with torch.no_grad():
            for x, _y in loader:
                m1(x)
                m2(x)
    res = {"forward passes alone": dict(seconds=_wall(forward, reps=3))}
    for name, fn in jobs.items():
        out = fn(None)
        err = ((out.double().to(DEV) - want).abs().max()).item()
        res[name] = dict(seconds=_wall(fn, reps=3), max_abs_err_vs_f64=float(f"{err:.3g}"))
    fwd = res["forward passes alone"]["seconds"]
    for name in jobs:
        res[name]["seconds_beyond_forward"] = round(res[name]["seconds"] - fwd, 4)
    ours, peer = res["flashcka.compare"], res["pytorch-cka compute_cka"]
    for name, r in res.items():
        rows.append(dict(op="pytorch-cka job (ResNet-18 x2, 18 x 18 layers)", impl=name,
                         samples=N, batch=B, **r))
    rows.append(dict(op="pytorch-cka job ratio", speedup=round(peer["seconds"] /
                                                               ours["seconds"], 2),
                     speedup_beyond_forward=round(peer["seconds_beyond_forward"] /
                                                  ours["seconds_beyond_forward"], 2)
                     if ours["seconds_beyond_forward"] > 0 else None,
                     error_ratio=round(peer["max_abs_err_vs_f64"] /
                                       max(ours["max_abs_err_vs_f64"], 1e-300), 2)))
    torch.backends.cudnn.deterministic = False


def _wall(fn, reps=3):
    """Median wall-clock seconds of fn(None) over reps runs, after one warm-up, synchronised."""
    fn(None)
    ts = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn(None)
        sync()
        ts.append(time.perf_counter() - t)
    return round(statistics.median(ts), 4)


@case("tiled")
def tiled_route(ceil: dict):
    ns, L, d = SIZES["tiled"]
    flashcka.cka_matrix(_correlated(L, 64, d), route="tiled", progress=False)   # JIT warm-up
    for n in ns:
        if rows and rows[-1].get("op") == "tiled route" and rows[-1]["n"] < n:
            prev = rows[-1]
            predicted = prev["seconds"] * (n / prev["n"]) ** 2
            if predicted > (1e9 if DRY else 90):
                errors.append(f"tiled n={n}: skipped, n={prev['n']} took {prev['seconds']} s "
                              f"(about {predicted:.0f} s predicted)")
                return
        xs = _correlated(L, n, d)
        sync()
        t = time.perf_counter()
        got = flashcka.cka_matrix(xs, route="tiled", progress=False)
        sync()
        sec = time.perf_counter() - t
        want = cka_u_from_features(xs)
        err = ((got.double().to(DEV) - want).abs().max()).item()
        if not err <= 1e-3:
            errors.append(f"tiled n={n}: max |CKA - float64| {err:.3g} > 1e-3")
        floors = {p: L * n * n * d / (ceil[f"matmul_{p}_tflops"] * 1e12)
                  for p in ("tf32", "fp32") if ceil.get(f"matmul_{p}_tflops")}
        rows.append(dict(op="tiled route", n=n, layers=L, d=d, seconds=round(sec, 3),
                         **{f"{p}_floor_s": round(f, 4) for p, f in floors.items()},
                         **{f"ratio_to_{p}_floor": round(sec / f, 2)
                            for p, f in floors.items()},
                         max_abs_err_vs_f64=float(f"{err:.3g}")))
        del xs
        if DEV == "cuda":
            torch.cuda.empty_cache()


def environment() -> dict:
    env = dict(python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, flashcka=flashcka.__version__, dry_run=DRY,
               device=torch.cuda.get_device_name() if DEV == "cuda" else platform.processor())
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    env["commit"] = ""
    if (ROOT / ".whl/COMMIT").is_file():     # bench/gpu_prep.sh's, right before the call
        env["commit"] = (ROOT / ".whl/COMMIT").read_text().strip().replace("\n", " ")
    else:
        try:
            env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                           capture_output=True, timeout=10).stdout.strip()
        except OSError:
            pass
    try:
        env["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            text=True, capture_output=True, timeout=20).stdout.strip()
    except OSError:
        env["driver"] = None
    return env


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--budget", type=float, default=float("inf"),
                    help="seconds; later cases are skipped (and reported) past it")
    args = ap.parse_args()
    BUDGET[0] = args.budget
    if not DRY and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ceil = ceilings() or {}
    ns = SIZES["gram_n"]
    for n in ns[:-1]:                          # the largest n last: the costliest cases
        for d in SIZES["gram_d"]:
            for mode in ("fp32", "tf32", "bf16"):
                gram(n, d, mode)
    for tf32 in (False, True):
        pair(ceil, tf32)
    minibatch()
    million_pairs()
    peer_job()
    tiled_route(ceil)
    for d in SIZES["gram_d"]:
        for mode in ("fp32", "tf32", "bf16"):
            gram(ns[-1], d, mode)
    result = dict(environment=environment(), seconds=round(time.perf_counter() - t0, 1),
                  rows=rows, errors=errors)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    lines = [f"# GPU benchmarks ({'DRY RUN, numbers meaningless' if DRY else 'measured'})",
             "", "```", json.dumps(result["environment"]), "```", ""]
    for r in rows:
        lines.append("- " + ", ".join(f"{k}={v}" for k, v in r.items()))
    lines += ["", f"errors: {errors or 'none'}"]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[5:]))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
