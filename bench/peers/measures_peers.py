"""Procrustes, CCA, SVCCA and PWCCA on one all-pairs job through flashcka, netrep and anatome:
times (the packages taken in turn within one process, so that the ratios hold on a shared
machine) and agreement with flashcka's float64 results, written as a markdown table.

    python bench/peers/measures_peers.py [--layers 12] [--n 2000] [--max-width 1024]
        [--threads 1] [--check-every 4] [--out bench/results/amd-epyc-zen5-2cpu/measures.md]

The job: L + L layers (two networks), widths geometric 64..max-width, n samples, float32
activations (tanh of a random map of a shared 48-dim latent, plus noise and a non-zero mean);
every (i, j) pair. Every package gets the same float32 arrays and runs one call per pair as
its README shows (netrep: ``LinearMetric(alpha).fit_score``; anatome: the functions of
``anatome.distance``); flashcka one ``similarity_matrix`` call per measure (float64 inside),
and once more with ``dtype=torch.float32`` (its time and max |Δ| from the float64 result).
flashcka is timed again after each peer: its time in a row is the mean of the runs before
and after that peer (the load of a shared machine drifts over a peer's minutes).
Each library is called once on a small pair first (first-call costs).

Agreement: the peers again on float64 copies of the layers, on every ``check-every``-th
layer of each side (and the widest), against flashcka's entries, in the peer's own units:

* netrep ``LinearMetric(alpha=1)`` (Procrustes): its angle vs arccos(S).
* netrep ``LinearMetric(alpha=0)`` (CCA): its angle θ, after zero-padding the narrower
  layer, has cos θ = Σρ_i / sqrt(d_A d_B); compared as Σρ_i (= flashcka's mean × min(d_A,
  d_B)). Same canonical correlations, another normalisation where the widths differ.
* anatome ``orthogonal_procrustes_distance`` = 1 − S; ``cca(x, y, "svd")`` diag: the ρ_i.
* anatome ``svcca_distance``, ``pwcca_distance``: 1 − score; expected to disagree (see
  ``similarity_matrix``'s docstring and measures.md): its SVCCA reduction takes the SVD of
  the uncentred layer, counts |s| rather than s² (variance) and keeps one direction fewer
  than needed to reach the threshold (anatome #27); its PWCCA orthonormalises the CCA
  coefficients instead of the canonical variates and sums |⟨x_k, ·⟩| over samples of the
  uncentred layer instead of over neurons (anatome #30).

Installing the peers: neither is on the package registry. Install each from its source
(GitHub ahwillia/netrep, moskomule/anatome) with ``pip install --no-deps DIR``; netrep needs
numpy, scipy, scikit-learn and tqdm, anatome torch and torchvision (imported through
tests/hub_models.load_torchvision, which copes with a torchvision whose compiled ops do not
match torch). A peer that does not import is left out with the reason.

``--threads 1`` (default): torch, MKL, OpenBLAS and OpenMP with one thread each, for every
package. On the shared 2-core box, two OpenMP threads spin-waiting against other jobs made
single SVDs 10–30× slower at random; one thread keeps the ratios stable.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def setup_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def make_data(layers: int, n: int, max_width: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    widths = np.geomspace(64, max_width, layers).round().astype(int)
    z = rng.standard_normal((n, 48))

    def side():
        return [(np.tanh(z @ rng.standard_normal((48, d)) / 4)
                 + 0.5 * rng.standard_normal((n, d)) + rng.uniform(-2, 2, d)).astype(np.float32)
                for d in widths]
    return side(), side(), widths


def peers():
    """name -> {measure: fn(x, y) -> the peer's number}, and name -> why it is missing."""
    import torch
    out, missing = {}, {}
    try:
        from netrep.metrics import LinearMetric
        out["netrep"] = {
            "procrustes": lambda x, y: LinearMetric(alpha=1.0).fit_score(x, y),
            "cca": lambda x, y: LinearMetric(alpha=0.0).fit_score(x, y),
        }
    except Exception as e:  # noqa: BLE001 - report any import failure
        missing["netrep"] = f"{type(e).__name__}: {e}"
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from hub_models import load_torchvision
        load_torchvision()
        from anatome import distance as ad
        t = torch.from_numpy
        out["anatome"] = {
            "procrustes": lambda x, y: float(ad.orthogonal_procrustes_distance(t(x), t(y))),
            "cca": lambda x, y: float(ad.cca(t(x), t(y), "svd")[2].mean()),
            "svcca": lambda x, y: float(ad.svcca_distance(t(x), t(y), 0.99, "svd")),
            "pwcca": lambda x, y: float(ad.pwcca_distance(t(x), t(y), "svd")),
        }
    except Exception as e:  # noqa: BLE001
        missing["anatome"] = f"{type(e).__name__}: {e}"
    return out, missing


def diagnose(x, y) -> list[str]:
    """anatome's SVCCA and PWCCA on one float64 pair, as shipped and with each bug fixed in
    turn (written here from the issue threads; anatome's own ``cca`` does the CCA), against
    flashcka: markdown lines."""
    import torch
    import flashcka
    from anatome import distance as ad
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    ours = {m: float(flashcka.similarity_matrix(tx, ty, measure=m)) for m in ("svcca", "pwcca")}

    def reduce(t, centre, square, one_more):
        t = t - t.mean(0) if centre else t
        _, s, vt = torch.linalg.svd(t, full_matrices=False)
        v = s * s if square else s.abs()
        k = int((v.cumsum(0) / v.sum() < 0.99).sum()) + int(one_more)
        return t @ vt[:k].T

    lines = [f"| SVCCA | flashcka | {ours['svcca']:.15f} |",
             f"| SVCCA | anatome as shipped | {1 - float(ad.svcca_distance(tx, ty, 0.99, 'svd')):.15f} |"]
    for flags, what in (((True, False, False), "+ centred before the SVD"),
                        ((True, True, False), "+ variance (s²), not abs(s)"),
                        ((True, True, True), "+ the direction that reaches 99%")):
        v = float(ad.cca(reduce(tx, *flags), reduce(ty, *flags), "svd")[2].mean())
        lines.append(f"| SVCCA | anatome {what} | {v:.15f} |")
    a, _, rho = ad.cca(tx, ty, "svd")
    xc = tx - tx.mean(0)
    h, _ = torch.linalg.qr(xc @ a)                # orthonormalised canonical variates
    alpha = (h.T @ xc).abs().sum(1)               # summed over neurons
    lines += [f"| PWCCA | flashcka | {ours['pwcca']:.15f} |",
              f"| PWCCA | anatome as shipped | {1 - float(ad.pwcca_distance(tx, ty, 'svd')):.15f} |",
              f"| PWCCA | anatome with #30's fix (variates orthonormalised, weights summed over "
              f"centred neurons) | {float(alpha @ rho / alpha.sum()):.15f} |"]
    return lines


def as_flashcka(peer: str, measure: str, v: float, da: int, db: int) -> float:
    """The peer's number turned into flashcka's quantity (see the module docstring)."""
    import math
    if peer == "netrep" and measure == "procrustes":
        return math.cos(v)
    if peer == "netrep" and measure == "cca":
        return math.cos(v) * math.sqrt(da * db) / min(da, db)
    if peer == "anatome" and measure != "cca":
        return 1.0 - v
    return v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--max-width", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check-every", type=int, default=4)
    p.add_argument("--measures", default="procrustes,cca,svcca,pwcca")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    setup_threads(a.threads)
    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    import flashcka

    A, B, widths = make_data(a.layers, a.n, a.max_width)
    fns, missing = peers()
    L = a.layers
    check = sorted(set(range(0, L, a.check_every)) | {L - 1})
    measures = a.measures.split(",")
    load0 = os.getloadavg()
    rows = []
    ta, tb = [torch.from_numpy(x) for x in A], [torch.from_numpy(y) for y in B]
    small = [x[:200, :16] for x in A[:2]]
    for m in measures:                      # warm-up: first calls into each library
        flashcka.similarity_matrix(torch.from_numpy(small[0]), torch.from_numpy(small[1]),
                                   measure=m)
        for table in fns.values():
            if m in table:
                table[m](*small)
    for m in measures:
        t = time.perf_counter()
        ours = flashcka.similarity_matrix(ta, tb, measure=m, progress=False).numpy()
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ours32 = flashcka.similarity_matrix(ta, tb, measure=m, progress=False,
                                            dtype=torch.float32).numpy()
        t_ours32 = time.perf_counter() - t
        err_ours32 = float(np.abs(ours32 - ours).max())
        print(f"{m}: flashcka {t_ours:.2f} s; dtype=float32 {t_ours32:.2f} s, max |Δ| "
              f"{err_ours32:.1e}", flush=True)
        for peer, table in fns.items():
            if m not in table:
                continue
            f = table[m]
            t = time.perf_counter()
            got32 = np.array([[as_flashcka(peer, m, f(x, y), x.shape[1], y.shape[1])
                               for y in B] for x in A])
            t_peer = time.perf_counter() - t
            t = time.perf_counter()           # flashcka again after the peer: the load drifts
            flashcka.similarity_matrix(ta, tb, measure=m, progress=False)
            t_after = time.perf_counter() - t
            print(f"{m}: flashcka again {t_after:.2f} s", flush=True)
            t_row = (t_ours + t_after) / 2
            got64 = np.array([[as_flashcka(peer, m, f(A[i].astype(np.float64),
                                                      B[j].astype(np.float64)),
                                           widths[i], widths[j]) for j in check]
                              for i in check])
            err64 = float(np.abs(got64 - ours[np.ix_(check, check)]).max())
            err32 = float(np.abs(got32 - ours).max())
            rows.append((m, peer, t_row, t_peer, err64, err32, t_ours32, err_ours32))
            print(f"{m}: {peer} {t_peer:.2f} s ({t_peer / t_row:.1f}x), max |Δ| float64 "
                  f"{err64:.1e}, float32 run {err32:.1e}", flush=True)
    load1 = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    lines = [
        f"`python bench/peers/measures_peers.py --layers {L} --n {a.n} --max-width "
        f"{a.max_width} --threads {a.threads}` on commit {commit}; {L} × {L} layers, widths "
        f"{', '.join(map(str, widths))}, n = {a.n}, float32 inputs; {a.threads} thread(s) for "
        f"every package; load average {load0[0]:.1f} before, {load1[0]:.1f} after (the machine "
        f"was shared with other jobs). Agreement: max |Δ| against flashcka's float64 result, "
        f"peers on float64 copies of layers {check} of each side; 'float32 run': the timed "
        f"run's results (the peers compute in float32; netrep's numpy too).",
        "",
        "| measure | peer | flashcka s (mean of before and after) | peer s | peer / flashcka | "
        "max abs diff (float64) | "
        "max abs diff (float32 run) | flashcka dtype=float32 s (max abs diff) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, peer, t0, t1, e64, e32, t32, d32 in rows:
        lines.append(f"| {m} | {peer} | {t0:.2f} | {t1:.2f} | {t1 / t0:.1f}x | {e64:.1e} | "
                     f"{e32:.1e} | {t32:.2f} ({d32:.0e}) |")
    if "anatome" in fns:
        lines += ["", f"anatome's SVCCA and PWCCA on one pair (A[{L - 1}], B[{L // 2}], "
                      f"float64), as shipped and with each bug fixed in turn:", "",
                  "| measure | computed by | value |", "|---|---|---|"]
        lines += diagnose(A[L - 1].astype(np.float64), B[L // 2].astype(np.float64))
    for peer, why in missing.items():
        lines.append(f"\n{peer} not run: {why}")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
