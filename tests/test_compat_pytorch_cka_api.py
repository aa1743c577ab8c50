"""Every public name of pytorch-cka 1.1.3 (import name ``cka``) in
flashcka.compat.pytorch_cka, used as its README and its tests (test_hsic.py,
test_cka_from_features.py, test_viz.py, test_cka_extended.py) use it: against the installed
original where it is right, against the float64 reference (tests/reference.py) where not."""
import inspect
import warnings

import numpy as np
import pytest
import torch

import reference
from compat_helpers import mlp
from flashcka._warning import FlashCKAWarning
from flashcka.compat import pytorch_cka as adapter


def _original():
    cka = pytest.importorskip("cka", reason="pytorch-cka not installed")
    if not hasattr(cka, "compute_cka"):
        pytest.skip("the installed `cka` module is not pytorch-cka")
    return cka


def _params(f):
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


# ------------------------------------------------------------------ names and signatures
def test_every_public_name_with_its_signature():
    orig = _original()
    assert adapter.__all__ == orig.__all__
    assert adapter.__version__ == orig.__version__
    for name in orig.__all__:
        o, a = getattr(orig, name), getattr(adapter, name)
        if callable(o):
            assert _params(a) == _params(o), name
    for sub in ("cka", "viz"):                               # public submodules
        assert inspect.ismodule(getattr(adapter, sub))
    assert inspect.isfunction(adapter.hsic)                  # the function shadows the module
    from flashcka.compat.pytorch_cka.cka import CKA, cka_from_features, compute_cka  # noqa
    from flashcka.compat.pytorch_cka.hsic import hsic, hsic_cross  # noqa
    from flashcka.compat.pytorch_cka.viz import (plot_cka_comparison,  # noqa
                                                 plot_cka_heatmap, save_figure)
    for f in ("__init__", "__enter__", "__exit__"):
        assert _params(getattr(adapter.CKA, f)) == _params(getattr(orig.CKA, f)), f
    public = {n for n in dir(orig.viz) if n.startswith("plot_") or n == "save_figure"}
    assert public <= set(dir(adapter.viz))


@pytest.mark.parametrize("layers,layers2", [(None, None), (["0", 2, -1], None),
                                            ([1, "3"], ["4", 0])])
@pytest.mark.parametrize("same", [False, True])
def test_layer_to_module_dicts_equal_original(layers, layers2, same):
    orig = _original()
    m1 = mlp(1)
    m2 = m1 if same else mlp(2)
    a = adapter.CKA(m1, m2, layers=layers, model2_layers=layers2, device="cpu")
    o = orig.CKA(m1, m2, layers=layers, model2_layers=layers2, device="cpu")
    for attr in ("model1_layer_to_module", "model2_layer_to_module"):
        da, do = getattr(a, attr), getattr(o, attr)
        assert list(da) == list(do), attr
        assert all(da[k] is do[k] for k in do), attr
    assert a.device == o.device and a.model1 is o.model1 and a.model2 is o.model2


# ------------------------------------------------------------------ hsic, hsic_cross
def _sym_grams(rng, L, n, d, offset=0.0, dtype=torch.float64):
    x = torch.tensor(rng.standard_normal((L, n, d)) + offset, dtype=dtype)
    return x @ x.transpose(1, 2), x


def song_bound(k, l):
    """float64 rounding bound of Song et al.'s formula evaluated term by term (the
    original's and the reference's way): 32 eps times the size of its terms."""
    k, l = np.asarray(k, np.float64), np.asarray(l, np.float64)
    n = k.shape[0]
    terms = (np.linalg.norm(k) * np.linalg.norm(l)
             + abs(k.sum()) * abs(l.sum()) / ((n - 1) * (n - 2))
             + 2 * np.linalg.norm(k.sum(0)) * np.linalg.norm(l.sum(0)) / (n - 2))
    return 32 * np.finfo(np.float64).eps * terms / (n * (n - 3))


@pytest.mark.parametrize("n", [4, 9, 33])
def test_hsic_equals_original_and_reference_float64(rng, n):
    orig = _original()
    gx, _ = _sym_grams(rng, 3, n, 5)
    gy, _ = _sym_grams(rng, 2, n, 70, offset=2.0)
    got, want = adapter.hsic(gx, gy), orig.hsic(gx, gy)
    pairs = ((gx, gy), (gx, gx), (gy, gy))
    for g, w, (ks, ls) in zip(got, want, pairs):
        assert g.dtype == torch.float64 and g.shape == w.shape
        tol = max(song_bound(k, l) for k in ks for l in ls)
        assert float((g - w).abs().max()) <= tol
    ref = np.array([[reference.hsic_song(a.numpy(), b.numpy()) for b in gy] for a in gx])
    tol = max(song_bound(k, l) for k in gx for l in gy)
    assert np.abs(got[0].numpy() - ref).max() <= tol
    assert float((adapter.hsic_cross(gx, gy) - got[0]).abs().max()) == 0.0


