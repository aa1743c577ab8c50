"""pytorch-cka 1.1.3's trend plots (re-exported by ``viz``): CKA over epochs, steps or
layers, one line per series, optional shaded range. Same arguments and defaults as the
original; each returns ``(Figure, Axes)``."""
from __future__ import annotations

from typing import Literal, Sequence, Tuple

import numpy as np

from .._plot import to_numpy

# colour variants for series beyond tab10 ("variant"): blend towards white / black
_VARIANTS = ((1.0, 0.35), (0.0, 0.35), (1.0, 0.6), (0.0, 0.6), (1.0, 0.8), (0.0, 0.8))


def _series(values, arg: str) -> list[np.ndarray]:
    """1-D -> one series; 2-D (n_lines, n_points) -> its rows; a list of scalars -> one
    series; a list of 1-D arrays -> those."""
    if isinstance(values, (list, tuple)):
        if len(values) == 0:
            raise ValueError(f"{arg} must contain at least one series")
        if all(np.isscalar(v) for v in values):
            return [to_numpy(values, arg, 1)]
        return [to_numpy(v, f"{arg}[{i}]", 1) for i, v in enumerate(values)]
    a = to_numpy(values, arg)
    if a.ndim not in (1, 2):
        raise ValueError(f"{arg} must be 1D or 2D, got shape {a.shape}")
    return [a] if a.ndim == 1 else list(a)


def _x(x_values, n_lines: int, n_points: int) -> list[np.ndarray]:
    if x_values is None:
        return [np.arange(n_points)] * n_lines
    first = x_values[0] if isinstance(x_values, (list, tuple)) and x_values else None
    nested = (isinstance(x_values, np.ndarray) and x_values.ndim == 2) or \
        isinstance(first, (list, tuple, np.ndarray))
    xs = [np.asarray(x) for x in x_values] if nested else [np.asarray(x_values)] * n_lines
    if len(xs) != n_lines or any(x.ndim != 1 or len(x) != n_points for x in xs):
        raise ValueError(f"x_values must be one sequence of {n_points} values or one per line "
                         f"({n_lines} lines)")
    return xs


def _per_line(v, n: int, arg: str) -> list:
    if v is None:
        return [None] * n
    if isinstance(v, (list, tuple)):
        if len(v) in (1, n):
            return list(v) * (n if len(v) == 1 else 1)
        raise ValueError(f"{arg} length must match number of lines ({n}), got {len(v)}")
    return [v] * n


def _colors(n: int, overflow: str) -> list:
    import matplotlib
    tab10 = list(matplotlib.colormaps["tab10"].colors)
    if n <= 10 or overflow == "repeat":
        return [tab10[i % 10] for i in range(n)]
    if overflow == "tab20":
        tab20 = list(matplotlib.colormaps["tab20"].colors)
        return [tab20[i % 20] for i in range(n)]
    if overflow != "variant":
        raise ValueError(f"color_overflow must be 'tab20', 'variant' or 'repeat', got "
                         f"{overflow!r}")
    out = []
    for i in range(n):
        base, cycle = np.array(tab10[i % 10][:3]), i // 10
        if cycle == 0:
            out.append(tuple(base))
            continue
        target, alpha = _VARIANTS[min(cycle - 1, len(_VARIANTS) - 1)]
        out.append(tuple((base * (1 - alpha) + target * alpha).tolist()))
    return out


def plot_cka_trend(values, x_values=None, labels: Sequence[str] | None = None,
                   colors: Sequence | None = None, linestyles: Sequence[str] | None = None,
                   markers: Sequence[str] | None = None, xlabel: str = "Epoch",
                   ylabel: str = "CKA Score", title: str | None = None,
                   figsize: Tuple[float, float] | None = None, ax=None, legend: bool = False,
                   grid: bool = True, show: bool = False,
                   ylim: Tuple[float, float] | None = (0.0, 1.05), show_range: bool = False,
                   range_values=None, range_alpha: float = 0.2,
                   color_overflow: Literal["tab20", "variant", "repeat"] = "tab20",
                   text_color: str | None = None):
    """Lines of CKA values: ``values`` 1-D (one line), 2-D (n_lines, n_points) or a list of
    1-D series. ``show_range`` shades ``range_values``: a std per point (band mean ± std)
    or a ``(lower, upper)`` tuple. Legend only for several lines."""
    from .viz import _plt, _recolor
    plt = _plt()
    series = _series(values, "values")
    n, p = len(series), len(series[0])
    if any(len(s) != p for s in series):
        raise ValueError("All series must have the same length.")
    xs = _x(x_values, n, p)
    colors = _per_line(colors if colors is not None else _colors(n, color_overflow), n,
                       "colors")
    styles, marks, labs = (_per_line(v, n, a) for v, a in ((linestyles, "linestyles"),
                                                             (markers, "markers"),
                                                             (labels, "labels")))
    bands = _bands(series, range_values) if show_range else None
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.get_figure()
    for i, (s, x) in enumerate(zip(series, xs)):
        ax.plot(x, s, color=colors[i], linestyle=styles[i], marker=marks[i], label=labs[i])
        if bands is not None:
            ax.fill_between(x, bands[0][i], bands[1][i], color=colors[i], alpha=range_alpha,
                            linewidth=0)
    ax.set_xlabel(xlabel, parse_math=False)
    ax.set_ylabel(ylabel, parse_math=False)
    if title is not None:
        ax.set_title(title, parse_math=False)
    if ylim is not None:
        ax.set_ylim(ylim)
    if grid:
        ax.grid(True, linestyle="--", alpha=0.3)
    else:                     # (the original's grid(False, linestyle=...) turns it on)
        ax.grid(False)
    if legend and n > 1:
        if all(lab is None for lab in labs):
            ax.legend([f"Series {i + 1}" for i in range(n)])
        else:
            ax.legend()
    _recolor(fig, text_color)
    fig.tight_layout()
    if show:
        plt.show()
    return fig, ax


