"""Linear centered Gram rows of many layers with no host synchronisation per layer.

The torch and Triton backends build rows one layer at a time (``centered_gram_row``); on
a GPU every host read in that loop drains the queue. Here every layer's row, its
``‖X_c‖²`` and a maybe-constant flag stay on the device, and layers of one shape, dtype
and device are stacked and done together (``torch.bmm``) in chunks of bounded memory
where the backend's numbers allow it (``batches``). ``_engine.gram_rows`` reads the flags
once for the whole call and redoes the rare layers they pick (docs/design.md §5, Scale).
"""
from __future__ import annotations

import math

import torch

from ..backends import float64_shift

# Bytes of one chunk's stacked features, centred copies and Grams: few large launches on
# a GPU; on a CPU a smaller chunk stays in cache (48 layers (64, 197, 32), one thread:
# 116 ms per update with 2^28, 67 ms with 2^24).
CHUNK_BYTES = {"cpu": 2 ** 24}
CHUNK_BYTES_DEVICE = 2 ** 28

# Device types whose host reads cost nothing (no queue to drain). There max|x − μ| is taken
# only for the layers where it can matter (``_engine._may_need_scale``, after a read of
# ‖X_c‖²) and compare()'s hooks read each layer's row as they go (``_engine.gram_row``),
# instead of a pass over every layer's x for the maximum (bench/device_rows.py on a Zen 5
# CPU: one gram_rows call 1.02-1.03x faster than the per-layer path with this, 0.97-1.01x
# with the pass). Tests empty it to run the device path on a CPU.
FREE_READS = frozenset({"cpu"})


def reads_are_free(device) -> bool:
    """Whether reading a value of ``device`` to the host costs no synchronisation."""
    return device.type in FREE_READS


def linear_rows(be, tensors, g, n: int, ct, unbiased: bool) -> torch.Tensor:
    """Rows of the linear kernel into g (L, m) for every x (n, ...) in ``tensors``, with no
    host read -> stats (4, L) float64 on g's device: ‖X_c‖² (its value in ct), 1 where the
    layer may be constant (rows 0 and 1 equal and finite: ``maybe_constant``) else 0,
    ‖μ‖² (μ the mean that was subtracted), max|x − μ| (``max_abs_dev``, the maximum of
    ``_engine.pow2_scale``'s rule; NaN where ``reads_are_free``: the caller takes it for
    the layers that need it). Flagged layers, and those whose scale is not 1, are the
    caller's to redo. Same-shape layers are done in chunks (``_chunk_rows``) when
    ``batches`` says so and no graph is needed."""
    stats = torch.empty(4, len(tensors), dtype=torch.float64, device=g.device)
    with_max = not reads_are_free(g.device)
    if not batches(be, ct, g.device) or (
            torch.is_grad_enabled() and any(x.requires_grad for x in tensors)):
        for i, x in enumerate(tensors):
            stats[:, i] = layer_row(be, x, g[i], ct, unbiased, with_max)
        return stats
    for idx in _groups(tensors):
        rows, st = _chunk_rows([tensors[i] for i in idx], g.shape[1], n, ct, unbiased,
                               with_max)
        for a, b, j in _runs(idx):
            g[a:b].copy_(rows[j:j + b - a])
            stats[:, a:b] = st[:, j:j + b - a]
    return stats


def batches(be, ct, device) -> bool:
    """Whether be's linear rows may come from torch.bmm: the torch backend's always (its
    products are torch's own); the Triton backend's when its products are IEEE (neither
    ``allow_tf32`` nor ``allow_bf16``) and so are torch's for ct on this device (float64,
    a CPU, or float32 without TF32: ``triton_backend._cublas_is_ieee``)."""
    if be.name == "torch":
        return True
    if be.name != "triton" or be.allow_tf32 or be.allow_bf16:
        return False
    from ..backends.triton_backend import _cublas_is_ieee
    return device.type != "cuda" or _cublas_is_ieee(ct, False)


