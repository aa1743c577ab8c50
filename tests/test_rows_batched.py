"""Linear Gram rows of the torch and Triton backends without a host read per layer
(core/batched_rows.py, ``_engine.gram_rows``): same-shape layers stacked into one bmm per
chunk, every row checked against the float64 reference (tests/reference.py) on fresh
random inputs at awkward sizes; constant, scaled and NaN layers inside a group; and the
number of host reads of ``MinibatchCKA.update`` independent of the number of layers.

Inputs live on the GPU where there is one (cuBLAS bmm, the Triton kernels); without one
the Triton backend runs under the interpreter on the CPU (TRITON_INTERPRET=1, set by
conftest before triton is imported). Row tolerance: ``16·u·(√d + √n)·max_a ‖x_a − μ‖²``
on every centered Gram entry, u the unit roundoff of the compute dtype (``_check_rows``);
CKA of float64 rows: rtol 1e-9.
"""
import math

import numpy as np
import pytest
import torch

import flashcka
import reference as ref
from conftest import DEV, TRITON_PREIMPORTED
from flashcka import backends
from flashcka.core import batched_rows, engine

TRITON_OK = not (TRITON_PREIMPORTED and DEV == "cpu")


def _layers(rng, n, dtype, groups=(1, 2, 7)):
    """Groups of 1, 2, 7 same-shape layers (shapes differ between groups, one a token
    tensor), interleaved: layer i of the result is (n, ...) with non-zero means."""
    shapes = [(n, 3, 4), (n, 9), (n, 6)]
    out = []
    for k in range(max(groups)):
        for g, shape in zip(groups, shapes):
            if k < g:
                x = rng.standard_normal(shape) * rng.uniform(0.5, 2) + rng.uniform(1, 4)
                out.append(torch.tensor(x, dtype=torch.float64).to(DEV, dtype))
    return out


