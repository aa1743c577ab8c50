"""Argument checks shared by the studies in ``flashcka.analysis``."""
from __future__ import annotations

import numpy as np
import torch


def as_matrix(m, arg: str, *, square: bool = False) -> torch.Tensor:
    """A ``CKAResult``, tensor or array -> 2-D float64 CPU tensor (NaN allowed)."""
    from ..result import CKAResult
    if isinstance(m, CKAResult):
        t = m.matrix
    elif isinstance(m, torch.Tensor):
        t = m.detach()
    elif isinstance(m, np.ndarray):
        t = torch.from_numpy(np.asarray(m))
    else:
        raise TypeError(f"{arg} must be a CKAResult, a torch.Tensor or a numpy array, got "
                        f"{type(m).__name__}")
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{arg} has dtype {t.dtype}; a real matrix is needed")
    if t.dim() != 2:
        raise ValueError(f"{arg} must be a 2-D matrix, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{arg} is empty (shape {tuple(t.shape)})")
    if square and t.shape[0] != t.shape[1]:
        raise ValueError(f"{arg} must be square (a layer-by-layer or model-by-model matrix), "
                         f"got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float64)


def as_features(x, arg: str, *, min_rows: int = 1) -> torch.Tensor:
    """A real floating tensor (n, ...) -> (n, d) view; validates like the core functions."""
    from ..core import validate as _validate
    _validate.representation(x, arg)
    if x.shape[0] < min_rows:
        raise ValueError(f"{arg} has n = {x.shape[0]} samples; at least {min_rows} are needed")
    x = x.reshape(x.shape[0], -1)
    if not bool(torch.isfinite(x).all()):
        _validate.raise_non_finite(x, arg, x.dtype)
    return x


def positive_int(v, arg: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{arg} must be an int >= {minimum}, got {v!r}")
    return int(v)


def relative_depth(num_layers: int) -> torch.Tensor:
    """(L,) float64: layer l of L sits at relative depth l / (L − 1) (0 for L = 1)."""
    num_layers = positive_int(num_layers, "num_layers")
    if num_layers == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.arange(num_layers, dtype=torch.float64) / (num_layers - 1)
