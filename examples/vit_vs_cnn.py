#!/usr/bin/env python
"""ViT vs CNN (Raghu et al. 2021, "Do Vision Transformers See Like Convolutional Neural
Networks?"): minibatch-CKA heatmaps ViT×ViT, CNN×CNN and ViT×CNN over blocks and
sub-layers (attention, MLP), and the summaries the paper reads from them: how uniform each
model's similarity is across depth, and which CNN depth each ViT layer matches best.

By default the models are flashcka's tiny demo ViT and ResNet, trained for a few seeded
epochs on scikit-learn's 8×8 digits (``--epochs 0``: untrained), compared on 500 held-out
digits in batches of 100. Other models: ``--vit`` / ``--cnn`` take a model spec
(what the command line accepts: ``timm:NAME``, ``torchvision:NAME``, ``hf:DIR``,
``package.module:factory``) and then
``--input-shape C,H,W`` feeds seeded Gaussian images of that shape (no data is downloaded).

    python examples/vit_vs_cnn.py --out vit_vs_cnn_out

Writes vit_vs_vit / cnn_vs_cnn / vit_vs_cnn (.png heatmap, .json result), summary.json
and summary.png (similarity vs layer distance; best-matching CNN depth per ViT layer).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import _shared
import flashcka
from flashcka.analysis import similarity_by_distance, vit_cnn_summary


def main(argv=None) -> dict:
    p = _shared.parser(__doc__)
    p.add_argument("--vit", default="demo:vit", help="the ViT: model spec: demo:vit, demo:resnet, timm:NAME, torchvision:NAME, hf:DIR or package.module:factory")
    p.add_argument("--cnn", default="demo:resnet", help="the CNN, as --vit")
    p.add_argument("--layers-vit", nargs="*", default=None,
                   help="modules/globs/presets to hook (default: the 'sublayers' preset)")
    p.add_argument("--layers-cnn", nargs="*", default=None,
                   help="modules/globs/presets to hook (default: the model's blocks)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of demo models (default: 12 ViT / 6 ResNet, as flashcka demo; 0: untrained)")
    p.add_argument("--input-shape", default=None, help="C,H,W of seeded random inputs, needed for non-demo models (default: the digits test images)")
    p.add_argument("--samples", type=int, default=500, help="stimuli: digits test images or random inputs")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size of the CKA")
    p.add_argument("--tokens", default="flatten", choices=["flatten", "cls", "mean"],
                   help="how (n, T, C) tokens become features (compare's tokens=)")
    p.add_argument("--out", default="vit_vs_cnn_out", help="output folder")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = a.vit.startswith("demo:") and a.cnn.startswith("demo:")
    data = _shared.digits(test_size=a.samples) if a.input_shape is None else None
    vit = _shared.load_model(a.vit, epochs=a.epochs, data=data, seed=0)
    cnn = _shared.load_model(a.cnn, epochs=a.epochs, data=data, seed=1)
    x = _shared.images(p, a, [a.vit, a.cnn], data)
    loader = _shared.batches(x, a.batch_size)
    # ViT: every block's attention branch, residual stream after attention (the input of
    # norm2, what Raghu et al. plot), MLP branch and output; CNN: its blocks.
    lv = a.layers_vit or "sublayers"
    lc = a.layers_cnn or None
    kw = dict(tokens=a.tokens, progress=False)
    av, ac = _shared.adapter(vit), _shared.adapter(cnn)
    results = {"vit_vs_vit": flashcka.compare(vit, None, loader, layers_a=lv, inputs_a=av, **kw),
               "cnn_vs_cnn": flashcka.compare(cnn, None, loader, layers_a=lc, inputs_a=ac, **kw),
               "vit_vs_cnn": flashcka.compare(vit, cnn, loader, layers_a=lv, layers_b=lc,
                                              inputs_a=av, inputs_b=ac, **kw)}
    weights = ("trained" if a.epochs != 0 else "random") if demo else "random"
    for name, r in results.items():       # the plots' one title style (CKAResult.title)
        sides = {"model_a": a.cnn if name.startswith("cnn") else a.vit,
                 "model_b": a.vit if name == "vit_vs_vit" else a.cnn}
        r.settings.update(sides, weights=weights,
                          data="8x8 digits (test split)" if a.input_shape is None
                          else f"random inputs {a.input_shape}")
        r.plot(out / f"{name}.png")
        r.save(out / f"{name}.json")
    summary = vit_cnn_summary(results["vit_vs_vit"], results["cnn_vs_cnn"], results["vit_vs_cnn"])
    summary["models"] = {"vit": a.vit, "cnn": a.cnn,
                         "trained": None if not demo else a.epochs != 0}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot_summary(results, summary, out / "summary.png")
    u = summary["uniformity"]
    print(f"uniformity (mean off-diagonal CKA): ViT {u['vit']:.3f}, CNN {u['cnn']:.3f}")
    bm = summary["best_match"]
    for layer, name, d in zip(bm["layers"], bm["names"], bm["depth_b"]):
        print(f"  ViT {layer:>22s} -> CNN {name} (relative depth {d:.2f})")
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    return {"results": results, "summary": summary}


def _plot_summary(results, summary, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for key, label in (("vit_vs_vit", "ViT"), ("cnn_vs_cnn", "CNN")):
        s = similarity_by_distance(results[key]).numpy()
        rel = [k / max(len(s) - 1, 1) for k in range(len(s))]
        ax1.plot(rel, s, marker="o", label=f"{label} (uniformity "
                 f"{summary['uniformity']['vit' if label == 'ViT' else 'cnn']:.2f})")
    ax1.set_xlabel("layer distance |i − j| / (L − 1)")
    ax1.set_ylabel("mean CKA")
    ax1.set_title("similarity vs layer distance", fontsize=10)
    ax1.legend(fontsize=8)
    bm = summary["best_match"]
    ax2.plot(bm["depth_a"], bm["depth_b"], marker="o", label="argmax CKA")
    ax2.plot(bm["depth_a"], bm["mean_depth_b"], marker=".", ls="--", label="CKA-weighted mean")
    ax2.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax2.set_xlabel("ViT relative depth")
    ax2.set_ylabel("best-matching CNN relative depth")
    ax2.set_title("which CNN depth each ViT layer matches", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.05)


if __name__ == "__main__":
    main()
