#!/usr/bin/env python
"""Processing trajectories (Mahaut & Baroni 2026): how far apart models are at matched
relative depth (1 − CKA), how much each model changes from one layer to the next
(CKA(l, l+1)), where each model lets go of low-level image statistics, and the information
imbalance (Glielmo et al. 2022) between the layers of two models.

By default: two tiny demo ViTs (seeds 0 and 1) and a tiny demo ResNet, trained for a few
seeded epochs on scikit-learn's 8×8 digits (``--epochs 0``: untrained), compared on 500
held-out digits. ``--models`` takes other specs (see examples/_shared.py) with
``--input-shape C,H,W`` (seeded random inputs then).

    python examples/trajectories.py --out trajectories_out

Writes trajectory.png, image_statistics.png, imbalance.png and summary.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import _shared
import flashcka
from flashcka.analysis import ImageStatistics, information_imbalance, relative_depth, trajectory

BLOCKS = {"demo:vit": ["embed", "blocks.*", "head"],
          "demo:resnet": ["stem", "layer*.*", "fc"]}


def main(argv=None) -> dict:
    p = _shared.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["demo:vit", "demo:vit", "demo:resnet"],
                   help="model spec: demo:vit, demo:resnet, timm:NAME, torchvision:NAME, hf:DIR or package.module:factory")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of demo models (default: 12 ViT / 6 ResNet, as flashcka demo; 0: untrained)")
    p.add_argument("--input-shape", default=None,
                   help="C,H,W of seeded random inputs, needed for non-demo models (default: the digits test images)")
    p.add_argument("--samples", type=int, default=500, help="stimuli: digits test images or random inputs")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size of the CKA")
    p.add_argument("--k", type=int, default=1, help="neighbours for information imbalance")
    p.add_argument("--out", default="trajectories_out", help="output folder")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _shared.digits(test_size=a.samples) if a.input_shape is None else None
    names, models = [], []
    for i, spec in enumerate(a.models):
        models.append(_shared.load_model(spec, epochs=a.epochs, data=data, seed=i))
        names.append(f"{spec.split(':')[-1]}{i}")
    x = _shared.images(p, a, a.models, data)
    loader = _shared.batches(x, a.batch_size)
    layers = [BLOCKS.get(s) for s in a.models]

    results = {}
    for i in range(len(models)):
        for j in range(i, len(models)):
            r = flashcka.compare(models[i], None if i == j else models[j], loader,
                                 layers_a=layers[i], layers_b=layers[j], progress=False,
                                 inputs_a=_shared.adapter(models[i]),
                                 inputs_b=_shared.adapter(models[j]))
            results[(names[i], names[j])] = r
    traj = trajectory(results)
    stats = {nm: flashcka.compare(m, ImageStatistics(), loader, layers_a=ly, progress=False,
                                  inputs_a=_shared.adapter(m))
             for nm, m, ly in zip(names, models, layers)}

    # information imbalance between the first and the last model, all layer pairs at once
    acts = [_activations(m, x, results[(nm, nm)].names_a) for nm, m in ((names[0], models[0]),
                                                                        (names[-1], models[-1]))]
    fwd, bwd = information_imbalance(acts[0], acts[1], k=a.k)

    summary = {
        "models": dict(zip(names, a.models)), "samples": len(x),
        "depth": traj["depth"].tolist(),
        "distance": {f"{p_[0]} vs {p_[1]}": v.tolist() for p_, v in traj["distance"].items()},
        "change": {k_: v.tolist() for k_, v in traj["change"].items()},
        "image_statistics": {nm: {"layers": r.names_a, "stats": r.names_b,
                                  "cka": r.matrix.tolist()} for nm, r in stats.items()},
        "information_imbalance": {"a": names[0], "b": names[-1], "k": a.k,
                                  "layers_a": list(acts[0]), "layers_b": list(acts[1]),
                                  "a_to_b": fwd.tolist(), "b_to_a": bwd.tolist()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plots(traj, stats, fwd, bwd, list(acts[0]), list(acts[1]), names, out)
    for pair, v in traj["distance"].items():
        print(f"1 − CKA, {pair[0]} vs {pair[1]} along depth: "
              + " ".join(f"{d:.2f}" for d in v.tolist()))
    for m, v in traj["change"].items():
        print(f"CKA(l, l+1) of {m}: " + " ".join(f"{d:.2f}" for d in v.tolist()))
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    return {"trajectory": traj, "stats": stats, "imbalance": (fwd, bwd)}


@torch.no_grad()
def _activations(model, x, names) -> dict:
    """The hooked tensors (``name``, ``name:input``, ``name#k`` for the k-th call) on x,
    flattened (fine at example sizes)."""
    mods = dict(model.named_modules())
    calls, hooks = {}, []
    for point in dict.fromkeys(nm.split("#")[0] for nm in names):
        mod, _, kind = point.partition(":")
        record = (lambda t, point=point:
                  calls.setdefault(point, []).append(_tensor(t).reshape(len(x), -1).float()))
        if kind == "input":
            hooks.append(mods[mod].register_forward_pre_hook(lambda m, i, r=record: r(i)))
        else:
            hooks.append(mods[mod].register_forward_hook(lambda m, i, o, r=record: r(o)))
    try:
        _shared.forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for nm in names:
        point, _, k = nm.partition("#")
        out[nm] = calls[point][int(k) if k else 0]
    return out


def _tensor(o):
    if isinstance(o, (tuple, list)):
        return o[0]
    return getattr(o, "last_hidden_state", o)


def _plots(traj, stats, fwd, bwd, la, lb, names, out):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for (a, b), v in traj["distance"].items():
        ax1.plot(traj["depth"], v, marker="o", ms=3, label=f"{a} vs {b}")
    ax1.set(xlabel="relative depth", ylabel="1 − CKA at matched depth",
            title="distance between models along processing")
    for m, v in traj["change"].items():
        ax2.plot(relative_depth(len(v) + 1)[:-1], v, marker="o", ms=3, label=m)
    ax2.set(xlabel="relative depth of layer l", ylabel="CKA(l, l+1)",
            title="layer-to-layer change")
    for ax in (ax1, ax2):
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "trajectory.png", dpi=110, bbox_inches="tight", pad_inches=0.05)

    fig = Figure(figsize=(4 * len(stats), 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    for ax, (nm, r) in zip(axes, stats.items()):
        depth = relative_depth(len(r.names_a))
        for j, s in enumerate(r.names_b):
            ax.plot(depth, r.matrix[:, j], marker="o", ms=3, label=s.split(".")[-1])
        ax.set(xlabel="relative depth", ylabel="CKA with the statistic", title=nm)
        ax.legend(fontsize=8)
    fig.suptitle("where each model keeps low-level image statistics", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "image_statistics.png", dpi=110, bbox_inches="tight", pad_inches=0.05)

    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    vmax = float(max(fwd.max(), bwd.max()))
    for ax, m, title in ((axes[0], fwd, f"Δ({names[0]} → {names[-1]})"),
                         (axes[1], bwd, f"Δ({names[-1]} → {names[0]})")):
        im = ax.imshow(m.numpy(), origin="lower", cmap="viridis_r", vmin=0, vmax=vmax,
                       aspect="auto")
        ax.set_xticks(*_shared.thinned(lb, 25), rotation=90, fontsize=7)
        ax.set_yticks(*_shared.thinned(la, 25), fontsize=7)
        ax.set(xlabel=f"{names[-1]} layer", ylabel=f"{names[0]} layer", title=title)
        ax.title.set_fontsize(10)
        fig.colorbar(im, ax=ax, label="information imbalance (0: predicts)")
    fig.tight_layout()
    fig.savefig(out / "imbalance.png", dpi=110, bbox_inches="tight", pad_inches=0.05)


if __name__ == "__main__":
    main()
