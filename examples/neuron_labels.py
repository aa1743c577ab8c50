#!/usr/bin/env python
"""Layer-wise neuron labels (Dorszewski et al. 2025, "From colors to classes"): label every
unit of every block with its best concept — soft-WPMI as CLIP-Dissect (Oikarinen & Weng
2023) or correlation — and report per layer how many distinct concepts appear and of
which categories (the paper: colours and textures early, object classes late).

The concept matrix (n stimuli × concepts) is the user's: CLIP image–text similarities,
or annotations. Here, for 8×8 digits with no CLIP at hand, it is built from the images and
their labels: the ten digit classes (category "class"), ink amount (category "intensity"),
where the ink sits (category "position") and edge orientation (category "texture"), each
z-scored over the stimuli.

By default: the tiny demo ViT (token mean per block) and ResNet (channel means), trained as
flashcka demo does on scikit-learn's digits (``--epochs 0``: untrained), on 500 held-out
digits, correlation labels (``--method wpmi`` for soft-WPMI).

    python examples/neuron_labels.py --out neurons_out

Writes neuron_labels.png and summary.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import _shared
from flashcka.analysis import label_neurons

LAYERS = {"demo:vit": ["embed", "blocks.*", "norm"], "demo:resnet": ["stem", "layer*.*"]}


def digit_concepts(x: torch.Tensor, y: torch.Tensor):
    """(n, 1, 8, 8) images and labels -> (n, 18) z-scored concept scores, names, categories."""
    n = len(x)
    img = x[:, 0].double()
    cols = [(y == d).double() for d in range(10)]
    names = [f"digit {d}" for d in range(10)]
    cats = ["class"] * 10
    ink = img.sum((1, 2))
    cols += [ink, -ink]
    names += ["much ink", "little ink"]
    cats += ["intensity"] * 2
    rows = torch.arange(8, dtype=torch.float64)
    total = ink.clamp_min(1e-9)
    cy = (img.sum(2) * rows).sum(1) / total
    cx = (img.sum(1) * rows).sum(1) / total
    cols += [-cy, cy, -cx, cx]
    names += ["ink at top", "ink at bottom", "ink at left", "ink at right"]
    cats += ["position"] * 4
    gy = (img[:, 1:] - img[:, :-1]).pow(2).sum((1, 2))
    gx = (img[:, :, 1:] - img[:, :, :-1]).pow(2).sum((1, 2))
    cols += [gy - gx, gx - gy]
    names += ["horizontal strokes", "vertical strokes"]
    cats += ["texture"] * 2
    c = torch.stack(cols, 1)
    c = (c - c.mean(0)) / c.std(0).clamp_min(1e-12)
    assert c.shape == (n, len(names))
    return c, names, dict(zip(names, cats))


def main(argv=None) -> dict:
    p = _shared.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["demo:vit", "demo:resnet"], help="model spec: demo:vit, demo:resnet, timm:NAME, torchvision:NAME, hf:DIR or package.module:factory")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of demo models (default: 12 ViT / 6 ResNet, as flashcka demo; 0: untrained)")
    p.add_argument("--method", default="correlation", choices=["correlation", "wpmi"],
                   help="label score: correlation, or soft-WPMI as CLIP-Dissect")
    p.add_argument("--top-k", type=int, default=50, help="soft-WPMI: top stimuli per unit")
    p.add_argument("--samples", type=int, default=500, help="digits test images to label with")
    p.add_argument("--batch-size", type=int, default=100, help="images per forward pass")
    p.add_argument("--out", default="neurons_out", help="output folder")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not all(s.startswith("demo:") for s in a.models):
        p.error("this example's concept matrix is built for the digits: use demo models, or "
                "call flashcka.analysis.label_neurons with your own (n × concepts) matrix")
    data = _shared.digits(test_size=a.samples)
    x, y = data[2], data[3]
    concepts, names, cats = digit_concepts(x, y)
    loader = _shared.batches(x, a.batch_size)
    results, summary = {}, {"method": a.method, "samples": len(x), "concepts": names,
                            "categories": cats, "models": {}}
    for i, spec in enumerate(a.models):
        model = _shared.load_model(spec, epochs=a.epochs, data=data, seed=i)
        kw = {"top_k": a.top_k} if a.method == "wpmi" else {}
        res = label_neurons(model, loader, concepts, layers=LAYERS.get(spec), method=a.method,
                            concept_names=names, categories=cats, **kw)
        key = f"{spec.split(':')[-1]}{i}"
        results[key] = res
        summary["models"][key] = {
            layer: {"units": len(r["labels"]), "distinct": r["distinct"],
                    "by_category": r["by_category"], "distinct_concepts": r["distinct_concepts"],
                    "labels": r["concepts"]} for layer, r in res.items()}
        for layer, r in res.items():
            print(f"{key} {layer:>10s}: {len(r['labels']):3d} units, {r['distinct']:2d} distinct "
                  f"concepts {r['by_category']}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(results, cats, out / "neuron_labels.png", a.method)
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    return results


def _plot(results, cats, path, method):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    categories = list(dict.fromkeys(cats.values()))
    fig = Figure(figsize=(5.2 * len(results), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (model, res) in zip(axes, results.items()):
        layers = list(res)
        bottom = [0.0] * len(layers)
        for cat in categories:      # share of units per category
            share = [sum(1 for c in res[l]["concepts"] if c is not None and cats[c] == cat)
                     / len(res[l]["concepts"]) for l in layers]
            ax.bar(range(len(layers)), share, bottom=bottom, label=cat)
            bottom = [b + s for b, s in zip(bottom, share)]
        ax2 = ax.twinx()
        ax2.plot(range(len(layers)), [res[l]["distinct"] for l in layers], "k-o", ms=4,
                 label="distinct concepts")
        ax2.set_ylabel("distinct concepts")
        ax2.set_ylim(0, (len(cats) + 1) * 1.35)
        ax.set_xticks(*_shared.thinned(layers, 25), rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("share of units")
        ax.set_ylim(0, 1.35)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_title(f"{model}: unit labels by category ({method})", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.05)


if __name__ == "__main__":
    main()
