"""Plots of a zoo: a clustered model × model heatmap with dendrograms, a grid of
layer × layer heatmaps for a few models, and the consistency of model similarities
across datasets (Ciernik et al. 2025). scipy is needed for the clustering only."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _path(path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"path must end in .png, .svg or .pdf, got {str(p)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _scipy_hierarchy():
    try:
        from scipy.cluster import hierarchy
    except ImportError:
        raise ImportError("the clustered heatmap orders models by hierarchical clustering "
                          "with scipy: pip install scipy") from None
    return hierarchy


def cluster_order(matrix, method: str = "average") -> list[int]:
    """Leaf order of an agglomerative clustering (``scipy.cluster.hierarchy.linkage``,
    ``method``) of the distance ``1 − S`` (symmetrised, diagonal zero, clipped at 0)."""
    hierarchy = _scipy_hierarchy()
    from scipy.spatial.distance import squareform
    s = np.asarray(matrix, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"a clustered heatmap needs a square matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        i, j = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"entry ({i}, {j}) is not finite; clustering needs every "
                         f"similarity")
    if s.shape[0] < 2:
        return list(range(s.shape[0]))
    d = np.clip(1.0 - (s + s.T) / 2, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return list(hierarchy.leaves_list(hierarchy.linkage(squareform(d, checks=False), method)))


def clustered_heatmap(result, path, *, method: str = "average", title: str | None = None,
                      label: str | None = None, cmap: str = "magma", dpi: int = 120) -> Path:
    """Model × model heatmap (a square ``CKAResult``, e.g. ``Store.model_matrix``) with
    rows and columns in the leaf order of a hierarchical clustering of ``1 − S`` and its
    dendrogram drawn above and to the left. Every model is labelled: cells and fonts
    shrink with the count (64 models: 0.16-inch cells, 6-point labels)."""
    hierarchy = _scipy_hierarchy()
    from scipy.spatial.distance import squareform
    path = _path(path)
    s = result.matrix.numpy() if hasattr(result, "matrix") else np.asarray(result)
    names = list(getattr(result, "names_a", [str(i) for i in range(len(s))]))
    order = cluster_order(s, method)
    M = len(names)
    cell = 0.3 if M <= 24 else 0.16 if M <= 80 else 0.1
    font = 8 if M <= 24 else 6 if M <= 80 else 4
    side = max(M * cell, 3.0)
    lab = min(max(len(n) for n in names), 40) * font * 0.6 / 72 + 0.2
    dend = 1.2
    w, h = lab + dend + side + 1.2, lab + dend + side + 0.8
    fig = _figure(w, h)
    ax = fig.add_axes([(lab + dend) / w, lab / h, side / w, side / h])
    data = s[np.ix_(order, order)]
    finite = data[np.isfinite(data)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=max(1.0, float(finite.max())),
                   interpolation="nearest", aspect="auto")
    ax.set_xticks(range(M))
    ax.set_xticklabels([names[i] for i in order], rotation=90, fontsize=font)
    ax.set_yticks(range(M))
    ax.set_yticklabels([names[i] for i in order], fontsize=font)
    if M >= 2:
        d = np.clip(1.0 - (s + s.T) / 2, 0.0, None)
        np.fill_diagonal(d, 0.0)
        z = hierarchy.linkage(squareform(d, checks=False), method)
        top = fig.add_axes([(lab + dend) / w, (lab + side) / h, side / w, dend / h])
        hierarchy.dendrogram(z, ax=top, no_labels=True, color_threshold=0,
                             above_threshold_color="0.3")
        top.set_axis_off()
        left = fig.add_axes([0.0, lab / h, dend / w, side / h])
        hierarchy.dendrogram(z, ax=left, orientation="left", no_labels=True,
                             color_threshold=0, above_threshold_color="0.3")
        left.invert_yaxis()
        left.set_axis_off()
    cax = fig.add_axes([(lab + dend + side + 0.25) / w, lab / h, 0.18 / w, side / h])
    fig.colorbar(im, cax=cax, label=label or getattr(result, "settings", {}).get(
        "measure", "similarity"))
    fig.suptitle(title or _title(result, f"{M} models, clustered ({method} linkage)"),
                 fontsize=9)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return path


def layer_grid(result, models, path, *, title: str | None = None, cmap: str = "magma",
               dpi: int = 120) -> Path:
    """A k × k grid of layer × layer heatmaps for ``models`` (names) from a
    ``"model/layer"`` result (``Store.similarity``): panel (i, j) shows model i's layers
    (rows, first at the bottom) against model j's (columns), one colour scale."""
    path = _path(path)
    models = list(models)
    if not models:
        raise ValueError("models is empty: name the models to draw")
    names = list(result.names_a)
    idx = {}
    for m in models:
        idx[m] = [i for i, n in enumerate(names) if n.split("/", 1)[0] == m]
        if not idx[m]:
            have = sorted({n.split("/", 1)[0] for n in names})
            raise ValueError(f"the result has no layers of model {m!r}; it has {have}")
    s = result.matrix.numpy()
    finite = s[np.isfinite(s)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    k = len(models)
    panel = 2.4 if k <= 4 else 1.6
    fig = _figure(k * panel + 1.4, k * panel + 0.9)
    axes = fig.subplots(k, k, squeeze=False)
    im = None
    for a, ma in enumerate(models):
        for b, mb in enumerate(models):
            ax = axes[k - 1 - a][b]
            im = ax.imshow(s[np.ix_(idx[ma], idx[mb])], origin="lower", aspect="auto",
                           cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if a == 0:
                ax.set_xlabel(f"{mb} ({len(idx[mb])})", fontsize=7)
            if b == 0:
                ax.set_ylabel(f"{ma} ({len(idx[ma])})", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8,
                 label=result.settings.get("measure", "similarity"))
    fig.suptitle(title or _title(result, "layer by layer"), fontsize=9)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return path


def consistency_plot(consistency: dict, path, matrices=None, *, title: str | None = None,
                     dpi: int = 120) -> Path:
    """``cross_dataset_consistency``'s output drawn: the (D, D) correlation of model-pair
    similarities between datasets, each cell with its bootstrap interval; with
    ``matrices`` (the model × model matrices, dataset order), a scatter of every model
    pair's similarity on the first dataset against each other dataset."""
    path = _path(path)
    names = list(consistency["datasets"])
    r = np.asarray(consistency["correlation"], dtype=np.float64)
    lo, hi = np.asarray(consistency["ci_low"]), np.asarray(consistency["ci_high"])
    D = len(names)
    scatter = matrices is not None and D >= 2
    fig = _figure(4.2 + (4.0 if scatter else 0.0), 3.8)
    ax = fig.add_axes([0.1 / (2 if scatter else 1), 0.15, 0.36 if scatter else 0.7, 0.7])
    im = ax.imshow(r, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    for i in range(D):
        for j in range(D):
            ci = "" if not np.isfinite(lo[i, j]) else f"\n[{lo[i, j]:.2f}, {hi[i, j]:.2f}]"
            ax.text(j, i, f"{r[i, j]:.2f}{ci}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(D))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(D))
    ax.set_yticklabels(names, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"{consistency['method']} r")
    ax.set_title(f"consistency over {consistency['num_models']} models", fontsize=9)
    if scatter:
        mats = [np.asarray(m.matrix if hasattr(m, "matrix") else m, dtype=np.float64)
                for m in (matrices.values() if isinstance(matrices, dict) else matrices)]
        M = mats[0].shape[0]
        iu = np.triu_indices(M, 1)
        sx = fig.add_axes([0.58, 0.15, 0.38, 0.7])
        for d in range(1, D):
            sx.scatter(mats[0][iu], mats[d][iu], s=8, alpha=0.7, label=names[d])
        sx.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        sx.set_xlabel(f"similarity on {names[0]}", fontsize=8)
        sx.set_ylabel("similarity on the other dataset(s)", fontsize=8)
        sx.legend(fontsize=7)
        sx.set_title(f"{len(iu[0])} model pairs", fontsize=9)
    fig.suptitle(title or "cross-dataset consistency of model similarities", fontsize=9)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return path


def _title(result, what: str) -> str:
    s = getattr(result, "settings", {}) or {}
    bits = [s.get("measure", "")]
    if s.get("measure") == "cka":
        bits.append(f"{s.get('kernel', 'linear')}, {'debiased' if s.get('unbiased') else 'biased'}")
    if s.get("data"):
        bits.append(str(s["data"]))
    n = getattr(result, "num_samples", 0)
    if n:
        bits.append(f"n = {n}")
    return " · ".join(b for b in bits if b) + f" — {what}"
