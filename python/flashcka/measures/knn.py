"""Nearest-neighbour measures (Huh et al. 2024, platonic-rep): mutual kNN and CKNNA for
every layer pair, exact, streamed over tiles of the inner-product Gram (issue 19).

Neighbours of sample i: the ``topk`` samples j with the largest ``⟨x_i, x_j⟩`` (raw
features, as platonic-rep's ``compute_nearest_neighbors``), i itself excluded (included
as a candidate only by CKNNA with ``unbiased=False``, as in the original). **Ties: the
lower index wins** (j before j' when ⟨x_i, x_j⟩ = ⟨x_i, x_j'⟩ and j < j'), as a stable
sort of −K's rows (``numpy.argsort(kind="stable")``) orders them.

How (``neighbours``): sample tiles I ≤ J; for each tile pair every layer's Gram tile
``X_I X_Jᵀ`` is made once and merged into the running top-k of rows I (columns J) and,
transposed, of rows J (columns I); then dropped. Memory: L·n·topk neighbour indices and
Gram values plus one tile per layer, never an n × n matrix. Each row's columns arrive in
increasing order and a row's running list is kept in increasing index order, so "lower
position wins" among equal values is "lower index wins" (``_select``).

All pairs then come from the neighbour lists alone (``mutual_knn_pairs``, ``cknna_pairs``):
each row's lists of two layers are intersected by a sorted search on the edge keys
``i·n + j``, O(n·topk·log(n·topk)) per pair.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from ..core import sources as _sources, validate as _validate

DEFAULT_TILE = 2048


def knn_layers(xs, ys, *, measure: str, topk, unbiased: bool, dtype, max_bytes: int,
               progress: bool | None = None, tile: int = DEFAULT_TILE):
    """Open and check ``xs``/``ys`` (any row sources, ``core.sources.open_layers``), then
    stream every layer's neighbour lists in one pass over the tile pairs: returns
    (neighbours of xs, of ys or None, xs's names, ys's names). mutual kNN computes the
    Grams in the inputs' dtype (``validate.compute_dtype``), CKNNA in float64. Every
    check (n, dtype, devices, gradients, ``topk``, memory, finiteness in a first pass that
    also finds each layer's power-of-two scale) comes before the Gram tiles."""
    sa = _sources.open_layers(xs, "xs")
    sb = None if ys is None else _sources.open_layers(ys, "ys")
    groups = [(s, [t.name for t in s]) for s in ([sa] if sb is None else [sa, sb])]
    n = _validate.sample_count(groups, unbiased=measure == "cknna" and unbiased)
    _validate.device_of(groups)
    ct = torch.float64 if measure == "cknna" else _validate.compute_dtype(groups, dtype)
    if torch.is_grad_enabled() and any(getattr(getattr(t, "x", None), "requires_grad", False)
                                       for s, _ in groups for t in s):
        raise ValueError(f"similarity_matrix(measure={measure!r}) does not carry gradients "
                         f"(neighbour sets and ranks are not differentiable): detach the "
                         f"inputs or call it under torch.no_grad(); measure='cka' does")
    low = 2 if measure == "cknna" else 1
    high = n - 1 if (measure == "mutual_knn" or unbiased) else n
    if isinstance(topk, bool) or not isinstance(topk, int) or not low <= topk <= high:
        raise ValueError(f"topk must be an int in [{low}, {high}] for {measure} with n = {n} "
                         f"samples, got {topk!r}")
    every = sa + ([] if sb is None else sb)
    la, lb = len(sa), len(sa if sb is None else sb)
    need = knn_bytes(n, len(every), topk, max(t.d for t in every), tile,
                     torch.empty((), dtype=ct).element_size())
    if need > max_bytes:
        raise ValueError(f"{measure} over n = {n} samples and {la} x {lb} layers needs about "
                         f"{need / 2**30:.2f} GiB (neighbour lists and Gram tiles of {tile} "
                         f"rows), over max_bytes = {max_bytes / 2**30:.2f} GiB: use fewer "
                         f"samples or layers, or raise max_bytes")
    scales = [pow2_scale(t, tile) for t in every]
    nbrs = neighbours(every, scales, topk, exclude_self=measure == "mutual_knn" or unbiased,
                      dtype=ct, tile=tile, progress=progress)
    names = [t.name for t in every]
    if sb is None:
        return nbrs, None, names, names
    return nbrs[:la], nbrs[la:], names[:la], names[la:]


def pow2_scale(source, tile: int) -> float:
    """The power of two that brings the layer's max |x| into [1/2, 1) (1 for an all-zero
    layer), found by reading it once (which checks every value is finite): the measures
    are invariant to a positive scale of a layer, and Grams of x·1e±40 leave float64."""
    amax = 0.0
    for start in range(0, source.n, tile):
        r = source.read(start, min(start + tile, source.n))
        amax = max(amax, float(r.float().abs().amax() if r.element_size() == 1
                               else r.abs().amax()))
    return math.ldexp(1.0, -math.frexp(amax)[1]) if amax > 0 else 1.0


def knn_indices(k: torch.Tensor, topk: int, exclude_self: bool = True) -> torch.Tensor:
    """(n, topk) indices of each row's largest entries of Gram ``k`` (n, n), nearest
    first; the diagonal is skipped when ``exclude_self``; ties: the lower index first."""
    if exclude_self:
        k = k.clone()
        k.fill_diagonal_(float("-inf"))
    return torch.sort(k, dim=1, descending=True, stable=True).indices[:, :topk]


def knn_mask(k: torch.Tensor, topk: int, exclude_self: bool = True,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """(n, n) 0/1 mask of each row's ``topk`` nearest neighbours (by inner product)."""
    idx = knn_indices(k, topk, exclude_self)
    mask = torch.zeros(k.shape, dtype=dtype or k.dtype, device=k.device)
    return mask.scatter_(1, idx, 1.0)


@dataclass
class Neighbours:
    """One layer's kNN lists: ``idx`` (n, topk) int64, each row in increasing index order;
    ``val`` (n, topk) the Gram entries K[i, idx[i, s]] (of the power-of-two scaled
    features, see ``neighbours``)."""
    idx: torch.Tensor
    val: torch.Tensor

    def keys(self) -> torch.Tensor:
        """Edge keys i·n + j, flattened row-major: sorted, since rows are."""
        n = self.idx.shape[0]
        return (torch.arange(n, device=self.idx.device)[:, None] * n + self.idx).reshape(-1)


def neighbours(sources, scales, topk: int, exclude_self: bool, dtype: torch.dtype,
               tile: int = DEFAULT_TILE, progress: bool | None = None) -> list[Neighbours]:
    """The ``topk`` nearest neighbours of every sample in every layer, streamed.

    sources: row sources (``core.sources``) of one n; scales: each layer's power-of-two
    factor (rows are read, multiplied by it, rounded once to ``dtype`` and multiplied as
    ``X_I X_Jᵀ`` in ``dtype``); tile: rows per tile. ``progress``: a tqdm bar over tile
    pairs (None: when stderr is a terminal and there is more than one tile pair)."""
    n = sources[0].n
    starts = list(range(0, n, tile))
    bounds = [(s, min(s + tile, n)) for s in starts]
    state = [[None] * len(bounds) for _ in sources]
    pairs = len(bounds) * (len(bounds) + 1) // 2
    if progress is None:
        progress = pairs > 1 and sys.stderr.isatty()
    # The Gram tile and its transpose live in two buffers made once: a fresh 16 MiB tile
    # per pair made glibc's heap grow with n (its mmap threshold rises after each free).
    # So do every layer's row tile I and one tile J.
    t = bounds[0][1]
    dev = sources[0].device
    buf = lambda k: torch.empty(k, dtype=dtype, device=dev)  # noqa: E731
    gbuf, tbuf, jbuf = buf(t * t), buf(t * t), buf(t * max(s.d for s in sources))
    ibufs = [buf(t * s.d) for s in sources]
    from tqdm.auto import tqdm
    with tqdm(total=pairs, disable=not progress, unit="tile pair",
              desc="flashcka kNN") as bar:
        for bi, (i0, i1) in enumerate(bounds):
            xi = [_rows(s, c, i0, i1, ib) for s, c, ib in zip(sources, scales, ibufs)]
            for bj in range(bi, len(bounds)):
                j0, j1 = bounds[bj]
                for layer, (a, src, c) in enumerate(zip(xi, sources, scales)):
                    b = a if bj == bi else _rows(src, c, j0, j1, jbuf)
                    g = torch.mm(a, b.T, out=gbuf[:len(a) * len(b)].view(len(a), len(b)))
                    rows = state[layer]
                    if bj == bi:
                        if exclude_self:
                            g.fill_diagonal_(float("-inf"))
                        rows[bi] = _merge(rows[bi], g, j0, topk)
                    else:
                        rows[bi] = _merge(rows[bi], g, j0, topk)
                        gt = tbuf[:len(a) * len(b)].view(len(b), len(a)).copy_(g.T)
                        rows[bj] = _merge(rows[bj], gt, i0, topk)
                bar.update()
    return [Neighbours(torch.cat([r[1] for r in rows]), torch.cat([r[0] for r in rows]))
            for rows in state]


def _rows(source, scale: float, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
    """Rows start..stop times ``scale`` (a power of two), in ``out``'s dtype, written into
    ``out``: exactly ``(rows in float64 · scale)`` rounded once to that dtype."""
    r = source.read(start, stop)
    x = out[:r.numel()].view(r.shape)
    if (r.dtype == torch.float64 and x.dtype != torch.float64) \
            or not 2.0 ** -100 <= scale <= 2.0 ** 100:   # (beyond float32's exponents)
        return x.copy_(r.to(torch.float64) * scale)
    return x.copy_(r).mul_(scale)          # exact: a widening copy, then a power of two


def _merge(run, g: torch.Tensor, col0: int, topk: int):
    """The running (values, indices) of a row block merged with Gram tile ``g`` whose
    columns are samples col0..; every index in ``run`` is below col0."""
    r, c = g.shape
    if c > topk:
        pos = _select(g, topk)
        vals, idx = g.gather(1, pos), pos + col0
    else:
        vals = g.clone()                   # g is a reused buffer
        idx = torch.arange(col0, col0 + c, device=g.device).expand(r, c)
    if run is None:
        return vals, idx
    vals, idx = torch.cat([run[0], vals], 1), torch.cat([run[1], idx], 1)
    if vals.shape[1] <= topk:
        return vals, idx
    pos = _select(vals, topk)
    return vals.gather(1, pos), idx.gather(1, pos)


def _select(v: torch.Tensor, k: int) -> torch.Tensor:
    """(r, k) column positions of each row's k largest entries (v has more than k columns),
    ascending; among equal values the lower position wins. The k largest values are
    unique; only a row whose (k+1)-th largest value equals its k-th has a choice to make,
    and there the first of the tied positions are taken."""
    top = torch.topk(v, k + 1, dim=1, sorted=True)
    pos = top.indices[:, :k].sort(1).values
    tau = top.values[:, k - 1:k]
    tied = (top.values[:, k] == tau[:, 0]).nonzero().flatten()
    if len(tied):
        w, t = v[tied], tau[tied]
        gt, eq = w > t, w == t
        keep = gt | (eq & (eq.cumsum(1) <= k - gt.sum(1, keepdim=True)))
        pos[tied] = keep.nonzero()[:, 1].view(-1, k)
    return pos


def _mutual_flags(a: Neighbours, keys: torch.Tensor) -> torch.Tensor:
    """(n·topk,) bool: entry (i, j) of a's lists has i in j's list too (A_ji = 1)."""
    n = a.idx.shape[0]
    rev = (a.idx * n + torch.arange(n, device=a.idx.device)[:, None]).reshape(-1)
    return _member(keys, rev)[0]


def _member(keys: torch.Tensor, q: torch.Tensor):
    """Which of ``q`` are in the sorted ``keys``, and where."""
    pos = torch.searchsorted(keys, q).clamp_(max=len(keys) - 1)
    return keys[pos] == q, pos


def mutual_knn_pairs(xa: list[Neighbours], xb: list[Neighbours], topk: int) -> torch.Tensor:
    """(L_A, L_B) float64: ``Σ_i |N_A(i) ∩ N_B(i)| / (n · topk)`` for every pair."""
    n = xa[0].idx.shape[0]
    kb = [b.keys() for b in xb]
    out = torch.empty(len(xa), len(xb), dtype=torch.float64)
    for p, a in enumerate(xa):
        ka = a.keys()
        for q, keys in enumerate(kb):
            out[p, q] = int(_member(keys, ka)[0].sum()) / (n * topk)
    return out


class CknnaLayers:
    """What CKNNA needs of each layer: its neighbour lists (float64 Gram values, the
    diagonal never included when unbiased), their edge keys and mutual flags."""

    def __init__(self, nbrs: list[Neighbours], unbiased: bool):
        self.nbrs, self.unbiased = nbrs, unbiased
        self.n = nbrs[0].idx.shape[0]
        self.keys = [a.keys() for a in nbrs]
        self.mutual = [_mutual_flags(a, k) for a, k in zip(nbrs, self.keys)]


def cknna_hsic(x: CknnaLayers, p: int, y: CknnaLayers, q: int) -> float:
    """HSIC(M∘K, M∘L) of layer p of x and layer q of y, M = A∘B (A, B the kNN masks), as
    platonic-rep's ``hsic_unbiased`` (Song et al. 2012) or biased ``tr(K'HL'H)`` on the
    masked kernels K' = M∘K, L' = M∘L, normalised by n(n−3) resp. (n−1)²:

      tr(K'L') = Σ_ij M_ij M_ji K_ij L_ij       1ᵀK'1 = Σ_M K_ij,  1ᵀL'1 = Σ_M L_ij
      1ᵀK'L'1 = Σ_j colsum_j(K') rowsum_j(L')    1ᵀL'K'1 = Σ_j colsum_j(L') rowsum_j(K')

    all sums over the entries of M, which are those of A's lists found in B's."""
    n, a, b = x.n, x.nbrs[p], y.nbrs[q]
    hit, pos = _member(y.keys[q], x.keys[p])
    k = a.val.reshape(-1)[hit].to(torch.float64)
    l_ = b.val.reshape(-1)[pos[hit]].to(torch.float64)
    i = torch.arange(n, device=hit.device).repeat_interleave(a.idx.shape[1])[hit]
    j = a.idx.reshape(-1)[hit]
    both = x.mutual[p][hit] & y.mutual[q][pos[hit]]
    t1 = float((k[both] * l_[both]).sum())
    sk, sl = float(k.sum()), float(l_.sum())
    zero = torch.zeros(n, dtype=torch.float64, device=k.device)
    rk, ck, rl, cl = (zero.clone().index_add_(0, at, w)     # row and column sums of K', L'
                      for at, w in ((i, k), (j, k), (i, l_), (j, l_)))
    kl = float((ck * rl).sum())
    if x.unbiased:
        return (t1 + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl) / (n * (n - 3))
    lk = float((cl * rk).sum())
    return (t1 - (kl + lk) / n + sk * sl / n ** 2) / (n - 1) ** 2


def cknna_pairs(x: CknnaLayers, y: CknnaLayers) -> torch.Tensor:
    """(L_A, L_B) float64 ``cknna_hsic`` of every pair."""
    return torch.tensor([[cknna_hsic(x, p, y, q) for q in range(len(y.nbrs))]
                         for p in range(len(x.nbrs))], dtype=torch.float64)


def cknna_self(x: CknnaLayers) -> torch.Tensor:
    """(L,) float64 HSIC(A∘K, A∘K) of every layer (a layer's mask with itself is A)."""
    return torch.tensor([cknna_hsic(x, p, x, p) for p in range(len(x.nbrs))],
                        dtype=torch.float64)


def knn_bytes(n: int, layers: int, topk: int, d: int, tile: int, elt: int) -> int:
    """Peak memory estimate of ``layers`` layers: per layer its neighbour lists (int64
    indices and values, plus the edge keys and mutual flags of the pair stage) and its
    row tile I (of at most ``d`` features); one tile J, a Gram tile, its transpose and
    their selection buffers; the pair stage's O(n·topk) temporaries (``elt``: bytes per
    value of the compute dtype)."""
    t = min(tile, n)
    per_layer = n * topk * (8 + elt + 9) + t * d * elt
    return layers * per_layer + t * d * elt + 6 * t * (t + topk) * 8 + 48 * n * topk

