"""Permutation nulls for every layer pair, from the Grams already built (docs/design.md §5).

Under the null hypothesis that side B's samples carry no information about side A's, the
pairing of samples is arbitrary: permuting B's samples by π gives the centered Gram
``P_π C_B P_πᵀ`` (rows and columns permuted: U-centering and ``HKH`` are both
permutation-equivariant), so each permutation's CKA is the pair product of A's stored rows
with B's rows gathered in permuted order, over self terms that permutations do not change.
No Gram is computed again: per permutation one gathered pair product (on the CPU the
native kernel ``pair_permuted``, which gathers B as it multiplies; elsewhere a torch
gather and product).

Minibatch form (Nguyen et al. 2021's estimator): samples are permuted within each batch,
independently per batch, and the permuted cross HSICs are summed over batches exactly as
``MinibatchCKA`` sums the observed ones (each batch normalised by its own n_b(n_b − 3) or
(n_b − 1)², each layer in its own power-of-two unit); the self sums are the observed ones.
Permutation k of batch b is drawn by ``torch.randperm`` from a generator seeded with a
hash of (seed, b, k), so a result does not depend on how permutations are grouped into
calls, and permutation k is the same whatever the number of permutations.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from . import engine as _engine, memory as _memory, validate as _validate
from .. import backends
from .engine import Settings
from .minibatch import MinibatchCKA, _in_units, _merge

_MASK = (1 << 64) - 1


@torch.no_grad()
def permutation_test(xs, ys=None, *, num_permutations: int = 1000, seed: int = 0,
                     batch_size: int | None = None, kernel: str = "linear",
                     unbiased: bool = True, sigma: float | None = None, threshold: float = 1.0,
                     dtype: torch.dtype | None = None, backend: str = "auto",
                     progress: bool | None = None) -> "PermutationResult":
    """Permutation test of CKA for every layer pair: ``xs`` (L_A representations (n, ...)),
    ``ys`` (L_B, or None: xs against itself) -> ``PermutationResult`` with (L_A, L_B)
    float64 ``observed``, ``null_mean``, ``null_std``, ``pvalue``, ``zscore``,
    ``calibrated`` (see there for each formula).

    Null hypothesis: ys's samples are exchangeable with respect to xs's (no pairing). For
    permutation k the samples of ys are permuted (π_k), every CKA recomputed from the
    stored centered Grams with B's rows and columns permuted (``P C_B Pᵀ``; no Gram is
    computed again), and ``pvalue = (1 + #{k: CKA_k ≥ CKA}) / (1 + P)``.
    ``batch_size``: minibatch CKA (Nguyen et al. 2021) over consecutive batches of that
    many samples (the last one may be smaller, at least 4 unbiased / 2 biased), samples
    permuted within each batch; None: one batch of all n. Permutation k of batch b comes
    from a generator seeded by (seed, b, k): results are reproducible and independent of
    how the permutations are grouped. Kernel and estimator settings as for ``cka_matrix``
    (the Gram route, on ``backend``).
    """
    s = Settings(kernel, unbiased, sigma, threshold)
    xa, na, xb, nb, n, ct, be = gram_inputs(xs, ys, s, backend, dtype)
    same = ys is None
    acc = PermutationNull(num_permutations, seed, same, s.unbiased, progress=progress)
    for b, (lo, hi) in enumerate(_batches(n, batch_size, s.unbiased)):
        ta = [t[lo:hi] for t in xa]
        ra = MinibatchCKA._check_constant_rows(
            _engine.gram_rows(be, ta, na, hi - lo, ct, s), ta, na, ct)
        if same:
            rb = ra
        else:
            tb = [t[lo:hi] for t in xb]
            rb = MinibatchCKA._check_constant_rows(
                _engine.gram_rows(be, tb, nb, hi - lo, ct, s), tb, nb, ct)
        acc.add_rows(be, ra, rb, hi - lo, na, nb, batch=b)
    return acc.result(na, nb)


def gram_inputs(xs, ys, s: Settings, backend: str, dtype):
    """The Gram route's inputs, every argument checked (each representation, the settings,
    the backend's name, the sample count, one device, the compute dtype) -> (xa, na, xb,
    nb, n, ct, be): xs's tensors and names, ys's (xs's when ys is None), the number of
    samples, the compute dtype and the backend (float8 inputs upcast unless native)."""
    xa, na = _validate.representations(xs, "xs")
    same = ys is None
    xb, nb = (xa, na) if same else _validate.representations(ys, "ys")
    s.check()
    backends.check_name(backend)
    groups = [(xa, na)] + ([] if same else [(xb, nb)])
    n = _validate.sample_count(groups, s.unbiased)
    _validate.device_of(groups)
    ct = _validate.compute_dtype(groups, dtype)
    be = backends.select(backend, xa[0])
    if be.name != "native":
        xa = _validate.upcast_float8(xa)
        xb = xa if same else _validate.upcast_float8(xb)
    return xa, na, xb, nb, n, ct, be


def _batches(n: int, batch_size, unbiased: bool) -> list[tuple[int, int]]:
    """[(start, stop)] of consecutive batches of ``batch_size`` samples (None: all n)."""
    if batch_size is None:
        return [(0, n)]
    least = 4 if unbiased else 2
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < least:
        raise ValueError(f"batch_size must be an int >= {least} (the "
                         f"{'unbiased' if unbiased else 'biased'} estimator) or None, got "
                         f"{batch_size!r}")
    spans = [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    if spans[-1][1] - spans[-1][0] < least:
        raise ValueError(f"batch_size = {batch_size} leaves a last batch of "
                         f"{spans[-1][1] - spans[-1][0]} of the n = {n} samples, fewer than "
                         f"{least}: pick a batch_size that leaves at least {least}")
    return spans


def permutation_seed(seed: int, batch: int, k: int) -> int:
    """The seed of permutation ``k`` of batch ``batch``: splitmix64 over the three."""
    x = 0
    for v in (seed, batch, k):
        x = (x ^ (v & _MASK)) + 0x9E3779B97F4A7C15 & _MASK
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
        x ^= x >> 31
    return x


def permutations(seed: int, batch: int, ks, n: int) -> torch.Tensor:
    """(len(ks), n) int64: permutation k of batch ``batch`` for each k in ``ks``."""
    out = torch.empty(len(ks), n, dtype=torch.int64)
    g = torch.Generator()
    for row, k in enumerate(ks):
        g.manual_seed(permutation_seed(seed, batch, k))
        torch.randperm(n, generator=g, out=out[row])
    return out


def packed_rows(g: torch.Tensor, n: int, unbiased: bool):
    """Rows in the packed layout [√2·strict upper (n(n−1)/2)] (+ [diag (n)] when biased):
    the native/Triton rows as they are; full n² rows (the torch backend) packed."""
    m = g.shape[1]
    tri = n * (n - 1) // 2
    if m == tri + (0 if unbiased else n):
        return g
    if m != n * n:
        raise ValueError(f"rows of length {m} are neither packed nor full for n = {n}")
    i, j = torch.triu_indices(n, n, 1, device=g.device)
    full = g.view(-1, n, n)
    parts = [full[:, i, j] * math.sqrt(2.0)]
    if not unbiased:
        parts.append(full.diagonal(dim1=1, dim2=2))
    return torch.cat(parts, dim=1).contiguous()


def full_grams(gp: torch.Tensor, n: int, unbiased: bool, width: int) -> torch.Tensor:
    """(n, n, width) of packed rows ``gp`` (L, m): [p, q, l] = √2·C_l[p, q] off the
    diagonal, C_l[p, p] on it (0 unbiased), layers past L zero (padding)."""
    L = gp.shape[0]
    tri = n * (n - 1) // 2
    out = torch.zeros(n, n, width, dtype=gp.dtype, device=gp.device)
    i, j = torch.triu_indices(n, n, 1, device=gp.device)
    t = gp[:, :tri].T
    out[i, j, :L] = t
    out[j, i, :L] = t
    if not unbiased:
        d = torch.arange(n, device=gp.device)
        out[d, d, :L] = gp[:, tri:].T
    return out


def permuted_products(be, ga: torch.Tensor, bfull: torch.Tensor, lb: int,
                      perms: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """(P, L_A, lb) float64: ⟨row a, row b permuted by perms[p]⟩ for packed rows ``ga`` and
    ``bfull`` from ``full_grams``. The native kernel where it runs; else a torch gather of
    the permuted triangle and one product per permutation group."""
    fn = getattr(be, "pair_permuted", None)
    if fn is not None and ga.device.type == "cpu":
        out = fn(ga, bfull, lb, perms, not unbiased)
        if out is not None:
            return out
    n = bfull.shape[0]
    i, j = torch.triu_indices(n, n, 1, device=ga.device)
    flat = bfull.reshape(n * n, -1)[:, :lb]
    a = ga.to(torch.float64)
    out = []
    for p in perms.to(ga.device):   # one gather and product a permutation: the same bits
        idx = p[i] * n + p[j]       # however permutations are grouped, memory m·lb
        if not unbiased:            # + the diagonal
            idx = torch.cat([idx, p * n + p])
        out.append((a @ flat[idx].to(torch.float64)).cpu())
    return torch.stack(out)


class PermutationNull:
    """Accumulates observed and permuted HSIC sums of one run, batch by batch (``add_rows``),
    in each layer's power-of-two unit like ``MinibatchCKA``; ``result()`` gives the
    ``PermutationResult``. ``chunk`` permutations go to one kernel call (the numbers do not
    depend on it)."""

    def __init__(self, num_permutations: int, seed: int, same: bool, unbiased: bool,
                 chunk: int = 250, progress: bool | None = None):
        if isinstance(num_permutations, bool) or not isinstance(num_permutations, int) \
                or num_permutations < 1:
            raise ValueError(f"num_permutations must be a positive int, got "
                             f"{num_permutations!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.num_permutations, self.seed, self.same = num_permutations, seed, same
        self.unbiased, self.chunk, self.progress = unbiased, max(1, int(chunk)), progress
        self.h = None          # observed sums (Hsics, in units h.ea / h.eb)
        self.null = None       # (P, L_A, L_B) permuted cross sums, same units
        self.sq_c_a = self.sq_c_b = None
        self.num_batches = 0
        self.tie = 0.0         # ties: 64 unit roundoffs of the compute dtype (from_null)

    def add_rows(self, be, ra: _engine.Rows, rb: _engine.Rows, n: int, names_a=None,
                 names_b=None, batch: int | None = None) -> None:
        """Add one batch's rows (``batch`` seeds its permutations; default: the count of
        batches added so far)."""
        batch = self.num_batches if batch is None else batch
        raw, qa, qb, la, lb = _engine.pair_stage(be, ra.g, rb.g, self.same, names_a, names_b)
        ea = -2.0 * _engine._log2(_engine._row_scales(ra)) - la
        eb = ea if self.same else -2.0 * _engine._log2(_engine._row_scales(rb)) - lb
        norm = _engine.normaliser(n, self.unbiased)
        h = _engine.hsics(raw, qa, qb, ea, eb, norm, self.same)
        ga, gb = ra.g, rb.g
        if bool((la != 0).any()) or bool((lb != 0).any()):  # rows pair_stage normalised
            ga = ga * torch.exp2(la).to(ga.dtype).to(ga.device)[:, None]
            gb = ga if self.same else gb * torch.exp2(lb).to(gb.dtype).to(gb.device)[:, None]
        null = self._null(be, ga, gb, n, batch, names_a, names_b) / norm
        self.tie = 64 * torch.finfo(ga.dtype).eps
        self._commit(h, null, ra.sq_c, rb.sq_c)

    def _null(self, be, ga, gb, n, batch, names_a, names_b) -> torch.Tensor:
        ga = packed_rows(ga, n, self.unbiased)
        gb = ga if self.same else packed_rows(gb, n, self.unbiased)
        lb = gb.shape[0]
        step = 64 // gb.element_size()
        width = -(-lb // step) * step
        need = n * n * width * gb.element_size()
        if need >= 2 ** 28:
            _memory.check(need, gb.device, f"the permutation null's copy of {lb} centered "
                          f"Grams at n = {n} ((n, n, {width}) {gb.dtype})",
                          "Use minibatches of fewer samples (batch_size=, or compare's "
                          "loader) or fewer layers a call.")
        bfull = full_grams(gb, n, self.unbiased, width)
        P = self.num_permutations
        out = torch.empty(P, ga.shape[0], lb, dtype=torch.float64)
        from tqdm.auto import tqdm
        show = self.progress if self.progress is not None else (
            sys.stderr is not None and sys.stderr.isatty())
        for k0 in tqdm(range(0, P, self.chunk), disable=not show, leave=False,
                       desc=f"permutations (batch {batch})"):
            ks = range(k0, min(P, k0 + self.chunk))
            out[k0:k0 + len(ks)] = permuted_products(be, ga, bfull, lb,
                                                     permutations(self.seed, batch, ks, n),
                                                     self.unbiased)
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            k, i, j = (int(v) for v in bad.nonzero()[0])
            a = names_a[i] if names_a is not None else f"row {i}"
            b = names_b[j] if names_b is not None else f"row {j}"
            raise ValueError(f"permutation {k} of {a} and {b} is not finite: {ga.dtype} "
                             f"overflowed in the pair stage; pass dtype=torch.float64")
        return out

    def _commit(self, h: _engine.Hsics, null, sq_c_a, sq_c_b) -> None:
        dev = torch.device("cpu")
        h = _engine.Hsics(*(t.to(dev) for t in (h.cross, h.self_a, h.self_b, h.ea, h.eb)))
        if self.h is None:
            z = lambda t: torch.zeros_like(t)  # noqa: E731
            old = _engine.Hsics(z(h.cross), z(h.self_a), z(h.self_b), h.ea, h.eb)
            old_null = torch.zeros_like(null)
            sa, sb = z(h.self_a), z(h.self_b)
        else:
            old, old_null, sa, sb = self.h, self.null, self.sq_c_a, self.sq_c_b
        pa = _merge(old.ea, old.self_a, h.ea, h.self_a)
        pb = pa if self.same else _merge(old.eb, old.self_b, h.eb, h.self_b)
        acc, new = _in_units(old, pa, pb), _in_units(h, pa, pb)
        shift_old = (old.ea - pa)[:, None] + (old.eb - pb)[None, :]
        shift_new = (h.ea - pa)[:, None] + (h.eb - pb)[None, :]
        self.null = _engine.ldexp(old_null, shift_old) + _engine.ldexp(null, shift_new)
        self.h = _engine.Hsics(acc.cross + new.cross, acc.self_a + new.self_a,
                               acc.self_b + new.self_b, pa, pb)
        self.sq_c_a = sa + sq_c_a.to(dev)
        self.sq_c_b = self.sq_c_a if self.same else sb + sq_c_b.to(dev)
        self.num_batches += 1

    def all_reduce(self, group=None) -> None:
        """Sum the observed and permuted sums over the ranks of a torch.distributed group
        (each layer first brought to its largest unit over the ranks, as
        ``MinibatchCKA.all_reduce`` does); with batches seeded by their global index, the
        result is that of one process over all batches."""
        import torch.distributed as dist
        if self.h is None:
            raise RuntimeError("all_reduce() before any batch on this rank")
        h = self.h
        units = []
        for p, hs in ((h.ea, h.self_a), (h.eb, h.self_b)):
            u = torch.where(hs != 0, p, torch.full_like(p, float("-inf")))
            dist.all_reduce(u, op=dist.ReduceOp.MAX, group=group)
            units.append(torch.where(torch.isfinite(u), u, torch.zeros_like(u)))
        pa, pb = units
        new = _in_units(h, pa, pb)
        null = _engine.ldexp(self.null, (h.ea - pa)[:, None] + (h.eb - pb)[None, :])
        parts = [new.cross, new.self_a, new.self_b, null, self.sq_c_a, self.sq_c_b,
                 torch.tensor([float(self.num_batches)], dtype=torch.float64)]
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in parts])
        dist.all_reduce(flat, group=group)
        out, at = [], 0
        for t in parts:
            out.append(flat[at:at + t.numel()].view_as(t))
            at += t.numel()
        self.h = _engine.Hsics(out[0], out[1], out[2], pa, pb)
        self.null, self.sq_c_a = out[3], out[4]
        self.sq_c_b = self.sq_c_a if self.same else out[5]
        self.num_batches = int(out[6])

    def result(self, names_a, names_b) -> "PermutationResult":
        """Observed CKA, the permutation null of every pair and its summaries."""
        if self.h is None:
            raise RuntimeError("no batch added: nothing to test")
        h = self.h
        bad_a = _engine.zero_variance(self.sq_c_a, None, None) | ~(h.self_a > 0)
        bad_b = _engine.zero_variance(self.sq_c_b, None, None) | ~(h.self_b > 0)
        observed = _engine.cka_from_hsic(h.cross, h.self_a, h.self_b, bad_a, bad_b,
                                         names_a, names_b)
        null = torch.stack([_engine.cka_ratio(c, h.self_a, h.self_b, bad_a, bad_b)
                            for c in self.null])
        return PermutationResult.from_null(observed, null, self.seed, self.tie)


@dataclass
class PermutationResult:
    """A permutation test of every layer pair (``permutation_test``). All (L_A, L_B)
    float64, NaN where CKA is undefined:

    - ``observed``: the CKA (or minibatch CKA) of the data as paired;
    - ``null_mean``, ``null_std``: mean and standard deviation (ddof = 1) of the
      ``num_permutations`` permuted CKAs;
    - ``pvalue``: one-sided, ``(1 + #{null ≥ observed}) / (1 + P)`` (never 0; a valid
      p-value for P permutations, Phipson & Smyth 2010). A permuted CKA within
      ``tie = 64·u·max(1, |observed|)`` below the observed one counts as ≥ (u the compute
      dtype's unit roundoff): permutations that leave the CKA unchanged (symmetries of a
      small sample) are ties, which rounding would otherwise split at random;
    - ``calibrated``: ``observed − null_mean``, the score with its chance level removed.
      This is the baseline correction of Gröger et al. 2026 (arXiv 2602.14486, §3.3: raw
      scores have a non-zero null expectation that grows with width and depth);
    - ``zscore``: ``(observed − null_mean) / null_std``, the same in null standard
      deviations (not from that paper; infinite where the null has no spread).
    ``null`` (P, L_A, L_B) holds the permuted CKAs themselves."""
    observed: torch.Tensor
    null_mean: torch.Tensor
    null_std: torch.Tensor
    pvalue: torch.Tensor
    null: torch.Tensor | None
    num_permutations: int
    seed: int

    @classmethod
    def from_null(cls, observed, null, seed, tie: float = 0.0) -> "PermutationResult":
        P = null.shape[0]
        below = observed - tie * observed.abs().clamp(min=1.0)
        exceed = (null >= below[None]).sum(0).to(torch.float64)
        pvalue = torch.where(torch.isnan(observed), observed, (1.0 + exceed) / (1.0 + P))
        std = null.std(0) if P > 1 else torch.full_like(observed, float("nan"))
        return cls(observed, null.mean(0), std, pvalue, null, P, seed)

    @property
    def calibrated(self) -> torch.Tensor:
        return self.observed - self.null_mean

    @property
    def zscore(self) -> torch.Tensor:
        return self.calibrated / self.null_std

    def significant(self, level: float = 0.05) -> torch.Tensor:
        """(L_A, L_B) bool: pairs whose p-value passes Benjamini–Hochberg at false
        discovery rate ``level`` over all pairs (``benjamini_hochberg``)."""
        return benjamini_hochberg(self.pvalue, level)


def benjamini_hochberg(pvalues: torch.Tensor, level: float = 0.05) -> torch.Tensor:
    """Benjamini & Hochberg 1995 over every entry of ``pvalues`` (NaN entries are not
    tests): with the m p-values sorted, p_(1) ≤ … ≤ p_(m), reject the k smallest for the
    largest k with p_(k) ≤ k·level/m. Returns a bool tensor of ``pvalues``' shape."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    p = pvalues.reshape(-1).to(torch.float64)
    ok = ~torch.isnan(p)
    m = int(ok.sum())
    out = torch.zeros_like(p, dtype=torch.bool)
    if m == 0:
        return out.reshape(pvalues.shape)
    idx = ok.nonzero().flatten()
    vals, order = torch.sort(p[idx])
    below = vals <= level * torch.arange(1, m + 1, dtype=torch.float64) / m
    if bool(below.any()):
        k = int(below.nonzero().max()) + 1
        out[idx[order[:k]]] = True
    return out.reshape(pvalues.shape)
