"""The tiled route: exact full-batch HSIC/CKA streamed over tiles of samples, never an n × n
matrix (docs/design.md §5, "The tiled route").

For each tile pair (I, J), I ≤ J, of sample blocks (``tile`` rows each), every layer's
kernel tile K_l[I, J] is made from its rows (``Backend.kernel_tiles``) and consumed at once:

    P_ab += w · Σ_ij K_a,ij K_b,ij   (the backend's pair stage on the flattened tiles)
    r_l[I] += row sums, r_l[J] += column sums   (float64)

w = 2 off the diagonal (K is symmetric: the tile (J, I) is the transpose), 1 on it; then
the tile is dropped. With S_l = Σ r_l, both estimators follow in closed form (float64):

    biased   (Gretton 2005):  (n−1)²·HSIC₀ = P_ab − (2/n)·r_aᵀr_b + S_a·S_b/n²
    unbiased (Song 2012):     n(n−3)·HSIC₁ = P_ab + S_a·S_b/((n−1)(n−2)) − 2/(n−2)·r_aᵀr_b

where for the unbiased estimator the tiles have a zero diagonal (K̃). Memory:
O(L·tile² + L·tile·d + L·n), never O(n²). Flops as the Gram route: n²·d per layer (only
I ≤ J) plus the pair stage on tiles.

Accuracy: features are centred first (one pass of column sums over the rows), exactly as
the Gram route does, so the linear kernel's closed-form corrections are near zero. RBF
kernel values are nearly constant where σ is wide: both estimators are invariant to
K → K − c·11ᵀ (biased) and K̃ → K̃ − c·(11ᵀ − I) (unbiased: U-centering annihilates it),
so each layer's tiles have c (the mean of its first tile) subtracted; sums across tiles
are float64. Scale: features are multiplied by a power of two (``engine.pow2_scale``,
exact), kept as an exponent as on the Gram route.

Passes over the tiles: 1 with the linear kernel or an absolute ``sigma``; with the median
heuristic 1 + the median's (``tiled_median``: 2 in float32, 2 to 4 in float64). Every
route also reads the rows once first (column means, ranges, finiteness, constant layers).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from . import engine as _engine, tiled_median as _median
from .engine import Hsics, Settings

DEFAULT_TILE = 1024
_CHUNK_VALUES = 1 << 24         # the stats pass reads at most this many values a time


@dataclass
class Layer:
    """One representation prepared for the tiles: rows ``src`` (a ``sources`` row source),
    column mean ``mu`` (float64, (d,)), power-of-two ``scale``, ``constant`` (every row
    equal: zero variance, exactly)."""
    src: object
    mu: torch.Tensor
    scale: float
    constant: bool
    mu_ct: torch.Tensor | None = None

    def block(self, start: int, stop: int, ct: torch.dtype) -> torch.Tensor:
        """scale·(x − 1μᵀ) of rows [start, stop) in ct, centred in float64 for float64 x
        (and exactly 0 for a constant layer)."""
        if self.constant:
            return torch.zeros(stop - start, 1, dtype=ct, device=self.mu.device)
        # every row was read through ``src.read`` (finiteness checked) by ``prepare``: the
        # tiles read them again without a second check
        x = self.src._rows(start, stop)
        if x.dtype == torch.float64:
            xc = (x - self.mu).to(ct)
        else:
            if self.mu_ct is None or self.mu_ct.dtype != ct:
                self.mu_ct = self.mu.to(ct)
            xc = x.to(ct) - self.mu_ct
        return xc.mul_(self.scale) if self.scale != 1.0 else xc

    def raw(self, start: int, stop: int, ct: torch.dtype):
        """(rows, μ in ct or None, scale) for a backend that centres as it packs
        (``centres_tiles``): x's own rows when x is in ct, else the centred block."""
        if self.constant or self.src.dtype != ct:
            return self.block(start, stop, ct), None, 1.0
        if self.mu_ct is None or self.mu_ct.dtype != ct:
            self.mu_ct = self.mu.to(ct)
        return self.src._rows(start, stop), self.mu_ct, self.scale


