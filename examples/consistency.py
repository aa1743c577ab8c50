#!/usr/bin/env python
"""Cross-dataset consistency (Ciernik et al. ICML 2025): do several stimulus sets rank
model pairs by similarity the same way? One model × model CKA matrix per dataset (from the
models' penultimate representations, ``flashcka.cka_matrix``), then the correlation of their
upper triangles for every pair of datasets with a bootstrap over models.

By default: six tiny demo models — ViTs and ResNets, two seeds briefly trained on
scikit-learn's 8×8 digits and one untrained of each — on four stimulus sets made from 400
held-out digits: clean, with Gaussian noise, shifted by a pixel, and pure noise images.
``--models`` takes other specs (examples/_shared.py) with ``--input-shape C,H,W`` (the
datasets are then seeded random images at several noise levels) and ``--layer NAME``
(the module whose output represents each model; default its last block).

    python examples/consistency.py --out consistency_out

Writes consistency.png, model_similarity.png and summary.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import _shared
import flashcka
from flashcka.analysis import cross_dataset_consistency

DEFAULT = ["demo:vit", "demo:vit", "demo:vit", "demo:resnet", "demo:resnet", "demo:resnet"]
REPR = {"demo:vit": "norm", "demo:resnet": "pool"}


def main(argv=None) -> dict:
    p = _shared.parser(__doc__)
    p.add_argument("--models", nargs="+", default=DEFAULT, help="model spec: demo:vit, demo:resnet, timm:NAME, torchvision:NAME, hf:DIR or package.module:factory")
    p.add_argument("--epochs", type=int, nargs="+", default=[4, 4, 0, 2, 2, 0],
                   help="training epochs of each demo model, in --models order (0: untrained)")
    p.add_argument("--layer", default=None, help="module whose output is each model's representation (default: norm / pool for the demo models, else the last block)")
    p.add_argument("--input-shape", default=None,
                   help="C,H,W of seeded random inputs, needed for non-demo models (default: the digits test images)")
    p.add_argument("--samples", type=int, default=400, help="stimuli per data set")
    p.add_argument("--method", default="spearman", choices=["pearson", "spearman"],
                   help="correlation of the similarity matrices across data sets")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples over models")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and random inputs")
    p.add_argument("--out", default="consistency_out", help="output folder")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(a.seed)
    if a.input_shape is None:
        if not all(s.startswith("demo:") for s in a.models):
            p.error("--input-shape C,H,W is needed for non-demo models")
        data = _shared.digits(test_size=a.samples)
        x = data[2]
        datasets = {"digits": x,
                    "noisy digits": x + 0.3 * torch.randn(x.shape, generator=g),
                    "shifted digits": torch.roll(x, shifts=(1, 1), dims=(2, 3)),
                    "noise images": torch.rand(x.shape, generator=g)}
    else:
        data = None
        shape = (a.samples,) + tuple(int(s) for s in a.input_shape.split(","))
        base = torch.randn(shape, generator=g)
        datasets = {f"noise {s}": base + s * torch.randn(shape, generator=g)
                    for s in (0.0, 0.5, 1.0, 2.0)}
    epochs = (a.epochs + [None] * len(a.models))[:len(a.models)]
    names, models = [], []
    for i, (spec, ep) in enumerate(zip(a.models, epochs)):
        models.append(_shared.load_model(spec, epochs=ep, data=data, seed=i))
        names.append(f"{spec.split(':')[-1]}{i}" + ("" if ep != 0 else " (untrained)"))
    layers = [a.layer or REPR.get(s) or _last_block(m) for s, m in zip(a.models, models)]

    matrices = {}
    for dname, xd in datasets.items():
        reps = [_representation(m, ly, xd) for m, ly in zip(models, layers)]
        matrices[dname] = flashcka.cka_matrix(reps)
    res = cross_dataset_consistency(matrices, a.method, n_boot=a.n_boot, seed=a.seed)

    summary = {"models": names, "layers": layers, "datasets": list(datasets),
               "samples": a.samples, "method": a.method, "n_boot": a.n_boot, "seed": a.seed,
               "model_similarity": {d: m.tolist() for d, m in matrices.items()},
               **{k: res[k].tolist() for k in ("correlation", "std", "ci_low", "ci_high")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(res, matrices, names, out, a.samples)
    dn = res["datasets"]
    for i in range(len(dn)):
        for j in range(i + 1, len(dn)):
            print(f"{dn[i]:>15s} vs {dn[j]:<15s} {a.method} {res['correlation'][i, j]:+.3f} "
                  f"[{res['ci_low'][i, j]:+.3f}, {res['ci_high'][i, j]:+.3f}]")
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    return {"matrices": matrices, "consistency": res}


@torch.no_grad()
def _representation(model, layer, x):
    mod = dict(model.named_modules())[layer]
    got = []
    h = mod.register_forward_hook(lambda m, i, o: got.append(o))
    try:
        _shared.forward(model, x)
    finally:
        h.remove()
    o = got[0]
    return o[:, 0] if o.dim() == 3 else o.reshape(len(o), -1)   # CLS token of a ViT


def _last_block(model):
    from flashcka.models.selection import default_points
    return default_points(model)[-1].module


def _plot(res, matrices, names, out, samples):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    dn = res["datasets"]
    D = len(dn)
    fig = Figure(figsize=(1.3 * D + 3, 1.1 * D + 2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(res["correlation"].numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(D):
        for j in range(D):
            if i != j:
                ax.text(j, i, f"{res['correlation'][i, j]:.2f}\n[{res['ci_low'][i, j]:.2f}, "
                        f"{res['ci_high'][i, j]:.2f}]", ha="center", va="center", fontsize=7,
                        color="white" if abs(float(res["correlation"][i, j])) > 0.6 else "black")
    ax.set_xticks(range(D), dn, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(D), dn, fontsize=8)
    ax.set_title(f"cross-dataset consistency ({res['method']}, {res['num_models']} models,\n"
                 f"{int(res['ci'] * 100)}% bootstrap interval over models)", fontsize=9)
    ax.set_xlabel("data set", fontsize=8)
    ax.set_ylabel("data set", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"{res['method']} correlation of model × model CKA")
    fig.tight_layout()
    fig.savefig(out / "consistency.png", dpi=110, bbox_inches="tight", pad_inches=0.05)

    fig = Figure(figsize=(3.2 * D + 1, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, D)
    for ax, (d, m) in zip(axes, matrices.items()):
        im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="magma")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [], fontsize=6)
        ax.set_xlabel("model", fontsize=8)
        ax.set_title(d, fontsize=9)
    axes[0].set_ylabel("model", fontsize=8)
    fig.colorbar(im, ax=list(axes), label="CKA", fraction=0.02, pad=0.02)
    fig.suptitle(f"debiased linear CKA: model × model per data set, {samples} samples "
                 f"each · trained weights unless marked untrained · tokens: cls (3-D outputs)", fontsize=10)
    fig.savefig(out / "model_similarity.png", dpi=110, bbox_inches="tight", pad_inches=0.05)


if __name__ == "__main__":
    main()
