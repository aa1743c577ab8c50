"""pytorch-cka 1.1.3's ``cka.viz``: heatmaps and trend lines, each returning
``(Figure, Axes)`` (``plot_cka_comparison``: ``(Figure, 2-D array of Axes)``).

Same arguments, defaults and layout as the original (heatmap: rows = model1 layers, row 0
at the bottom, ``aspect="auto"``, colorbar "CKA Similarity"; trends: one line per series,
tab10 colours, y from 0 to 1.05). The heatmap cells come from flashcka's heatmap helper
(``compat._plot.heatmap``): names drawn as text (a ``$`` in a layer name is not TeX), NaN
cells written "nan" (the original leaves them blank), colour limits from the finite values;
``grid=False`` turns the grid off (the original's ``grid(False, linestyle=...)`` turns it
on); a heatmap drawn into a figure with a layout engine keeps it (the original switches
``plot_cka_comparison``'s constrained layout to tight, with a warning).
Works headless (Agg): nothing is shown unless ``show=True``.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .._plot import heatmap, limits, to_numpy

__all__ = ["plot_cka_heatmap", "plot_cka_comparison", "plot_cka_trend",
           "plot_cka_trend_with_range", "plot_cka_layer_trend", "save_figure"]


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _short(names, depth):
    return [n if depth is None else ".".join(str(n).split(".")[-depth:]) for n in names]


def _recolor(fig, color) -> None:
    """Titles, axis labels, ticks, spines and legend texts in ``color`` (not cell text)."""
    if color is None:
        return
    for ax in fig.axes:
        for t in (ax.title, ax.xaxis.label, ax.yaxis.label):
            t.set_color(color)
        ax.tick_params(colors=color)
        for sp in ax.spines.values():
            sp.set_color(color)
        if ax.get_legend() is not None:
            for t in ax.get_legend().get_texts():
                t.set_color(color)


def plot_cka_heatmap(cka_matrix, layers1: List[str] | None = None,
                     layers2: List[str] | None = None, model1_name: str = "Model 1",
                     model2_name: str = "Model 2", title: str | None = None,
                     cmap: str = "magma", vmin: float | None = None, vmax: float | None = None,
                     annot: bool = False, annot_fmt: str = ".2f",
                     figsize: Tuple[float, float] | None = None, ax=None,
                     colorbar: bool = True, tick_fontsize: int = 8, label_fontsize: int = 12,
                     title_fontsize: int = 14, annot_fontsize: int = 6,
                     layer_name_depth: int | None = None, text_color: str | None = None,
                     show: bool = False):
    """Heatmap of an (L1, L2) CKA matrix: model1 layers on y (first row at the bottom, as
    the original draws it), model2 on x; ``layer_name_depth=k`` keeps the last k dotted
    parts of each name. Figure size by default ``(max(6, 0.4·L2 + 2), max(5, 0.4·L1 + 1))`` inches."""
    plt = _plt()
    m = to_numpy(cka_matrix, "cka_matrix", ndim=2)
    l1, l2 = m.shape
    for names, arg, k in ((layers1, "layers1", l1), (layers2, "layers2", l2)):
        if names is not None and len(names) != k:
            raise ValueError(f"{arg} has {len(names)} names but cka_matrix has {k} "
                             f"{'rows' if arg == 'layers1' else 'columns'}")
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize or (max(6, l2 * 0.4 + 2), max(5, l1 * 0.4 + 1)))
    else:
        fig = ax.get_figure()
    lo, hi = limits(m, vmin, vmax)
    im = heatmap(ax, m, cmap=cmap, vmin=lo, vmax=hi, origin="upper",
                 annot_fmt=annot_fmt if annot else None, annot_fontsize=annot_fontsize)
    ax.invert_yaxis()                    # as the original: row 0 ends at the bottom
    ax.set_xlabel(f"{model2_name} Layers", fontsize=label_fontsize, parse_math=False)
    ax.set_ylabel(f"{model1_name} Layers", fontsize=label_fontsize, parse_math=False)
    if layers1 is not None:
        ax.set_yticks(range(l1))
        ax.set_yticklabels(_short(layers1, layer_name_depth), fontsize=tick_fontsize,
                           parse_math=False)
    if layers2 is not None:
        ax.set_xticks(range(l2))
        ax.set_xticklabels(_short(layers2, layer_name_depth), fontsize=tick_fontsize,
                           rotation=45, ha="right", parse_math=False)
    ax.set_title(title if title is not None else f"CKA: {model1_name} vs {model2_name}",
                 fontsize=title_fontsize, parse_math=False)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(
            "CKA Similarity", fontsize=label_fontsize - 2)
    _recolor(fig, text_color)
    if fig.get_layout_engine() is None:    # keep a grid's constrained layout (comparison)
        fig.tight_layout()
    if show:
        plt.show()
    return fig, ax


def plot_cka_comparison(matrices: List, titles: List[str], layers: List[str] | None = None,
                        ncols: int = 2, figsize: Tuple[float, float] | None = None,
                        share_colorbar: bool = True, cmap: str = "magma",
                        text_color: str | None = None, show: bool = False, **heatmap_kwargs):
    """Several CKA matrices side by side in a grid of ``ncols`` columns (one heatmap each,
    ``layers`` on both axes); ``share_colorbar``: one colour scale over all matrices and
    one colorbar. Figure size by default ``(5·ncols, 4·nrows)``."""
    plt = _plt()
    if len(matrices) == 0:
        raise ValueError("matrices is empty: give at least one CKA matrix")
    if len(titles) < len(matrices):
        raise ValueError(f"titles has {len(titles)} entries for {len(matrices)} matrices")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    arrays = [to_numpy(m, f"matrices[{i}]", ndim=2) for i, m in enumerate(matrices)]
    nrows = -(-len(arrays) // ncols)
    heatmap_kwargs.pop("text_color", None)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (5 * ncols, 4 * nrows),
                             constrained_layout=share_colorbar)
    axes = np.atleast_2d(axes)
    if share_colorbar:
        lo, hi = limits(np.concatenate([a.ravel() for a in arrays]), None, None)
        heatmap_kwargs["vmin"], heatmap_kwargs["vmax"] = lo, hi
    for i, (m, t) in enumerate(zip(arrays, titles)):
        plot_cka_heatmap(m, layers1=layers, layers2=layers, title=t, ax=axes.flat[i],
                         cmap=cmap, colorbar=not share_colorbar, **heatmap_kwargs)
    for ax in axes.flat[len(arrays):]:
        ax.set_visible(False)
    if share_colorbar:
        import matplotlib.colors as mcolors
        sm = plt.cm.ScalarMappable(norm=mcolors.Normalize(vmin=lo, vmax=hi), cmap=cmap)
        sm.set_array([])
        fig.colorbar(sm, ax=axes, fraction=0.02, pad=0.02, label="CKA Similarity")
    else:
        fig.tight_layout()
    _recolor(fig, text_color)
    if show:
        plt.show()
    return fig, axes


from ._trend import plot_cka_layer_trend, plot_cka_trend, plot_cka_trend_with_range  # noqa: E402


def save_figure(fig, path: str, dpi: int = 150, bbox_inches: str = "tight",
                transparent: bool = False) -> None:
    """Write ``fig`` to ``path`` (format from the extension) and close it.
    ``transparent=True`` also clears legend backgrounds."""
    if transparent:
        for ax in fig.axes:
            if ax.get_legend() is not None:
                ax.get_legend().get_frame().set_facecolor("none")
    fig.savefig(path, dpi=dpi, bbox_inches=bbox_inches, transparent=transparent)
    _plt().close(fig)
