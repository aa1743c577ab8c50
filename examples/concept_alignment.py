#!/usr/bin/env python
"""Concept-based alignment (Vielhaben et al. NeurIPS 2025): describe each model's
representation by soft concept memberships, compare the two with the generalized Rand
index of Hüllermeier et al. 2012, and split the disagreement over pairs of concepts.

Vielhaben et al. find concepts with UMAP + HDBSCAN; to stay dependency-free this example
uses seeded k-means in each representation and soft memberships
``u_ia ∝ exp(−‖x_i − μ_a‖² / T)`` (T = the mean squared distance to the nearest centroid),
a stand-in for any concept-discovery method: ``fuzzy_rand_index`` takes any (n × c)
non-negative memberships. Each concept is named by the digit most frequent among its points.

By default: the tiny demo ViT and ResNet, trained as flashcka demo does on scikit-learn's
8×8 digits (``--epochs 0``: untrained), penultimate layers (ViT CLS after the final norm,
ResNet pooled features) on 500 held-out digits. ``--vit``/``--cnn``/``--layer-*`` and
``--input-shape`` as in examples/vit_vs_cnn.py.

    python examples/concept_alignment.py --out concepts_out

Writes concept_alignment.png and summary.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import _shared
from flashcka.analysis import concept_pair_disagreement, fuzzy_rand_index

REPR = {"demo:vit": "norm", "demo:resnet": "pool"}


def main(argv=None) -> dict:
    p = _shared.parser(__doc__)
    p.add_argument("--vit", default="demo:vit", help="the ViT: model spec: demo:vit, demo:resnet, timm:NAME, torchvision:NAME, hf:DIR or package.module:factory")
    p.add_argument("--cnn", default="demo:resnet", help="the CNN, as --vit")
    p.add_argument("--layer-vit", default=None,
                   help="module whose output is the ViT's representation (default: norm for demo:vit)")
    p.add_argument("--layer-cnn", default=None,
                   help="module whose output is the CNN's representation (default: pool for demo:resnet)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of demo models (default: 12 ViT / 6 ResNet, as flashcka demo; 0: untrained)")
    p.add_argument("--input-shape", default=None,
                   help="C,H,W of seeded random inputs, needed for non-demo models (default: the digits test images)")
    p.add_argument("--samples", type=int, default=500, help="stimuli: digits test images or random inputs")
    p.add_argument("--concepts", type=int, default=10, help="concepts per representation")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and the clustering")
    p.add_argument("--out", default="concepts_out", help="output folder")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _shared.digits(test_size=a.samples) if a.input_shape is None else None
    specs = [a.vit, a.cnn]
    models = [_shared.load_model(s, epochs=a.epochs, data=data, seed=i) for i, s in enumerate(specs)]
    if a.input_shape is None:
        x, labels = data[2], data[3]
    else:
        shape = tuple(int(s) for s in a.input_shape.split(","))
        x = torch.randn(a.samples, *shape, generator=torch.Generator().manual_seed(a.seed))
        labels = None
    layers = [a.layer_vit or REPR.get(a.vit), a.layer_cnn or REPR.get(a.cnn)]
    if None in layers:
        p.error("--layer-vit/--layer-cnn are needed for non-demo models")
    feats = [_representation(m, ly, x) for m, ly in zip(models, layers)]
    memberships, names = [], []
    for f, tag in zip(feats, ("ViT", "CNN")):
        u = _soft_kmeans(f, a.concepts, a.seed)
        memberships.append(u)
        names.append(_concept_names(u, labels, tag))
    u, v = memberships
    part = concept_pair_disagreement(u, v)
    r_cos = fuzzy_rand_index(u, v, measure="cosine")
    summary = {"models": specs, "layers": layers, "samples": len(x), "concepts": a.concepts,
               "rand_index_l1": part["index"], "rand_index_cosine": r_cos,
               "concepts_vit": names[0], "concepts_cnn": names[1],
               "disagreement": part["disagreement"].tolist(), "weight": part["weight"].tolist(),
               "pair_index": part["pair_index"].tolist()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(part, names, r_cos, out / "concept_alignment.png")
    print(f"generalized Rand index ViT vs CNN concepts: {part['index']:.4f} (l1), "
          f"{r_cos:.4f} (cosine)")
    dis = part["disagreement"]
    top = torch.topk(dis.flatten(), 3).indices
    for t in top.tolist():
        i, j = divmod(t, dis.shape[1])
        print(f"  most disagreement: {names[0][i]} x {names[1][j]}: {float(dis[i, j]):.4f} "
              f"of 1 − R = {1 - part['index']:.4f}")
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    return {"partition": part, "memberships": memberships}


@torch.no_grad()
def _representation(model, layer, x):
    got = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o))
    try:
        _shared.forward(model, x)
    finally:
        h.remove()
    o = got[0]
    return (o[:, 0] if o.dim() == 3 else o.reshape(len(o), -1)).double()


def _soft_kmeans(f, c, seed, iters=50):
    """Seeded k-means (k-means++ start), then memberships ∝ exp(−d² / T), rows sum to 1."""
    g = torch.Generator().manual_seed(seed)
    f = (f - f.mean(0)) / f.std(0).clamp_min(1e-8)
    cent = f[torch.randint(len(f), (1,), generator=g)]
    for _ in range(1, c):
        d2 = torch.cdist(f, cent).pow(2).min(1).values
        cent = torch.cat([cent, f[torch.multinomial(d2 / d2.sum(), 1, generator=g)]])
    for _ in range(iters):
        assign = torch.cdist(f, cent).argmin(1)
        for k in range(c):
            if bool((assign == k).any()):
                cent[k] = f[assign == k].mean(0)
    d2 = torch.cdist(f, cent).pow(2)
    temp = d2.min(1).values.mean()
    return torch.softmax(-d2 / temp, 1)


def _concept_names(u, labels, tag):
    if labels is None:
        return [f"{tag} c{k}" for k in range(u.shape[1])]
    out = []
    for k in range(u.shape[1]):
        votes = torch.zeros(int(labels.max()) + 1, dtype=torch.float64).index_add_(0, labels, u[:, k])
        out.append(f"{tag} c{k} ('{int(votes.argmax())}' {float(votes.max() / votes.sum()):.0%})")
    return out


def _plot(part, names, r_cos, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(13, 5.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, title, cmap, label in (
            (axes[0], "weight", "share of point pairs per concept pair", "Blues",
             "share of point pairs"),
            (axes[1], "pair_index", "Rand index within each concept pair", "viridis",
             "generalized Rand index")):
        m = part[key].numpy()
        im = ax.imshow(m, cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(names[1])), names[1], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names[0])), names[0], fontsize=7)
        ax.set(xlabel="CNN concept", ylabel="ViT concept")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, label=label)
    fig.suptitle(f"ViT vs CNN concepts: generalized Rand index {part['index']:.3f} (l1), "
                 f"{r_cos:.3f} (cosine)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.05)


if __name__ == "__main__":
    main()
