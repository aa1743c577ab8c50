"""flashcka.analysis.information_imbalance vs DADApy's MetricComparisons on the same data.

DADApy 0.3.4 needs numpy < 2, so it runs in its own environment:

    python bench/peers/dadapy_imbalance.py make  /tmp/ii.npz          # flashcka's env
    /path/to/dadapy-venv/bin/python bench/peers/dadapy_imbalance.py check /tmp/ii.npz

``make`` draws seeded layers (n = 400, latent structure, distinct distances), computes
flashcka's (fwd, bwd) matrices for k = 1 and 3 and stores everything; ``check`` computes
``MetricComparisons(X_a).return_information_imbalace(X_b, k, subset_size=n)`` for every
pair (full neighbour lists, so no random ranks) and prints the largest difference.
"""
import sys

import numpy as np


def make(path):
    import torch
    from flashcka.analysis import information_imbalance
    rng = np.random.default_rng(0)
    n = 400
    z = rng.standard_normal((n, 4))
    xa = [np.tanh(z @ rng.standard_normal((4, d))) + 0.2 * rng.standard_normal((n, d))
          for d in (3, 16, 40)]
    xb = [z[:, :2] @ rng.standard_normal((2, 5)) + 0.5 * rng.standard_normal((n, 5)),
          rng.standard_normal((n, 7))]
    out = {f"a{i}": x for i, x in enumerate(xa)} | {f"b{i}": x for i, x in enumerate(xb)}
    for k in (1, 3):
        f, b = information_imbalance([torch.tensor(x) for x in xa],
                                     [torch.tensor(x) for x in xb], k=k)
        out[f"fwd{k}"], out[f"bwd{k}"] = f.numpy(), b.numpy()
    np.savez(path, **out)


def check(path):
    from dadapy.metric_comparisons import MetricComparisons
    z = np.load(path)
    xa = [z[k] for k in sorted(z.files) if k[0] == "a" and k[1:].isdigit()]
    xb = [z[k] for k in sorted(z.files) if k[0] == "b" and k[1:].isdigit()]
    n = len(xa[0])
    worst = 0.0
    for k in (1, 3):
        for i, x in enumerate(xa):
            for j, y in enumerate(xb):
                mc = MetricComparisons(coordinates=x, maxk=n - 1)
                (ij, _), (ji, _) = mc.return_information_imbalace(y, k=k, subset_size=n)
                d = max(abs(ij - z[f"fwd{k}"][i, j]), abs(ji - z[f"bwd{k}"][i, j]))
                worst = max(worst, d)
                print(f"k={k} a{i}->b{j}: dadapy {ij:.6f} / {ji:.6f}   flashcka "
                      f"{z[f'fwd{k}'][i, j]:.6f} / {z[f'bwd{k}'][i, j]:.6f}")
    print(f"largest |difference|: {worst:.3g}")


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](sys.argv[2])