def _bands(series, range_values):
    n, p = len(series), len(series[0])
    if range_values is None:
        raise ValueError("show_range=True requires range_values or use "
                         "plot_cka_trend_with_range.")
    if isinstance(range_values, tuple) and len(range_values) == 2:
        lo, hi = _series(range_values[0], "range_values[0]"), \
            _series(range_values[1], "range_values[1]")
        lo, hi = (lo * n if len(lo) == 1 else lo), (hi * n if len(hi) == 1 else hi)
    else:
        sd = _series(range_values, "range_values")
        sd = sd * n if len(sd) == 1 else sd
        if len(sd) != n:
            raise ValueError(f"range_values must match number of lines ({n})")
        lo, hi = [s - r for s, r in zip(series, sd)], [s + r for s, r in zip(series, sd)]
    if len(lo) != n or len(hi) != n:
        raise ValueError(f"range_values must match number of lines ({n})")
    if any(len(a) != p for a in lo + hi):
        raise ValueError(f"range_values length must match series length ({p})")
    return lo, hi


def plot_cka_trend_with_range(values, x_values=None, labels=None, colors=None,
                              linestyles=None, markers=None, xlabel: str = "Epoch",
                              ylabel: str = "CKA Score", title: str | None = None,
                              figsize=None, ax=None, legend: bool = False, grid: bool = True,
                              show: bool = False,
                              ylim: Tuple[float, float] | None = (0.0, 1.05),
                              range_alpha: float = 0.2,
                              color_overflow: Literal["variant", "repeat", "tab20"] = "variant",
                              text_color: str | None = None):
    """Mean ± std over repeated runs: ``values`` 2-D (n_runs, n_points) for one line, 3-D
    (n_lines, n_runs, n_points) or a list of 2-D arrays; NaNs ignored (nanmean/nanstd,
    population std)."""
    if isinstance(values, (list, tuple)):
        if len(values) == 0:
            raise ValueError("values must contain at least one group.")
        groups = [to_numpy(v, f"values[{i}]", 2) for i, v in enumerate(values)]
    else:
        a = to_numpy(values, "values")
        if a.ndim not in (2, 3):
            raise ValueError(f"values must be 2D or 3D for range plotting, got shape {a.shape}")
        groups = [a] if a.ndim == 2 else list(a)
    means = [np.nanmean(g, axis=0) for g in groups]
    stds = [np.nanstd(g, axis=0) for g in groups]
    return plot_cka_trend(means, x_values=x_values, labels=labels, colors=colors,
                          linestyles=linestyles, markers=markers, xlabel=xlabel,
                          ylabel=ylabel, title=title, figsize=figsize, ax=ax, legend=legend,
                          grid=grid, show=show, ylim=ylim, show_range=True,
                          range_values=stds, range_alpha=range_alpha,
                          color_overflow=color_overflow, text_color=text_color)


def plot_cka_layer_trend(cka_matrices, layers: Sequence[str] | None = None,
                         layer_name_depth: int | None = None, labels=None, colors=None,
                         linestyles=None, markers=None, xlabel: str = "Layer",
                         ylabel: str = "CKA Score", title: str | None = None, figsize=None,
                         ax=None, legend: bool = False, grid: bool = True, show: bool = False,
                         ylim: Tuple[float, float] | None = (0.0, 1.05),
                         color_overflow: Literal["tab20", "variant", "repeat"] = "tab20",
                         text_color: str | None = None):
    """The diagonal CKA_ii of each matrix (layer i of model1 vs layer i of model2) as a
    line over layers, marker "o" by default; ``layers`` label the x ticks."""
    from .viz import _plt, _recolor, _short
    if isinstance(cka_matrices, (list, tuple)):
        if len(cka_matrices) == 0:
            raise ValueError("cka_matrices must contain at least one matrix.")
        mats = [to_numpy(m, f"cka_matrices[{i}]", 2) for i, m in enumerate(cka_matrices)]
    else:
        mats = [to_numpy(cka_matrices, "cka_matrices", 2)]
    diags = [np.diag(m) for m in mats]
    p = len(diags[0])
    if layers is not None and len(layers) != p:
        raise ValueError(f"layers length ({len(layers)}) must match diagonal length ({p}).")
    fig, ax = plot_cka_trend(diags, labels=labels, colors=colors, linestyles=linestyles,
                             markers=markers if markers is not None else ["o"], xlabel=xlabel,
                             ylabel=ylabel, title=title, figsize=figsize, ax=ax, legend=legend,
                             grid=grid, show=False, ylim=ylim, color_overflow=color_overflow)
    ax.set_xticks(list(range(p)))
    if layers is not None:
        ax.set_xticklabels(_short(layers, layer_name_depth), rotation=45, ha="right",
                           parse_math=False)
    _recolor(fig, text_color)
    if show:
        _plt().show()
    return fig, ax
