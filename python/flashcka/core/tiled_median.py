"""The exact median heuristic of the tiled route, by streamed selection over distance tiles.

σ² = threshold² · median(D), D all n² squared distances (the n zeros of the diagonal
included; numpy's median: the mean of the two middle values when n² is even), exactly as
``backends.torch_backend.median_sq_distance`` defines it. The sorted n² values are n zeros
followed by each of the M = n(n−1)/2 strict-upper values twice, so each middle order
statistic is 0 or one order statistic of the strict upper triangle.

Selection without an n² buffer: D ≥ 0, so the bits of D read as an integer order the
values. Pass 1 counts every strict-upper value of every layer in 2^15 bins of its top 16
bits; the bin holding the wanted rank gives those bits and the rank within the bin. Each
further pass counts, among the values that match the known bits, the next 16 bits
(float32: pass 2 finds the value exactly); in float64 a pass instead collects the matching
values once there are at most ``COLLECT`` of them, and selects among them. Passes over the
tiles: 2 in float32, 2 to 4 in float64 (plus the HSIC pass). Every layer is selected in the
same passes; memory O(L · 2^16) per wanted rank.
"""
from __future__ import annotations

import torch

COLLECT = 1 << 22
_BITS = {torch.float32: (32, torch.int32), torch.float64: (64, torch.int64)}


def passes(ct: torch.dtype) -> int:
    """Passes the median needs at least (the progress bar's count; float64 may need more)."""
    return 2


class _Target:
    """One wanted order statistic (rank ``r``, 0-based) of a layer's strict-upper values."""

    def __init__(self, rank: int):
        self.r, self.pre, self.nb = rank, 0, 0
        self.rank0 = rank
        self.value = None           # the integer bits, once found
        self.collect = False
        self.hist = None
        self.found: list = []


def medians(be, layers, n: int, ct: torch.dtype, tile: int, bar, sweep):
    """(median, max) (L,) ct of each layer's n² squared distances (``sweep`` as in
    tiled.py). A backend with ``tile_histogram`` (native) counts the bits of a tile in one
    call; otherwise torch operations do (``_torch_counts``)."""
    width, it = _BITS[ct]
    total = n * n
    ranks = [(k - n) // 2 for k in ((total - 1) // 2, total // 2) if k >= n]
    targets = [[_Target(r) for r in sorted(set(ranks))] for _ in layers]
    maxd = torch.zeros(len(layers), dtype=torch.float64)
    native = getattr(be, "tile_histogram", None)
    masks: dict = {}
    first, done = True, 0
    while any(t.value is None for ts in targets for t in ts):
        if done >= passes(ct):                # float64 beyond two passes: say so
            bar.total += _count(n, tile)
            bar.refresh()
        groups = []                           # per layer: (pre, nb, collect) -> targets
        for ts in targets:
            g: dict = {}
            for t in ts:
                if t.value is None:
                    g.setdefault((t.pre, t.nb, t.collect), []).append(t)
            for (_, _, collect), group in g.items():
                if not collect:               # one histogram per group, shared
                    h = torch.zeros(1 << 16, dtype=torch.int64,
                                    device="cpu" if native else layers[0].mu.device)
                    for t in group:
                        t.hist = h
            groups.append(g)

        def visit(i0, i1, j0, j1, tiles, first=first):
            diag = i0 == j0
            for l, g in enumerate(groups):
                for (pre, nb, collect), group in g.items():
                    if native is not None and not collect:
                        top = native(tiles[l], diag, pre, nb, group[0].hist)
                    else:
                        top = _torch_counts(tiles[l], diag, pre, nb, collect, group, width,
                                            it, masks)
                    if first:
                        maxd[l] = max(float(maxd[l]), top)

        sweep(be, layers, n, ct, tile, "dist", visit, bar)
        first, done = False, done + 1
        for ts in targets:
            for t in ts:
                if t.value is None:
                    _refine(t, width)
    return _middle(targets, n, ct, it), maxd


def _torch_counts(v, diag, pre, nb, collect, group, width, it, masks) -> float:
    """The selection pass over one tile with torch operations: the strict upper values (a
    diagonal tile) or all, those matching ``pre`` in their top ``nb`` bits counted by their
    next 16 bits into the group's histogram, or collected. Returns the largest value
    (pass 1: nb = 0)."""
    if diag:
        k = v.shape[0]
        if k not in masks:
            masks[k] = torch.ones(k, k, dtype=torch.bool, device=v.device).triu(1)
        v = v[masks[k]]
    else:
        v = v.reshape(-1)
    top = float(v.max()) if nb == 0 and v.numel() else 0.0
    bits = v.view(it).to(torch.int64) if it == torch.int32 else v.view(it)
    b = bits if nb == 0 else bits[(bits >> (width - nb)) == pre]
    if collect:
        for t in group:
            t.found.append(b)
        return top
    group[0].hist += torch.bincount((b >> (width - nb - 16)) & 0xFFFF, minlength=1 << 16)
    return top


def _refine(t: _Target, width: int) -> None:
    """After a pass: fix the next 16 bits from the histogram, or select among the values
    collected; plan the next pass (collect when few values are left, float64)."""
    if t.collect:
        vals = torch.cat(t.found)
        t.value = int(torch.kthvalue(vals, t.r + 1).values) if vals.numel() > 1 else int(vals[0])
        t.found = []
        return
    c = torch.cumsum(t.hist, 0)
    b = int(torch.searchsorted(c, torch.tensor(t.r, device=c.device), right=True))
    below = int(c[b - 1]) if b > 0 else 0
    inbin = int(c[b]) - below
    t.r -= below
    t.pre, t.nb = (t.pre << 16) | b, t.nb + 16
    t.hist = None
    if t.nb == width:
        t.value = t.pre
    elif inbin <= COLLECT and width - t.nb > 16:
        t.collect = True


def _middle(targets, n, ct, it) -> torch.Tensor:
    """numpy's median of the n² values from the found order statistics: (L,) ct."""
    total = n * n
    out = []
    for ts in targets:
        by_rank = {t.rank0: t for t in ts}
        vals = []
        for k in ((total - 1) // 2, total // 2):
            if k < n:
                vals.append(torch.zeros((), dtype=ct))
            else:
                bits = torch.tensor(by_rank[(k - n) // 2].value, dtype=torch.int64)
                vals.append(bits.to(it).view(ct) if it == torch.int32 else bits.view(ct))
        out.append((vals[0] + vals[1]) / 2)
    return torch.stack(out)


def bandwidths(med: torch.Tensor, maxd: torch.Tensor, threshold: float, layers,
               ct) -> torch.Tensor:
    """2σ² = 2·threshold²·median per layer (ct). A zero median raises naming the layer,
    unless every distance is zero (a constant layer: its kernel is 11ᵀ whatever σ, which
    centres to 0, as on the Gram route)."""
    med = med.cpu()
    for l, ly in enumerate(layers):
        if not bool(med[l] > 0) and bool(maxd[l] > 0):
            raise ValueError(f"{ly.src.name}: the median heuristic gives sigma = 0 (at least "
                             f"half of the squared pairwise distances are zero, e.g. repeated "
                             f"samples); pass sigma=")
    two = 2.0 * threshold * threshold * med
    return torch.where(med > 0, two, torch.ones_like(two)).to(device=layers[0].mu.device,
                                                               dtype=ct)


def _count(n: int, tile: int) -> int:
    b = -(-n // tile)
    return b * (b + 1) // 2