def _ct(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _centered_gram(be, row, n, unbiased):
    """The (n, n) float64 centered Gram of one row of be's layout."""
    row = row.double().cpu()
    if be.row_length(n, unbiased) == n * n:
        return row.reshape(n, n)
    return torch.from_numpy(ref.unpack_row(row.numpy(), n, unbiased))


def _reference(xc, unbiased):
    """The reference centered Gram of x from its float64 centred features xc (n, d): the
    same matrix as from x (both centerings ignore a constant per feature), without
    float64's own cancellation of x's offsets in the comparison."""
    k = ref.gram_linear(xc)
    return ref.center_unbiased(k) if unbiased else ref.center_biased(k)


def _check_rows(be, rows, xs, n, ct, unbiased):
    """Every row / scale² within 16·u·(√d + √n)·max‖x_a − μ‖² of the reference centered
    Gram (the products' rounding grows as √d, the centering's sums over n entries as
    √n, in ours and in the float64 reference alike), and ‖X_c‖² within n times that."""
    u = 2.0 ** -53 if ct == torch.float64 else 2.0 ** -24
    for i, x in enumerate(xs):
        x64 = x.double().reshape(n, -1).cpu().numpy()
        xc = x64 - x64.mean(0)
        bound = 16 * u * (math.sqrt(xc.shape[1]) + math.sqrt(n)) * (xc * xc).sum(1).max()
        scale = float(rows.scale[i])
        got = _centered_gram(be, rows.g[i], n, unbiased).numpy() / scale / scale
        err = np.abs(got - _reference(xc, unbiased)).max()
        assert err <= bound, f"layer {i} {tuple(x.shape)}: error {err:.3g} > {bound:.3g}"
        assert abs(float(rows.sq_c[i]) - (xc * xc).sum()) <= n * bound


def _backend(name, monkeypatch, per_layer=False):
    if name == "triton" and not TRITON_OK:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set")
    be = backends.get(name)
    if per_layer:        # float32/64 inputs: still IEEE products, Triton kernels per layer
        monkeypatch.setattr(be, "allow_bf16", True)
    return be


BACKENDS = [("torch", False), ("triton", False), ("triton", True)]


@pytest.mark.parametrize("name,per_layer", BACKENDS)
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("n", [5, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rows_match_reference(rng, monkeypatch, name, per_layer, unbiased, n, dtype):
    if per_layer and dtype == torch.bfloat16:
        pytest.skip("allow_bf16 rounds bfloat16 inputs' products: not IEEE")
    be = _backend(name, monkeypatch, per_layer)
    assert batched_rows.batches(be, _ct(dtype), torch.device(DEV)) != per_layer
    xs = _layers(rng, n, dtype)
    rows = engine.gram_rows(be, xs, [f"l{i}" for i in range(len(xs))], n, _ct(dtype),
                            engine.Settings(unbiased=unbiased))
    assert bool((rows.scale == 1).all())
    _check_rows(be, rows, xs, n, _ct(dtype), unbiased)


@pytest.mark.parametrize("chunk_layers", [1, 3])
def test_chunk_edges(rng, monkeypatch, chunk_layers):
    """Chunks of 1 and 3 layers over groups of 1, 2 and 7."""
    n = 37
    xs = _layers(rng, n, torch.float32)
    per_layer = n * 9 * (4 + 16) + 2 * n * n * 8          # the largest shape, (n, 9)
    monkeypatch.setitem(batched_rows.CHUNK_BYTES, "cpu", chunk_layers * per_layer)
    monkeypatch.setattr(batched_rows, "CHUNK_BYTES_DEVICE", chunk_layers * per_layer)
    be = backends.get("torch")
    rows = engine.gram_rows(be, xs, [f"l{i}" for i in range(len(xs))], n, torch.float32,
                            engine.Settings())
    _check_rows(be, rows, xs, n, torch.float32, True)


@pytest.mark.parametrize("name,per_layer", BACKENDS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_minibatch_cka_matches_reference(rng, monkeypatch, name, per_layer, unbiased):
    """float64 layers in groups, two batches: MinibatchCKA against ref.minibatch_cka."""
    _backend(name, monkeypatch, per_layer)
    bx = [_layers(rng, n, torch.float64) for n in (37, 5)]
    by = [_layers(rng, n, torch.float64, groups=(2, 1, 1)) for n in (37, 5)]
    m = flashcka.MinibatchCKA(len(bx[0]), len(by[0]), backend=name, unbiased=unbiased)
    for x, y in zip(bx, by):
        m.update(x, y)
    want = ref.minibatch_cka([[a.cpu().numpy() for a in b] for b in bx],
                             [[a.cpu().numpy() for a in b] for b in by], unbiased=unbiased)
    # CKA's numerator is a difference of O(1) terms (after normalising): float64 leaves
    # an absolute error of a few hundred u on any entry, so a near-zero entry (3e-5 at seed
    # 482375645: 6e-14 off, 2e-9 relative) needs the absolute term as well
    np.testing.assert_allclose(m.compute().cpu().numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,per_layer", BACKENDS)
@pytest.mark.parametrize("offset,spread", [(1e10, 1e2), (1e30, 1e20)])
def test_float64_inputs_in_float32(rng, monkeypatch, reads, name, per_layer, offset, spread):
    """float64 layers computed in float32 are centred in float64 first
    (``backends.float64_shift``): an offset far beyond float32's resolution of the spread
    costs nothing; spreads of 1e20 also need a power-of-two scale."""
    be = _backend(name, monkeypatch, per_layer)
    n = 37
    xs = [offset + spread * x for x in _layers(rng, n, torch.float64)]
    rows = engine.gram_rows(be, xs, [f"l{i}" for i in range(len(xs))], n, torch.float32,
                            engine.Settings())
    assert bool((rows.scale == 1).all()) == (spread < 1e10)
    _check_rows(be, rows, xs, n, torch.float32, True)


@pytest.mark.parametrize("name,per_layer", BACKENDS)
def test_constant_and_scaled_layers_inside_a_group(rng, monkeypatch, reads, name, per_layer):
    """Layer 4 of the 7-layer group repeats one row ~3e6 (its float32 mean is inexact:
    still a zero row, ‖X_c‖² = 0 exactly, scale 1); layer 5 is ~1e30 in float32 (‖X_c‖²
    overflows: redone with a power-of-two scale < 1, rows still match); layer 3 is ~1e16
    (‖X_c‖² finite: scaled by max|x − μ| alone); layer 6 has rows 0 and 1 equal, the
    others not (flagged, redone, not constant)."""
    be = _backend(name, monkeypatch, per_layer)
    n = 37
    xs = _layers(rng, n, torch.float32)
    same = [i for i, x in enumerate(xs) if x.shape == (n, 6)]
    mid, c, big, dup = same[2], same[3], same[4], same[5]
    xs[c] = (xs[c][:1] * 1e5 + 3e6).expand(n, 6).clone()
    xs[big] = xs[big] * 1e30
    xs[mid] = xs[mid] * 1e16
    xs[dup][1] = xs[dup][0]
    rows = engine.gram_rows(be, xs, [f"l{i}" for i in range(len(xs))], n, torch.float32,
                            engine.Settings())
    assert not rows.g[c].any() and rows.sq_c[c] == 0 and rows.scale[c] == 1
    assert rows.scale[big] < 2.0 ** -90 and 2.0 ** -60 < rows.scale[mid] < 2.0 ** -40
    assert bool(torch.isfinite(rows.sq_c[mid]))
    assert bool((rows.scale[[i for i in range(len(xs)) if i not in (big, mid)]] == 1).all())
    keep = [i for i in range(len(xs)) if i != c]
    sub = engine.Rows(rows.g[keep], rows.sq_c[keep], rows.sq[keep], rows.scale[keep])
    _check_rows(be, sub, [xs[i] for i in keep], n, torch.float32, True)
    with pytest.warns(flashcka.FlashCKAWarning, match=f"undefined for l{c}"):
        m = flashcka.MinibatchCKA(len(xs), backend=name,
                                  names_a=[f"l{i}" for i in range(len(xs))])
        m.update(xs)
        got = m.compute()
    assert got[c].isnan().all() and not got[keep][:, keep].isnan().any()


@pytest.mark.parametrize("name,per_layer", BACKENDS)
def test_nan_layer_inside_a_group_is_named(rng, monkeypatch, name, per_layer):
    _backend(name, monkeypatch, per_layer)
    n = 37
    xs = _layers(rng, n, torch.float32)
    names = [f"block{i}" for i in range(len(xs))]
    bad = [i for i, x in enumerate(xs) if x.shape == (n, 6)][2]
    xs[bad][11, 3] = float("nan")
    m = flashcka.MinibatchCKA(len(xs), backend=name)
    with pytest.raises(ValueError, match=rf"block{bad} holds non-finite values.*\(11, 3\)"):
        m.update(dict(zip(names, xs)))
    assert m.num_batches == 0


def _count_host_reads(monkeypatch, layers: int) -> dict:
    """Calls of every tensor-to-host read during one MinibatchCKA(L, L).update; xs ~8e3:
    each ‖X_c‖² beyond ``_may_need_scale``'s bound, max|x − μ| in range (scale 1)."""
    g = np.random.default_rng(0)
    xs = [torch.tensor(8e3 * g.standard_normal((16, 8 + i % 3)), dtype=torch.float32,
                       device=DEV) for i in range(layers)]
    ys = [torch.tensor(g.standard_normal((16, 5)), dtype=torch.float32, device=DEV)
          for _ in range(layers)]
    m = flashcka.MinibatchCKA(layers, layers, backend="torch")
    counts = {}
    with monkeypatch.context() as mp:
        for owner, attr in ([(torch.Tensor, a) for a in ("item", "tolist", "__bool__",
                                                          "__float__", "__int__", "__index__")]
                            + [(torch, "equal")]):
            def counted(*args, _f=getattr(owner, attr), _a=attr, **kw):
                counts[_a] = counts.get(_a, 0) + 1
                return _f(*args, **kw)
            mp.setattr(owner, attr, counted)
        m.update(xs, ys)
    assert m.num_batches == 1
    return counts


def test_host_reads_do_not_grow_with_layers(monkeypatch):
    monkeypatch.setattr(batched_rows, "FREE_READS", frozenset())   # a GPU's route
    few, many = _count_host_reads(monkeypatch, 4), _count_host_reads(monkeypatch, 40)
    assert few == many, f"4 layers: {few}; 40 layers: {many}"


@pytest.mark.parametrize("name,per_layer", BACKENDS)
def test_large_layers_inside_the_range_are_not_redone(rng, monkeypatch, reads, name,
                                                       per_layer):
    """‖X_c‖² beyond ``_may_need_scale``'s bound, max|x − μ| inside the safe range (values
    ~6e3 in float32): scale 1, no second Gram (no gram_row); the maximum from the call's
    one read (a GPU's route) or taken for each such layer alone (a CPU's, where no other
    layer takes it)."""
    be = _backend(name, monkeypatch, per_layer)
    n = 37
    xs = [x * 6000 for x in _layers(rng, n, torch.float32)]
    small = _layers(rng, n, torch.float32, groups=(3, 1, 1))
    redone, real = [], engine.gram_row
    monkeypatch.setattr(engine, "gram_row", lambda *a, **k: redone.append(a[2]) or real(*a, **k))
    maxima, real_max = [], engine._max_abs_dev
    monkeypatch.setattr(engine, "_max_abs_dev",
                        lambda x, *a: maxima.append(x.shape) or real_max(x, *a))
    rows = engine.gram_rows(be, small, [f"s{i}" for i in range(len(small))], n,
                            torch.float32, engine.Settings())
    assert maxima == [] and redone == []      # inside the bound: no maximum on either route
    _check_rows(be, rows, small, n, torch.float32, True)
    rows = engine.gram_rows(be, xs, [f"l{i}" for i in range(len(xs))], n, torch.float32,
                            engine.Settings())
    beyond = sum(engine._may_need_scale(float(v), torch.float32, x.numel())
                 for v, x in zip(rows.sq_c, xs))
    assert beyond > 0 and redone == [] and bool((rows.scale == 1).all())
    assert len(maxima) == (beyond if reads == "free" else 0)
    _check_rows(be, rows, xs, n, torch.float32, True)