def prepare(src, ct: torch.dtype) -> Layer:
    """One pass over the rows of ``src``: column sums (float64), ranges, whether any row
    differs from the first; ``src.read`` checks finiteness (a ValueError naming the layer
    and the row)."""
    n, d = src.n, src.d
    step = max(1, _CHUNK_VALUES // max(d, 1))
    total = lo = hi = None
    varies = False
    first = src.read(0, 1)
    first = first.float() if first.element_size() == 1 else first
    for a in range(0, n, step):
        x = src.read(a, min(n, a + step))
        if x.element_size() == 1:
            x = x.float()               # float8: no reductions
        varies = varies or not bool((x == first).all())
        s = x.sum(0, dtype=torch.float64)
        mn, mx = torch.aminmax(x, dim=0)
        total = s if total is None else total + s
        lo = mn if lo is None else torch.minimum(lo, mn)
        hi = mx if hi is None else torch.maximum(hi, mx)
    mu = total / n
    amax = float(torch.maximum(hi.to(torch.float64) - mu, mu - lo.to(torch.float64)).max())
    return Layer(src, mu, _engine.pow2_scale(amax, ct, n * d), not varies)


def choose_tile(n: int, dims, ct: torch.dtype, budget: int = 1 << 28) -> int:
    """Rows per tile: DEFAULT_TILE, less where the tiles (L·tile²) and the rows of two
    blocks (2·tile·Σd, plus a float64 copy while centring) would pass ``budget`` bytes."""
    per = ct.itemsize
    t = DEFAULT_TILE
    while t > 16 and per * (len(dims) * t * t + 3 * t * sum(dims)) > budget:
        t //= 2
    return max(1, min(n, t))


def tiled_bytes(n: int, dims, ct: torch.dtype, tile: int | None = None) -> int:
    """Working memory of the tiled route (beyond its inputs): tiles, two blocks of rows,
    the row sums (L, n) float64 and the column statistics."""
    t = tile or choose_tile(n, dims, ct)
    L = len(dims)
    return ct.itemsize * (L * t * t + 3 * t * sum(dims)) + 8 * (L * n + 4 * sum(dims))


def tile_pairs(n: int, tile: int):
    """(i0, i1, j0, j1) of every tile pair I ≤ J, row by row."""
    starts = range(0, n, tile)
    for i0 in starts:
        for j0 in range(i0, n, tile):
            yield i0, min(n, i0 + tile), j0, min(n, j0 + tile)


def count_pairs(n: int, tile: int) -> int:
    b = -(-n // tile)
    return b * (b + 1) // 2


def sweep(be, layers, n, ct, tile, kernel, visit, bar, *, two_s2=None, shift=None,
          unbiased=True, sums=False):
    """Make every tile pair's tiles of all layers (one buffer, reused) and hand them to
    ``visit(i0, i1, j0, j1, tiles[, row sums, column sums])`` (``sums``: the tiles' float64
    row and column sums too); block I's rows are read once per row of tiles."""
    L = len(layers)
    dims = [1 if ly.constant else ly.src.d for ly in layers]
    device = layers[0].mu.device
    t = min(tile, n)
    buf = torch.empty(L * t * t, dtype=ct, device=device)
    sbuf = torch.empty(2 * L * t, dtype=torch.float64, device=device) if sums else None
    cur, xi = None, None
    bar.set_postfix_str(kernel if kernel == "dist" else "hsic", refresh=False)
    extra = {}
    if getattr(be, "centres_tiles", False):   # raw rows, centred as the backend packs them
        def rows(a, b):
            got = [ly.raw(a, b, ct) for ly in layers]
            extra.update(mus=[g[1] for g in got], scales=[g[2] for g in got])
            return [g[0] for g in got]
    else:
        def rows(a, b):
            return [ly.block(a, b, ct) for ly in layers]
    for i0, i1, j0, j1 in tile_pairs(n, tile):
        if cur != i0:
            cur, xi = i0, rows(i0, i1)
        xj = None if j0 == i0 else rows(j0, j1)
        out = buf[:L * (i1 - i0) * (j1 - j0)].view(L, i1 - i0, j1 - j0)
        rc = None
        if sums:
            rc = (sbuf[:L * (i1 - i0)].view(L, i1 - i0),
                  sbuf[L * t:L * (t + j1 - j0)].view(L, j1 - j0))
        be.kernel_tiles(xi, xj, out, kernel=kernel, two_s2=two_s2, shift=shift,
                        unbiased=unbiased, dims=dims, **extra,
                        **({} if rc is None else {"sums": rc}))
        visit(i0, i1, j0, j1, out, *(rc or ()))
        bar.update(1)


class Sums:
    """What HSIC needs, accumulated over tiles in float64: P (pairs), q (self terms when
    the sides differ), r (L, n) row sums."""

    def __init__(self, L: int, la: int, same: bool, n: int, device):
        f64 = dict(dtype=torch.float64, device=device)
        self.la, self.same = la, same
        lb = la if same else L - la
        self.p = torch.zeros(la, lb, **f64)
        self.q = None if same else torch.zeros(L, **f64)
        self.r = torch.zeros(L, n, **f64)

    def add(self, be, i0, i1, j0, j1, tiles, rows, cols):
        w = 1.0 if i0 == j0 else 2.0
        t = tiles.view(tiles.shape[0], -1)
        if be.name == "torch":    # the readable backend: products summed in float64
            t = t.to(torch.float64)
        if self.same:
            self.p += w * be.pair(t, t)
        else:
            self.p += w * be.pair(t[:self.la], t[self.la:])
            self.q += w * _engine._sq_row_norms(be, t)
        self.r[:, i0:i1] += rows
        if i0 != j0:
            self.r[:, j0:j1] += cols

    def closed_form(self, n: int, unbiased: bool):
        """(raw (L_A, L_B), qa, qb): n(n−3)·HSIC₁ or (n−1)²·HSIC₁₀ of every pair, float64."""
        r, s, la = self.r, self.r.sum(1), self.la
        rr_self = (r * r).sum(1)
        if unbiased:
            a, b = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2)
        else:
            a, b = 1.0 / (n * n), 2.0 / n
        if self.same:
            raw = self.p + a * s[:, None] * s[None, :] - b * (r @ r.T)
            return raw, raw.diagonal(), raw.diagonal()
        raw = self.p + a * s[:la, None] * s[None, la:] - b * (r[:la] @ r[la:].T)
        q = self.q + a * s * s - b * rr_self
        return raw, q[:la], q[la:]


def hsics(be, sa, sb, s: Settings, ct: torch.dtype, *, tile: int | None = None,
          progress: bool | None = None) -> tuple[Hsics, torch.Tensor, torch.Tensor]:
    """Every HSIC between the row sources ``sa`` and ``sb`` (None: sa with itself; see
    core/sources.py) by the tiled route -> (Hsics, constant_a (L_A,) bool, constant_b
    (L_B,) bool). ``tile``: rows per tile (default ``choose_tile``); ``progress``: a tqdm
    bar over tile pairs (None: when stderr is a terminal)."""
    same = sb is None
    srcs = list(sa) + ([] if same else list(sb))
    n = srcs[0].n
    tile = min(n, int(tile or choose_tile(n, [src.d for src in srcs], ct)))
    layers = [prepare(src, ct) for src in srcs]
    la = len(sa)
    L = len(layers)
    device = layers[0].mu.device
    median = s.kernel == "rbf" and s.sigma is None
    passes = 1 + (_median.passes(ct) if median else 0)
    bar = _bar(progress, passes * count_pairs(n, tile))
    try:
        two_s2, shift = None, None
        if s.kernel == "rbf":
            if median:
                med, maxd = _median.medians(be, layers, n, ct, tile, bar, sweep)
                two_s2 = _median.bandwidths(med, maxd, s.threshold, layers, ct)
            else:
                sig = torch.tensor([s.sigma * ly.scale for ly in layers], dtype=torch.float64)
                two_s2 = (2.0 * sig * sig).to(device=device, dtype=ct)
            shift = _first_tile_mean(be, layers, n, ct, tile, two_s2, s.unbiased)
        sums = Sums(L, la, same, n, device)
        sweep(be, layers, n, ct, tile, s.kernel, lambda *a: sums.add(be, *a), bar,
              two_s2=two_s2, shift=shift, unbiased=s.unbiased, sums=True)
    finally:
        bar.close()
    raw, qa, qb = sums.closed_form(n, s.unbiased)
    if s.kernel == "linear":
        e = torch.tensor([-2.0 * (math.frexp(ly.scale)[1] - 1) for ly in layers],
                         dtype=torch.float64, device=device)
    else:
        e = torch.zeros(L, dtype=torch.float64, device=device)
    h = _engine.hsics(raw, qa, qb, e[:la], e[:la] if same else e[la:],
                      _engine.normaliser(n, s.unbiased), same)
    const = torch.tensor([ly.constant for ly in layers], device=device)
    return h, const[:la], const[:la] if same else const[la:]


def _first_tile_mean(be, layers, n, ct, tile, two_s2, unbiased):
    """Each layer's shift c: the mean of its RBF tile (0, 0), in ct."""
    t = min(n, tile)
    xi = [ly.block(0, t, ct) for ly in layers]  # (centred here: any backend)
    out = torch.empty(len(layers), t, t, dtype=ct, device=layers[0].mu.device)
    be.kernel_tiles(xi, None, out, kernel="rbf", two_s2=two_s2, shift=None, unbiased=False,
                    dims=[1 if ly.constant else ly.src.d for ly in layers])
    return out.mean((1, 2), dtype=torch.float64).to(ct)


def _bar(progress, total):
    from tqdm.auto import tqdm
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    return tqdm(total=total, disable=not progress, desc="flashcka tiles", unit="tile pair")
