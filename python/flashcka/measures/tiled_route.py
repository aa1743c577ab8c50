"""``route="tiled"`` of cka_matrix / hsic / cka, and ``route="auto"``'s memory rule.

The tiled route (core/tiled.py) reads every input through a row source
(core/sources.py), so tensors, NumPy arrays and memmaps, ``.npy`` / ``.safetensors`` /
HDF5 files and h5py datasets all work, a block of rows at a time. ``route="auto"`` takes
it when the Gram route's packed Grams (L · n(n−1)/2 values, plus the backend's n × n
scratch) would exceed ``max_memory`` bytes (default: what the device has available,
``core.memory.available_bytes``), and whenever an input is not in memory (a path, a
memmap, an h5py dataset).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from .. import backends
from ..backends.base import Backend
from ..core import engine as _engine, memory as _memory, sources as _sources, tiled as _tiled
from ..core.engine import Settings


def needs_sources(xs) -> bool:
    """Whether ``xs`` holds a layer that is not a tensor or an in-memory NumPy array (a
    path, a memmap, an h5py dataset, a row source): only the tiled route reads those."""
    if isinstance(xs, (str, os.PathLike)):
        return True
    if isinstance(xs, Mapping):
        return any(_external(v) for v in xs.values())
    if isinstance(xs, Sequence) and not isinstance(xs, (str, bytes)):
        return any(_external(v) for v in xs)
    return _external(xs)


def _external(v) -> bool:
    """A layer only a row source reads: a path, a (path, key) pair, a memmap, a source, or
    an array-like with shape, dtype and row slicing (h5py, zarr) that is not a tensor or an
    in-memory NumPy array."""
    if isinstance(v, (torch.Tensor, list)) or type(v).__name__ == "ndarray":
        return False
    return (isinstance(v, (str, os.PathLike, _sources.Source))
            or (isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], (str, os.PathLike)))
            or all(hasattr(v, a) for a in ("shape", "dtype", "__getitem__")))


def max_memory_arg(max_memory) -> int | None:
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)) \
            or not max_memory > 0:
        raise ValueError(f"max_memory must be a positive number of bytes or None, got "
                         f"{max_memory!r}")
    return int(max_memory)


def gram_bytes(be, n: int, layers: int, ct: torch.dtype, unbiased: bool) -> int:
    """Memory of the Gram route: every layer's packed centered Gram and the backend's
    scratch (as ``engine.check_memory`` counts it)."""
    return layers * be.row_length(n, unbiased) * ct.itemsize + be.scratch_bytes(n, ct)


def budget(max_memory, device: torch.device) -> int | None:
    """``max_memory`` bytes, or by default what ``device`` has available (None: unknown)."""
    m = max_memory_arg(max_memory)
    return m if m is not None else _memory.available_bytes(device)


def gram_too_big(be, n, layers, ct, unbiased, max_memory, device) -> bool:
    cap = budget(max_memory, device)
    return cap is not None and gram_bytes(be, n, layers, ct, unbiased) > cap


def tile_backend(backend: str, probe: torch.Tensor):
    """The backend for the tiles: ``backends.select``'s, or the torch backend where the
    selected one has no tile kernels (``Backend.kernel_tiles``)."""
    be = backends.select(backend, probe)
    if type(be).kernel_tiles is Backend.kernel_tiles:
        if backend != "auto":
            raise ValueError(f"backend={backend!r} has no tile kernels for route='tiled'; "
                             f"use backend='auto' or 'torch'")
        return backends.get("torch")
    return be


def run(xs, ys, s: Settings, dtype, backend: str, want: str = "cka", *,
        progress: bool | None = None, tile: int | None = None) -> torch.Tensor:
    """All-pairs CKA (or HSIC, ``want="hsic"``) of xs against ys (None: itself) by the
    tiled route -> (L_A, L_B) float64."""
    s.check()
    backends.check_name(backend)
    sa = _sources.open_layers(xs, "xs")
    sb = None if ys is None else _sources.open_layers(ys, "ys")
    groups = [sa] + ([] if sb is None else [sb])
    n = _sources.same_n(groups)
    allsrc = [src for g in groups for src in g]
    need = 4 if s.unbiased else 2
    if n < need:
        kind = "unbiased (debiased) estimators need n >= 4" if s.unbiased else \
            "the biased estimator needs n >= 2"
        raise ValueError(f"{allsrc[0].name} has n = {n} samples; {kind}"
                         + ("; pass unbiased=False for the biased estimator"
                            if s.unbiased else ""))
    devices = {str(src.device) for src in allsrc}
    if len(devices) > 1:
        raise ValueError(f"the layers are on several devices ({sorted(devices)}); move them "
                         f"to one device")
    if torch.is_grad_enabled() and any(getattr(getattr(src, "x", None), "requires_grad",
                                               False) for src in allsrc):
        raise ValueError("route='tiled' returns detached results (its sums are accumulated "
                         "tile by tile); use route='gram' for a result that carries the "
                         "graph, or detach the inputs / use torch.no_grad()")
    from ..core import validate as _validate
    _validate.dtype_arg(dtype)
    ct = dtype or (torch.float64 if any(src.dtype == torch.float64 for src in allsrc)
                   else torch.float32)
    be = tile_backend(backend, torch.empty(1, 1, dtype=ct, device=allsrc[0].device))
    h, ca, cb = _tiled.hsics(be, sa, sb, s, ct, tile=tile, progress=progress)
    na = [src.name for src in sa]
    nb = na if sb is None else [src.name for src in sb]
    if want == "hsic":
        return _engine.in_units(h, na, nb)
    return _engine.cka_from_hsic(h.cross, h.self_a, h.self_b, ca, cb, na, nb)