def _groups(tensors):
    """Indices of layers of one shape, dtype and device, in chunks of at most CHUNK_BYTES
    (per device type)."""
    same: dict[tuple, list[int]] = {}
    for i, x in enumerate(tensors):
        same.setdefault((tuple(x.shape), x.dtype, x.device), []).append(i)
    for idx in same.values():
        x = tensors[idx[0]]
        size = _chunk_size(x, CHUNK_BYTES.get(x.device.type, CHUNK_BYTES_DEVICE))
        yield from (idx[k:k + size] for k in range(0, len(idx), size))


def _chunk_size(x, limit: int) -> int:
    """Layers like x (n, ...) per chunk of ``limit`` bytes: the stack (x's dtype), its
    float64-or-ct centred copy and the ct copy (≤ 2 · 8 bytes a value), the Gram and the
    rows (2n² values of ≤ 8 bytes)."""
    n, d = x.shape[0], x[0].numel()
    return max(1, limit // (n * d * (x.element_size() + 16) + 2 * n * n * 8))


def centring(be, x, ct):
    """What a layer's row is centred by -> (x', μ in ct, μ in float64): a float64 x with a
    narrower ct is shifted by its float64 column mean first (``float64_shift``: x' = x − μ,
    and the backend subtracts a zero μ), else x' = x and μ = ``be.column_mean(x, ct)``."""
    shift = float64_shift(x, ct)
    if shift is not None:   # centred in float64 before anything is rounded to ct
        return x - shift, torch.zeros(shift.shape, dtype=ct, device=x.device), shift
    mu = be.column_mean(x, ct)
    return x, mu, mu.to(torch.float64)


def layer_row(be, x, out, ct, unbiased: bool, with_max: bool = True) -> torch.Tensor:
    """One layer by ``be.centered_gram_row`` into out, as ``_engine.gram_row`` starts it
    (``centring``), without its host reads -> its column of ``linear_rows``' stats (4,),
    max|x − μ| NaN unless ``with_max``."""
    x, mu, mu64 = centring(be, x, ct)
    sq_c = be.centered_gram_row(x, mu, out, kernel="linear", sigma=None, threshold=1.0,
                                unbiased=unbiased)
    amax = (max_abs_dev(x.reshape(1, x.shape[0], -1), mu.reshape(1, 1, -1), ct)[0]
            if with_max else torch.full((), math.nan, device=x.device))
    return torch.stack([sq_c.to(torch.float64), maybe_constant(x[None])[0].to(torch.float64),
                        mu64.square().sum(), amax.to(torch.float64)])


def _chunk_rows(xs, m: int, n: int, ct, unbiased: bool, with_max: bool):
    """B same-shape layers at once -> (rows (B, m) in ct, stats (4, B) as ``linear_rows``,
    max|x − μ| NaN unless ``with_max``).

    X (B, n, d) stacked (one layer: a view of it); X_c = X − 1μᵀ per layer, subtracted
    in float64 for float64 inputs and in ct otherwise, then rounded to ct (the rule of
    ``torch_backend.center_features`` and ``backends.float64_shift``); K = X_c X_cᵀ
    (B, n, n) by one bmm, ‖X_c‖² = tr K; K centred in place (``_center_``) and written as
    rows of length m (``to_rows``)."""
    ours = len(xs) > 1                      # a copy (the stack): centred in place
    x = (torch.stack(xs) if ours else xs[0]).reshape(len(xs), n, -1)
    wide = torch.float64 if x.dtype == torch.float64 else ct
    mu = x.mean(1, dtype=wide, keepdim=True)
    amax = torch.full((len(xs),), math.nan, device=x.device)
    if wide == ct:   # (else float64_shift's rule: the tests are on the shifted x, μ = 0)
        const = maybe_constant(x)
        if with_max:
            amax = max_abs_dev(x, mu, ct)
    xw = x.sub_(mu) if ours and x.dtype == wide else x.to(wide) - mu
    if wide != ct:
        const = maybe_constant(xw)
        if with_max:
            amax = max_abs_dev(xw, torch.zeros_like(mu, dtype=ct), ct)
    xc = xw.to(ct)
    k = torch.bmm(xc, xc.transpose(1, 2))
    sq_c = k.diagonal(dim1=1, dim2=2).sum(1)
    stats = torch.stack([sq_c.to(torch.float64), const.to(torch.float64),
                         mu.to(torch.float64).square().sum((1, 2)), amax.to(torch.float64)])
    return to_rows(_center_(k, unbiased), m, unbiased), stats


def maybe_constant(x) -> torch.Tensor:
    """(B,) bool of x (B, n, ...): rows 0 and 1 equal and finite. Every layer with all
    rows equal (and finite: zero variance) is flagged; flagged ones are decided exactly by
    ``_engine.gram_row`` (its test starts with the same two rows), so real data costs a
    pass over two rows, not over x."""
    b = x.shape[0]
    return ((x[:, 0] == x[:, 1]) & torch.isfinite(x[:, 0])).reshape(b, -1).all(1)


def max_abs_dev(x, mu, ct) -> torch.Tensor:
    """(B,) max |x − μ| of x (B, n, d) and μ (B, 1, d) in ct, from each column's min and
    max, in ct: the value of ``_engine._max_abs_dev`` for each layer. (amin and amax: on
    a CPU torch.aminmax over dim 1 runs 13x slower than the two.)"""
    x = x.detach()
    lo, hi = x.amin(1), x.amax(1)
    m = mu[:, 0].detach()
    return torch.maximum(hi.to(ct) - m, m - lo.to(ct)).amax(1)


def _center_(k: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """``torch_backend.center_symmetric_`` of every symmetric k (B, n, n), in place:
    unbiased (U-centering) ``C_ij = K̃_ij − m_i − m_j``, ``m_i = r_i/(n−2) −
    S/(2(n−1)(n−2))``, r the row sums of K̃ (K, zero diagonal), S = Σr, C_ii = 0; biased
    (HKH) ``m_i = r_i/n − S/(2n²)``."""
    n = k.shape[1]
    if unbiased:
        k.diagonal(dim1=1, dim2=2).zero_()
    r = k.sum(2, keepdim=True)
    total = r.sum(1, keepdim=True)
    m = r / (n - 2) - total / (2 * (n - 1) * (n - 2)) if unbiased else r / n - total / (2 * n * n)
    k.sub_(m).sub_(m.transpose(1, 2))
    if unbiased:
        k.diagonal(dim1=1, dim2=2).zero_()
    return k


def to_rows(c: torch.Tensor, m: int, unbiased: bool) -> torch.Tensor:
    """Centered Grams C (B, n, n) as rows (B, m) of the layout whose length is m
    (docs/design.md §4): m = n² (torch) C flattened; m = n(n−1)/2, + n when biased (native,
    Triton) packed: √2·C_ij for i < j row by row, then C_ii when biased."""
    b, n = c.shape[0], c.shape[1]
    if m == n * n:
        return c.reshape(b, m)
    if m != n * (n - 1) // 2 + (0 if unbiased else n):
        raise ValueError(f"no row layout of length {m} for n = {n} samples")
    iu = torch.triu_indices(n, n, 1, device=c.device)
    rows = c.reshape(b, n * n)[:, iu[0] * n + iu[1]] * math.sqrt(2.0)
    return rows if unbiased else torch.cat([rows, c.diagonal(dim1=1, dim2=2)], 1)


def _runs(idx):
    """Runs of consecutive indices in idx: (first, end, position in idx) each."""
    start = 0
    for j in range(1, len(idx) + 1):
        if j == len(idx) or idx[j] != idx[j - 1] + 1:
            yield idx[start], idx[j - 1] + 1, start
            start = j