def test_hsic_of_non_symmetric_matrices_is_the_originals_definition(rng):
    """test_hsic.py feeds torch.randn (L, n, n) matrices; the values follow the original's
    formula (column sums, Frobenius term)."""
    orig = _original()
    gx = torch.tensor(rng.standard_normal((5, 8, 8)))
    gy = torch.tensor(rng.standard_normal((3, 8, 8)))
    for g, w in zip(adapter.hsic(gx, gy), orig.hsic(gx, gy)):
        assert g.shape == w.shape
        assert float((g - w).abs().max()) <= 1e-13 * float(w.abs().max())
    w = orig.hsic_cross(gx, gy)
    assert float((adapter.hsic_cross(gx, gy) - w).abs().max()) <= 1e-13 * float(w.abs().max())


def test_hsic_float32_grams_exact_where_the_original_cancels(rng):
    """float32 Grams of features with a large mean: ours is the float64 value of the given
    Grams; the original's float32 terms cancel."""
    orig = _original()
    gx, _ = _sym_grams(rng, 2, 64, 16, offset=30.0, dtype=torch.float32)
    gy, _ = _sym_grams(rng, 2, 64, 16, offset=30.0, dtype=torch.float32)
    ref = np.array([[reference.hsic_song(a.double().numpy(), b.double().numpy())
                     for b in gy] for a in gx])
    ours = adapter.hsic_cross(gx, gy).numpy()
    theirs = orig.hsic_cross(gx, gy).double().numpy()
    tol = max(song_bound(k.double(), l.double()) for k in gx for l in gy)
    assert np.abs(ours - ref).max() <= tol                 # the reference's own rounding
    assert np.abs(theirs - ref).max() > 1e4 * tol          # float32 terms of size ~1e11


@pytest.mark.parametrize("fn,label", [("hsic", "hsic_all"), ("hsic_cross", "hsic_cross")])
def test_hsic_errors_as_original(fn, label):
    f = getattr(adapter, fn)
    cases = [((5, 8), (3, 8, 8), f"{label} requires 3D tensors"),
             ((5, 8, 8), (3, 8, 8, 2), f"{label} requires 3D tensors"),
             ((5, 8, 6), (3, 8, 8), f"{label} requires square matrices"),
             ((5, 8, 8), (3, 8, 6), f"{label} requires square matrices"),
             ((5, 8, 8), (3, 10, 10), "must have same sample dimension"),
             ((5, 3, 3), (3, 3, 3), f"{label} requires n > 3"),
             ((5, 1, 1), (3, 1, 1), f"{label} requires n > 3")]
    for sx, sy, msg in cases:
        with pytest.raises(ValueError, match=msg):
            f(torch.randn(*sx), torch.randn(*sy))
    bad = torch.randn(2, 6, 6)
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="grams_x has non-finite"):
        f(bad, torch.randn(2, 6, 6))
    with pytest.raises(TypeError, match="grams_y"):
        f(torch.randn(2, 6, 6), torch.randint(0, 3, (2, 6, 6)))


# ------------------------------------------------------------------ cka_from_features
def test_cka_from_features_readme_forms_against_reference(rng):
    x3 = torch.tensor(rng.standard_normal((3, 16, 8)))
    y3 = torch.tensor(rng.standard_normal((2, 16, 8))) + 0.5 * x3[:2]
    xl = [torch.tensor(rng.standard_normal((16, d))) for d in (8, 4, 12)]
    yl = [xl[0][:, :6] + torch.tensor(rng.standard_normal((16, 6))),
          torch.tensor(rng.standard_normal((16, 10)))]
    for fx, fy in ((x3[0], y3[0]), (x3, y3), (xl, yl)):
        got = adapter.cka_from_features(fx, fy)
        lx = [fx] if isinstance(fx, torch.Tensor) and fx.dim() == 2 else list(fx)
        ly = [fy] if isinstance(fy, torch.Tensor) and fy.dim() == 2 else list(fy)
        want = np.array([[reference.cka(a.numpy(), b.numpy()) for b in ly] for a in lx])
        assert got.dtype == torch.float64 and tuple(got.shape) == want.shape
        assert np.abs(got.numpy() - want).max() <= 1e-12


