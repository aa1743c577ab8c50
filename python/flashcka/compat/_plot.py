"""The heatmap drawing shared by the adapters' plot functions (torch-cka's
``plot_results``, pytorch-cka's ``plot_cka_heatmap``), following ``CKAResult.plot``:
nearest-neighbour cells, names and titles as plain text, NaN cells written "nan",
annotation colour by the cell's place in the colour range."""
from __future__ import annotations

import math

import numpy as np
import torch


def to_numpy(values, arg: str, ndim: int | None = None) -> np.ndarray:
    """A tensor or array-like as a float64 numpy array (``ndim`` checked, naming ``arg``)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{arg} must be a tensor or an array of numbers: {e}") from None
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{arg} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{arg} is empty (shape {a.shape})")
    return a


def limits(values: np.ndarray, vmin, vmax) -> tuple[float, float]:
    """Colour limits: the given ones, else the smallest/largest finite value
    ((0, 1) when none is finite)."""
    finite = values[np.isfinite(values)]
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    return lo, hi


def heatmap(ax, m: np.ndarray, *, cmap: str, vmin: float, vmax: float, origin: str,
            annot_fmt: str | None = None, annot_fontsize: int = 6):
    """Draw the (L1, L2) matrix ``m`` on ``ax`` (row i at height i; ``origin`` "lower" puts
    row 0 at the bottom, "upper" at the top); ``annot_fmt``: write each value in its cell.
    Returns the image (for a colorbar)."""
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin=origin,
                   interpolation="nearest")
    if annot_fmt is not None:
        mid = (vmin + vmax) / 2
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                v = m[i, j]
                text = "nan" if math.isnan(v) else format(v, annot_fmt)
                ax.text(j, i, text, ha="center", va="center", fontsize=annot_fontsize,
                        color="white" if not math.isnan(v) and v < mid else "black",
                        parse_math=False)
    return im
