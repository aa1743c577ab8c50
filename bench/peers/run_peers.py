"""Same all-pairs minibatch CKA job through flashcka and through other CKA packages.

    pip install --no-deps -r bench/peers/requirements-peers.txt   # see the file's notes
    python bench/peers/run_peers.py [--layers 12] [--n 256] [--batches 4] [--only NAME ...]

Synthetic layered activations: L + L layers (widths geometric 256..4096), N = n·batches
samples, each layer a random linear map of a shared 32-dim latent plus layer-dependent noise
plus a non-zero per-feature mean (as real activations have; it is what exposes float32
cancellation in raw Grams). Every package runs the way its README shows its users: on an
``nn.Module`` whose hooked submodules emit the stored activations, over a DataLoader of
``batches`` batches of ``n`` (no shuffling, so every package sees the same batches).

Each run is a fresh subprocess (``--child``): wall time of the whole call, and peak RSS
above the RSS after loading the data (``/proc/self/clear_refs`` resets the peak; falls back
to ru_maxrss). The result is compared (max |Δ| over the L×L matrix) with float64 numpy
references written here, independent of flashcka:

* ``mb_debiased``: minibatch CKA (Nguyen et al. 2021): Σ_b HSIC₁ / sqrt(Σ_b HSIC₁ · Σ_b HSIC₁),
  HSIC₁ by explicit U-centering per batch — the estimator every package claims.
* ``avg_biased``: the mean over batches of each batch's biased (HKH) CKA.
* ``avg_debiased``: the mean over batches of each batch's debiased CKA.
* ``last_debiased``: the last batch's debiased CKA alone.
* ``full_biased``: biased CKA of all N samples at once.

The table goes to bench/results/peers-<machine>.md (and .json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"

IMPORTS = {"flashcka": "flashcka", "torch-cka": "torch_cka", "ckatorch": "ckatorch",
           "cka-pytorch": "cka_pytorch", "pytorch-cka": "cka", "torch": "torch"}
# What reading each package's source shows (their installed code; none is copied here).
NOTES = {
    "flashcka MinibatchCKA": "features centered before the Gram; float64 accumulators",
    "flashcka compare": "hooks turn each output into its centered Gram at once",
    "torch-cka": "raw float32 Grams (no centering); HSIC₁ per pair with n×n×n products",
    "ckatorch (cka_batch)": "casts to float64",
    "ckatorch (CKA hooks)": "needs 3-D (batch, samples, features) outputs; each batch "
                            "overwrites the previous one: result = last batch",
    "cka-pytorch": "raw float32 Grams; adds 1e-4 under the denominator's sqrt",
    "pytorch-cka": "raw float32 Grams; clamps results to [0, 1]",
}
RUNNERS = {}   # name -> (package for the version, API description, function)


def runner(name, package, api):
    def deco(fn):
        RUNNERS[name] = (package, api, fn)
        return fn
    return deco


# ---------------------------------------------------------------- data and references
def make_data(layers: int, n: int, batches: int, seed: int = 0):
    """Two lists of `layers` float32 arrays (N, d_l): correlated layers with non-zero means."""
    rng = np.random.default_rng(seed)
    N = n * batches
    widths = np.geomspace(256, 4096, layers).round().astype(int)
    # batches differ in signal strength (as unshuffled, class-ordered data would): this
    # separates the pooled minibatch estimator from a mean of per-batch CKAs
    z = rng.standard_normal((N, 32)) * np.repeat(0.5 + np.arange(batches), n)[:, None]

    def side(shift):
        out = []
        for i, d in enumerate(widths):
            w = rng.standard_normal((32, d)) / np.sqrt(32)
            noise = 0.3 + 1.5 * ((i + shift) % layers) / layers
            mean = 2.0 + rng.standard_normal(d)
            x = np.tanh(z @ w) + noise * rng.standard_normal((N, d)) + mean
            out.append(x.astype(np.float32))
        return out

    return side(0), side(layers // 3)


def _ucenter(k):
    n = k.shape[0]
    k = k.copy()
    np.fill_diagonal(k, 0.0)
    r = k.sum(1)
    m = r / (n - 2) - r.sum() / (2 * (n - 1) * (n - 2))
    u = k - m[:, None] - m[None, :]
    np.fill_diagonal(u, 0.0)
    return u


def _hcenter(k):
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def _cka(ga, gb):
    """CKA from stacked centered Grams (LA, n, n), (LB, n, n)."""
    cross = np.einsum("aij,bij->ab", ga, gb)
    sa = np.einsum("aij,aij->a", ga, ga)
    sb = np.einsum("aij,aij->a", gb, gb)
    return cross, sa, sb


def references(A, B, n, batches):
    """float64 numpy references (see the module docstring), all (L_A, L_B)."""
    cross_u = sa_u = sb_u = 0.0
    per_b, per_u = [], []
    for b in range(batches):
        sl = slice(b * n, (b + 1) * n)
        ka = [x[sl].astype(np.float64) @ x[sl].astype(np.float64).T for x in A]
        kb = [y[sl].astype(np.float64) @ y[sl].astype(np.float64).T for y in B]
        c, sa, sb = _cka(np.stack([_ucenter(k) for k in ka]), np.stack([_ucenter(k) for k in kb]))
        norm = n * (n - 3)
        cross_u, sa_u, sb_u = cross_u + c / norm, sa_u + sa / norm, sb_u + sb / norm
        per_u.append(c / np.sqrt(sa[:, None] * sb[None, :]))
        c, sa, sb = _cka(np.stack([_hcenter(k) for k in ka]), np.stack([_hcenter(k) for k in kb]))
        per_b.append(c / np.sqrt(sa[:, None] * sb[None, :]))
    full_a = np.stack([_hcenter(x.astype(np.float64) @ x.astype(np.float64).T) for x in A])
    full_b = np.stack([_hcenter(y.astype(np.float64) @ y.astype(np.float64).T) for y in B])
    c, sa, sb = _cka(full_a, full_b)
    return {
        "mb_debiased": cross_u / np.sqrt(sa_u[:, None] * sb_u[None, :]),
        "avg_biased": np.mean(per_b, 0),
        "avg_debiased": np.mean(per_u, 0),
        "last_debiased": per_u[-1],
        "full_biased": c / np.sqrt(sa[:, None] * sb[None, :]),
    }


# ---------------------------------------------------------------- the job, as a model
def as_models(A, B):
    """Two nn.Modules whose submodules ``layers.i`` output the stored activations of the
    samples whose indices are the input batch, and a DataLoader of (indices, indices)."""
    import torch
    from torch import nn

    class Emit(nn.Module):
        def __init__(self, acts, view):
            super().__init__()
            self.acts, self.view = acts, view

        def forward(self, idx):
            out = self.acts[idx]
            return out.unsqueeze(0) if self.view == "1nd" else out

    class Stored(nn.Module):
        def __init__(self, acts, view=None):
            super().__init__()
            self.layers = nn.ModuleList(Emit(torch.from_numpy(a), view) for a in acts)
            self.scale = nn.Parameter(torch.ones(()))   # some packages look for a parameter

        def forward(self, x):
            out = None
            for m in self.layers:
                out = m(x)
            return out

    names = [f"layers.{i}" for i in range(len(A))]
    return Stored, A, B, names


def loader(N, n, with_target=True):
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    idx = torch.arange(N)
    ds = TensorDataset(idx, idx) if with_target else TensorDataset(idx)
    return DataLoader(ds, batch_size=n, shuffle=False)


# ---------------------------------------------------------------- runners
def _auto_backend():
    import torch
    from flashcka import backends
    return backends.select("auto", torch.zeros(4, 4)).name


@runner("flashcka MinibatchCKA", "flashcka", "MinibatchCKA(L, L).update(xs, ys) per batch")
def run_flashcka_minibatch(A, B, n, batches):
    import torch
    import flashcka
    acc = flashcka.MinibatchCKA(len(A), len(B))
    ta = [torch.from_numpy(a) for a in A]
    tb = [torch.from_numpy(b) for b in B]
    for b in range(batches):
        sl = slice(b * n, (b + 1) * n)
        acc.update([x[sl] for x in ta], [y[sl] for y in tb])
    return acc.compute().numpy(), f"backend auto → {_auto_backend()}"


@runner("flashcka MinibatchCKA (torch backend)", "flashcka",
        "MinibatchCKA(L, L, backend=\"torch\").update(xs, ys) per batch")
def run_flashcka_minibatch_torch(A, B, n, batches):
    import torch
    import flashcka
    acc = flashcka.MinibatchCKA(len(A), len(B), backend="torch")
    ta = [torch.from_numpy(a) for a in A]
    tb = [torch.from_numpy(b) for b in B]
    for b in range(batches):
        sl = slice(b * n, (b + 1) * n)
        acc.update([x[sl] for x in ta], [y[sl] for y in tb])
    return acc.compute().numpy(), "pure PyTorch backend"


@runner("plain torch (features centred)", "torch",
        "per batch: U-centred Grams of centred features, one G_A G_Bᵀ (what a user writes)")
def run_plain_torch(A, B, n, batches):
    import torch

    def ucenter(k):
        m = k.shape[0]
        k = k.clone()
        k.fill_diagonal_(0)
        r = k.sum(1, keepdim=True)
        u = k - r / (m - 2) - r.T / (m - 2) + r.sum() / ((m - 1) * (m - 2))
        return u.fill_diagonal_(0)

    def rows(xs):
        out = []
        for x in xs:
            xc = x - x.mean(0)
            out.append(ucenter(xc @ xc.T).reshape(-1))
        return torch.stack(out)

    ta = [torch.from_numpy(a) for a in A]
    tb = [torch.from_numpy(b) for b in B]
    cross = torch.zeros(len(A), len(B), dtype=torch.float64)
    sa = torch.zeros(len(A), dtype=torch.float64)
    sb = torch.zeros(len(B), dtype=torch.float64)
    for b in range(batches):
        sl = slice(b * n, (b + 1) * n)
        ga, gb = rows([x[sl] for x in ta]), rows([y[sl] for y in tb])
        cross += (ga @ gb.T).double()
        sa += (ga * ga).sum(1).double()
        sb += (gb * gb).sum(1).double()
    return (cross / torch.sqrt(sa[:, None] * sb[None, :])).numpy(), "float32, no package"


@runner("flashcka compare", "flashcka", "flashcka.compare(model_a, model_b, loader) (hooks)")
def run_flashcka_compare(A, B, n, batches):
    import flashcka
    compare = flashcka.compare if callable(getattr(flashcka, "compare", None)) else \
        __import__("flashcka.compare", fromlist=["compare"]).compare
    Stored, A, B, names = as_models(A, B)
    res = compare(Stored(A), Stored(B), loader(n * batches, n), layers_a=names,
                           layers_b=names, progress=False)
    return res.matrix.numpy(), f"backend auto → {_auto_backend()}"


@runner("torch-cka", "torch-cka", "torch_cka.CKA(m1, m2, layers).compare(loader)")
def run_torch_cka(A, B, n, batches):
    from torch_cka import CKA
    Stored, A, B, names = as_models(A, B)
    cka = CKA(Stored(A), Stored(B), model1_name="A", model2_name="B", model1_layers=names,
              model2_layers=names, device="cpu")
    cka.compare(loader(n * batches, n, with_target=False))
    return cka.export()["CKA"].numpy(), ""


@runner("ckatorch (cka_batch)", "ckatorch",
        "ckatorch.cka_batch(x, y) on (batches, n, d) stacks, one call per pair")
def run_ckatorch_functional(A, B, n, batches):
    import torch
    from ckatorch import cka_batch
    ta = [torch.from_numpy(a).reshape(batches, n, -1) for a in A]
    tb = [torch.from_numpy(b).reshape(batches, n, -1) for b in B]
    out = np.zeros((len(A), len(B)))
    for i, x in enumerate(ta):
        for j, y in enumerate(tb):
            out[i, j] = float(cka_batch(x, y))
    return out, "all batches held at once (the function takes every batch in one call)"


@runner("ckatorch (CKA hooks)", "ckatorch", "ckatorch.CKA(m1, m2, layers)(loader, epochs=1)")
def run_ckatorch_hooks(A, B, n, batches):
    from ckatorch import CKA
    Stored, A, B, names = as_models(A, B)
    note = ""
    try:   # (n, d) layer outputs, as our models give them
        CKA(Stored(A), Stored(B), layers=names, first_name="A", second_name="B")(
            loader(n * batches, n, with_target=False), epochs=1)
    except Exception as e:  # noqa: BLE001
        note = (f"(n, d) outputs fail with "
                f"{type(e).__name__}; run with outputs viewed as (1, n, d)")
    cka = CKA(Stored(A, "1nd"), Stored(B, "1nd"), layers=names, first_name="A",
              second_name="B")
    return cka(loader(n * batches, n, with_target=False), epochs=1).numpy(), note


@runner("cka-pytorch", "cka-pytorch",
        "CKACalculator(m1, m2, layers).calculate_cka_matrix(loader, num_epochs=1)")
def run_cka_pytorch(A, B, n, batches):
    import torch
    from cka_pytorch import CKACalculator
    Stored, A, B, names = as_models(A, B)
    calc = CKACalculator(Stored(A), Stored(B), model1_layers=names, model2_layers=names,
                         device=torch.device("cpu"), verbose=False)
    return calc.calculate_cka_matrix(loader(n * batches, n), num_epochs=1).numpy(), ""


@runner("pytorch-cka", "pytorch-cka", "cka.compute_cka(m1, m2, loader, layers=...)")
def run_pytorch_cka(A, B, n, batches):
    from cka import compute_cka
    Stored, A, B, names = as_models(A, B)
    out = compute_cka(Stored(A), Stored(B), loader(n * batches, n), layers=names,
                      model2_layers=names, device="cpu", progress=False)
    return out[0].numpy(), ""


# ---------------------------------------------------------------- child process
def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def child(name, data_path, out_path, n, batches, repeat):
    import torch
    d = np.load(data_path)
    L = sum(1 for k in d.files if k.startswith("a"))
    A = [d[f"a{i}"] for i in range(L)]
    B = [d[f"b{i}"] for i in range(L)]
    import importlib
    importlib.import_module(IMPORTS[RUNNERS[name][0]])   # import time is not timed
    rss0 = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")   # reset the peak-RSS mark
        hwm_reset = True
    except OSError:
        hwm_reset = False
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rec = {"name": name, "threads": torch.get_num_threads()}
    times = []
    try:
        for _ in range(repeat):   # the first call includes one-time costs (thread pools, ...)
            t = time.perf_counter()
            mat, note = RUNNERS[name][2](A, B, n, batches)
            times.append(time.perf_counter() - t)
            if len(times) == 1:   # memory of the first call alone (later ones keep garbage)
                peak = _status_kb("VmHWM") if hwm_reset else resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss
        rec["seconds"], rec["first_seconds"] = min(times), times[0]
        np.save(out_path + ".npy", np.asarray(mat, dtype=np.float64))
        rec["note"] = note
    except Exception as e:  # noqa: BLE001
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc()[-2000:]
    if not times:
        peak = _status_kb("VmHWM") if hwm_reset else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss
    rec["peak_mb"] = (peak - rss0) / 1024 if hwm_reset else max(0, peak - max0) / 1024
    Path(out_path + ".json").write_text(json.dumps(rec))


# ---------------------------------------------------------------- driver
def _version(pkg):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine():
    sys.path.insert(0, str(HERE.parent))
    try:
        from conftest import device_name, machine_slug
        return device_name("cpu"), machine_slug()
    finally:
        sys.path.pop(0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3,
                   help="calls per package (best time reported, and the first call's)")
    p.add_argument("--only", nargs="*", default=None, help="runner names (substrings)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a.child, a.data, a.result, a.n, a.batches, a.repeat)

    A, B = make_data(a.layers, a.n, a.batches)
    t = time.perf_counter()
    refs = references(A, B, a.n, a.batches)
    print(f"references: {time.perf_counter() - t:.1f} s", flush=True)
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "acts.npz"
    np.savez(data, **{f"a{i}": x for i, x in enumerate(A)}, **{f"b{i}": y for i, y in enumerate(B)})
    rows = []
    for name, (pkg, api, _) in RUNNERS.items():
        if a.only and not any(s in name for s in a.only):
            continue
        version = _version(pkg)
        rec = {"name": name, "package": pkg, "version": version, "api": api}
        if version is None:
            rec["error"] = f"{pkg} is not installed"
        else:
            out = str(tmp / name.replace(" ", "_").replace("(", "").replace(")", ""))
            cmd = [sys.executable, __file__, "--child", name, "--data", str(data), "--result",
                   out, "--n", str(a.n), "--batches", str(a.batches),
                   "--repeat", str(a.repeat)]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "TQDM_DISABLE": "1"})
            try:
                rec.update(json.loads(Path(out + ".json").read_text()))
            except OSError:
                rec["error"] = f"child exited {proc.returncode}: {proc.stderr[-500:]}"
            if Path(out + ".npy").exists():
                mat = np.load(out + ".npy")
                rec["dev"] = {k: float(np.nanmax(np.abs(mat - r))) for k, r in refs.items()}
                rec["nan"] = int(np.isnan(mat).sum())
                order = sorted(rec["dev"], key=rec["dev"].get)
                rec["closest"] = order[0]
                # float32 error can exceed the gap between estimators: then say so
                rec["ambiguous"] = rec["dev"][order[1]] < 2 * rec["dev"][order[0]]
        rows.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}), flush=True)

    cpu, slug = machine()
    out = a.out or RESULTS / f"peers-{slug}.md"
    old = out.with_suffix(".json")
    if a.only and old.exists():   # re-ran some runners: keep the stored rows of the others
        prev = json.loads(old.read_text())
        same_job = all(prev["args"].get(k) == getattr(a, k) for k in ("layers", "n", "batches"))
        if same_job:
            done = {r["name"] for r in rows}
            rows = [r if r["name"] not in done else next(x for x in rows if x["name"] == r["name"])
                    for r in prev["rows"]] + [r for r in rows
                                              if r["name"] not in {x["name"] for x in prev["rows"]}]
    spread = {k: float(np.abs(r - refs["mb_debiased"]).max()) for k, r in refs.items()}
    md = render(rows, a, cpu, spread)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": cpu, "args": vars(a) | {"out": str(out)}, "rows": rows,
         "reference_spread": spread}, indent=1, default=str))
    print(md)
    print(f"written: {out}")


def render(rows, a, cpu, spread):
    import torch
    widths = np.geomspace(256, 4096, a.layers).round().astype(int)
    lines = [
        f"All-pairs minibatch CKA, {a.layers} × {a.layers} layers (widths {widths[0]}–"
        f"{widths[-1]}), {a.batches} batches of n = {a.n}, float32 activations with "
        f"non-zero means; {cpu}, {os.cpu_count()} cores, torch {torch.__version__} (CPU). "
        f"Wall time of one whole call in a fresh process, best of {a.repeat} (first call in "
        "parentheses); peak RSS of the first call above the loaded data. "
        "Deviation: max |Δ| against float64 references (numpy, explicit U-centering): "
        "**minibatch debiased** (what every package claims), and the closest of: "
        "mean of per-batch biased CKA, mean of per-batch debiased CKA, last batch only, "
        "full-batch biased.",
        "",
        "| package | call | time (s) best (first) | peak RSS Δ (MB) | max dev. vs minibatch debiased "
        "| closest estimator (max dev.) | notes |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        name = f"{r['name']}" + (f" {r['version']}" if r.get("version") else "")
        if "dev" not in r:
            lines.append(f"| {name} | `{r['api']}` | – | – | – | – | failed: "
                         f"{r.get('error', '?')[:160]} |")
            continue
        c = r["closest"]
        notes = "; ".join(x for x in (NOTES.get(r["name"], ""), r.get("note", ""),
                                      f"{r['nan']} NaN" if r.get("nan") else "") if x)
        lines.append(f"| {name} | `{r['api']}` | {r['seconds']:.2f} ({r.get('first_seconds', 0):.2f}) | "
                     f"{r['peak_mb']:.0f} | "
                     f"{r['dev']['mb_debiased']:.1e} | {c} ({r['dev'][c]:.1e})"
                     f"{' (ambiguous)' if r.get('ambiguous') else ''} | {notes} |")
    lines += ["", "How far apart the estimators are on this data (max |Δ| from minibatch "
              "debiased): " + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()
                                        if k != "mb_debiased") + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
