"""The first stage shared by Procrustes, CCA, SVCCA, PWCCA and linear-regression fit: each
layer's centred features factorised once (``basis``: the thin SVD ``X_c = U S Vᵀ``;
``features``: for Procrustes, X̃ = X_c/‖X_c‖_F itself, or an n × n factor when d > n), and
for every pair the block ``U_Aᵀ U_B`` (one product per row layer against all the column
layers at once). Every pair's score is then a small function of that block and the two
layers' S, Vᵀ (docs/design.md §5, "Procrustes, CCA, SVCCA, PWCCA, linear regression").
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import torch

from ..core import validate as _validate


@dataclass
class Basis:
    """One layer. From ``basis``: ``u`` (n, r) orthonormal basis of the centred features'
    column space, ``s`` (r,) their singular values divided by their 2-norm (so Σ s² = 1:
    every measure here is invariant to the layer's scale), descending, ``vt`` (r, d); r is
    the numerical rank: singular values above ``max(n, d) · eps · max(s_max, 1)`` with the
    layer scaled so that max |x| is in [1/2, 1) (numpy's ``matrix_rank`` rule, with a floor
    at the rounding of the centering itself). From ``features``: ``u`` (n, r) with
    ``u uᵀ = X̃ X̃ᵀ``, ``s`` and ``vt`` empty. r = 0 for a layer constant over the samples."""
    name: str
    d: int
    u: torch.Tensor
    s: torch.Tensor
    vt: torch.Tensor

    @property
    def rank(self) -> int:
        return self.u.shape[1]


def prepare(xs, ys, dtype, max_bytes: int, measure: str, factor=None):
    """Validate the inputs and factorise every layer (``factor``: ``basis``, the default,
    or ``features``) -> (bases_a, bases_b or None, n).
    ``dtype``: None (float64) or float32/float64. Raises before any SVD when the bases
    (8 or 4 bytes × n × Σ min(n, d) over the layers) would exceed ``max_bytes``."""
    xa, na = _validate.representations(xs, "xs")
    xb, nb = (None, na) if ys is None else _validate.representations(ys, "ys")
    groups = [(xa, na)] + ([] if xb is None else [(xb, nb)])
    n = _validate.sample_count(groups, unbiased=False)
    _validate.device_of(groups)
    _validate.dtype_arg(dtype)
    ct = torch.float64 if dtype is None else dtype
    if torch.is_grad_enabled() and any(t.requires_grad for ts, _ in groups for t in ts):
        raise ValueError(f"similarity_matrix(measure={measure!r}) does not carry gradients: "
                         f"detach the inputs or call it under torch.no_grad(); "
                         f"measure='cka' does")
    width = sum(min(n, math.prod(t.shape[1:])) for ts, _ in groups for t in ts)
    need = n * width * (8 if ct == torch.float64 else 4)
    if need > max_bytes:
        raise ValueError(f"{measure} over n = {n} samples keeps each layer's orthonormal basis "
                         f"(n × min(n, d) values): about {need / 2**30:.2f} GiB here, over "
                         f"max_bytes = {max_bytes / 2**30:.2f} GiB: use fewer samples or "
                         f"layers, or raise max_bytes")
    factor = basis if factor is None else factor
    ba = [factor(x, name, ct) for x, name in zip(xa, na)]
    bb = None if xb is None else [factor(x, name, ct) for x, name in zip(xb, nb)]
    return ba, bb, n


def centred(x: torch.Tensor, name: str, ct: torch.dtype) -> tuple[torch.Tensor, float]:
    """x flattened to (n, d) in ``ct``, times a power of two (exact) that brings max |x|
    into [1/2, 1) (no overflow), centred -> (x_c, the rounding floor of its singular values:
    max(n, d) · eps; the centering's own rounding is below it)."""
    f, = _validate.upcast_float8([x.detach().reshape(x.shape[0], -1)])
    amax = float(f.abs().amax())
    if not math.isfinite(amax):
        _validate.raise_non_finite(x, name, ct)
    f = f.to(torch.float64 if f.dtype == torch.float64 else ct)   # scaled before any narrowing
    if amax > 0:
        f = f * math.ldexp(1.0, -math.frexp(amax)[1])
    f = f.to(ct)
    return f - f.mean(0, keepdim=True), max(f.shape) * torch.finfo(ct).eps


def basis(x: torch.Tensor, name: str, ct: torch.dtype) -> Basis:
    """The thin SVD of the centred features."""
    f, floor = centred(x, name, ct)
    u, s, vt = torch.linalg.svd(f, full_matrices=False)
    tol = floor * max(float(s[0]), 1.0)
    r = int((s > tol).sum())
    s = s[:r]
    if r:
        s = s / torch.linalg.vector_norm(s)
    else:
        _constant(name)
    return Basis(name, f.shape[1], u[:, :r].contiguous(), s.contiguous(), vt[:r].contiguous())


def features(x: torch.Tensor, name: str, ct: torch.dtype) -> Basis:
    """X̃ = X_c/‖X_c‖_F as ``u`` when d ≤ n; when d > n, Rᵀ (n × n) from X̃ᵀ = QR, which has
    the same Gram X̃X̃ᵀ (so every X̃ᵀỸ keeps its singular values)."""
    f, floor = centred(x, name, ct)
    norm = float(torch.linalg.matrix_norm(f))
    empty = f.new_empty(0)
    if not norm > floor:
        _constant(name)
        return Basis(name, f.shape[1], f[:, :0], empty, empty)
    f = f / norm
    if f.shape[1] > f.shape[0]:
        f = torch.linalg.qr(f.T, mode="r").R.T
    return Basis(name, x[0].numel(), f.contiguous(), empty, empty)


def _constant(name: str) -> None:
    warnings.warn(f"{name} is constant over the samples (no variance after centering): "
                  f"its entries are NaN", _validate.FlashCKAWarning, stacklevel=5)


def pairs(ba: list[Basis], bb: list[Basis] | None, pair_fn, *, symmetric: bool,
          progress: bool | None, desc: str) -> torch.Tensor:
    """(L_A, L_B) float64, on the inputs' device, of ``pair_fn(a, bs, m)`` over every pair:
    m = a.uᵀ b.u stacked over the pairs of one row whose blocks have one shape (a batch of
    (r_A, r_B) blocks; pair_fn returns one value per block). ``bb`` None: ``ba`` with
    itself, and when ``symmetric`` only j ≥ i is computed and mirrored. Pairs with a
    constant layer are NaN."""
    from tqdm.auto import tqdm
    same = bb is None
    cols = ba if same else bb
    out = torch.full((len(ba), len(cols)), float("nan"), dtype=torch.float64,
                     device=ba[0].u.device)
    ub = torch.cat([b.u for b in cols], 1)
    stops = torch.tensor([b.rank for b in cols]).cumsum(0).tolist()
    starts = [0] + stops[:-1]
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    for i in tqdm(range(len(ba)), disable=not progress, desc=desc, unit="row", leave=False):
        a = ba[i]
        first = i if same and symmetric else 0
        js = [j for j in range(first, len(cols)) if a.rank and cols[j].rank]
        if not js:
            continue
        row = a.u.T @ ub[:, starts[first]:]
        shift = starts[first]
        by_shape: dict[int, list[int]] = {}
        for j in js:
            by_shape.setdefault(cols[j].rank, []).append(j)
        for _, group in by_shape.items():
            m = torch.stack([row[:, starts[j] - shift:stops[j] - shift] for j in group])
            vals = pair_fn(a, [cols[j] for j in group], m)
            out[i, group] = vals.to(torch.float64)
    if same and symmetric:
        iu = torch.triu_indices(len(ba), len(ba), 1, device=out.device)
        out[iu[1], iu[0]] = out[iu[0], iu[1]]
    return out


def stack_s(bs: list[Basis]) -> torch.Tensor:
    """(batch, r) singular values of layers of one rank."""
    return torch.stack([b.s for b in bs])


def require_proper(bases: list[Basis], n: int, measure: str) -> None:
    """CCA-type measures degenerate when a layer's (kept) centred features span all n − 1
    sample directions: every canonical correlation with it is then 1 (and a regression
    from it fits anything exactly), whatever the other layer holds."""
    for b in bases:
        r = b.rank
        if n > 1 and r >= n - 1:
            raise ValueError(
                f"{b.name} has rank {r} over n = {n} samples (d = {b.d} features): its centred "
                f"features span all n - 1 sample directions, so {measure} with it is 1 "
                f"whatever the other layer holds; use more samples than features "
                f"(n > d + 1)" + ("" if measure == "svcca" else ", measure='svcca' (which "
                                  "keeps the top components)") + " or measure='cka'")