def test_cka_from_features_equals_original_where_it_does_not_clamp():
    orig = _original()
    rng = np.random.default_rng(7)          # fixed: the data must give negative entries
    x = torch.tensor(rng.standard_normal((4, 16, 8)))
    y = torch.tensor(rng.standard_normal((3, 16, 8)))
    ours, theirs = adapter.cka_from_features(x, y), orig.cka_from_features(x, y)
    inside = ours > 0
    assert bool(inside.any()) and bool((~inside).any())     # both kinds of entries occur
    assert float((ours[inside] - theirs[inside]).abs().max()) <= 1e-12
    assert bool((theirs[~inside] == 0).all())               # the original clamps to 0
    assert float(ours.min()) < -0.01                         # measured: down to -0.1 here
    diag = torch.diagonal(adapter.cka_from_features(x, x))
    assert float((diag - 1).abs().max()) <= 1e-12


def test_cka_from_features_float32_and_zero_variance(rng):
    x = torch.tensor(rng.standard_normal((2, 40, 8)) + 100.0, dtype=torch.float32)
    y = torch.tensor(rng.standard_normal((2, 40, 5)) + 100.0, dtype=torch.float32)
    want = np.array([[reference.cka(a.double().numpy(), b.double().numpy()) for b in y]
                     for a in x])
    assert np.abs(adapter.cka_from_features(x, y).numpy() - want).max() <= 1e-5
    orig = _original()
    err_orig = np.abs(orig.cka_from_features(x, y).double().numpy() - want).max()
    assert err_orig > 1e-2                                  # float32 Grams of offset features
    flat = torch.ones(40, 8, dtype=torch.float64)
    with pytest.warns(FlashCKAWarning):
        z = adapter.cka_from_features([flat, x[0].double()], [y[0].double()])
    assert torch.isnan(z[0, 0]) and not torch.isnan(z[1, 0])
    # the original: a ratio of rounding noises, clamped into [0, 1] (0 or e.g. 1.6e-3)
    v = float(orig.cka_from_features([flat, x[0].double()], [y[0].double()])[0, 0])
    assert 0.0 <= v <= 1.0


def test_cka_from_features_errors():
    with pytest.raises(ValueError, match=r"n > 3"):
        adapter.cka_from_features(torch.randn(3, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="features_x"):
        adapter.cka_from_features(torch.randn(2, 3, 4, 5), torch.randn(8, 3))
    with pytest.raises(TypeError, match="features_y"):
        adapter.cka_from_features(torch.randn(8, 3), "features")
    with pytest.raises(ValueError, match=r"features_y\[0\] has 9 samples"):
        adapter.cka_from_features(torch.randn(8, 3), torch.randn(9, 3))
    with pytest.raises(TypeError, match=r"features_x\[1\] must be a torch.Tensor"):
        adapter.cka_from_features([torch.randn(8, 3), "x"], torch.randn(8, 3))


def test_cka_from_features_flattens_3d_entries_of_a_list(rng):
    """A (n, T, C) entry of a list is flattened to (n, T·C) (the original's ``f @ f.T``
    fails on it)."""
    f = torch.tensor(rng.standard_normal((12, 3, 4)))
    g = torch.tensor(rng.standard_normal((12, 5)))
    got = adapter.cka_from_features([f], [g])
    assert abs(float(got[0, 0]) - reference.cka(f.numpy(), g.numpy())) <= 1e-12
    with pytest.raises(RuntimeError):
        _original().cka_from_features([f], [g])


def test_compute_cka_returns_float64_not_clamped(rng):
    """An unrelated pair of layers whose debiased CKA is negative: reported, not 0."""
    from compat_helpers import Loader, inputs, ref_minibatch
    m1, m2 = mlp(1), mlp(7)
    xs = inputs(rng, [8, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = adapter.compute_cka(m1, m2, Loader(xs), layers=["0", "1", "2", "3", "4"],
                                  device="cpu", progress=False)[0]
    want = ref_minibatch(m1, m2, xs, xs, ["0", "1", "2", "3", "4"], ["0", "1", "2", "3", "4"])
    assert got.dtype == torch.float64
    assert np.abs(got.numpy() - want).max() <= 1e-5
