"""flashcka.compat.torch_cka.CKA against torch-cka 0.21 (when installed) and a float64
minibatch-CKA reference (tests/reference.py)."""
import inspect
import warnings

import numpy as np
import pytest
import torch

from compat_helpers import Loader, inputs, mlp, np_close, ref_minibatch
from flashcka.compat import torch_cka as adapter

LAYERS1 = ["0", "1", "2", "3", "4"]
LAYERS2 = ["0", "2", "4"]


def test_signature_matches_original():
    orig = pytest.importorskip("torch_cka", reason="torch-cka not installed")
    for name in ("__init__", "compare", "export", "plot_results"):
        a = inspect.signature(getattr(adapter.CKA, name))
        o = inspect.signature(getattr(orig.CKA, name))
        assert list(a.parameters) == list(o.parameters), name
        assert [p.default for p in a.parameters.values()] == \
            [p.default for p in o.parameters.values()], name


@pytest.mark.parametrize("two_loaders", [False, True])
def test_matches_reference(rng, two_loaders):
    m1, m2 = mlp(1), mlp(2, widths=(4, 8, 3))
    xs1 = inputs(rng, [16, 9, 23])
    xs2 = inputs(rng, [16, 9, 23]) if two_loaders else xs1
    l1 = Loader([(x, torch.zeros(len(x))) for x in xs1])
    l2 = Loader([(x, torch.zeros(len(x))) for x in xs2]) if two_loaders else None
    c = adapter.CKA(m1, m2, "a", "b", LAYERS1, LAYERS2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.compare(l1, l2)
    out = c.export()
    assert set(out) == {"model1_name", "model2_name", "CKA", "model1_layers",
                        "model2_layers", "dataset1_name", "dataset2_name"}
    assert out["model1_layers"] == LAYERS1 and out["model2_layers"] == LAYERS2
    assert isinstance(out["CKA"], torch.Tensor) and out["CKA"].shape == (5, 3)
    want = ref_minibatch(m1, m2, xs1, xs2, LAYERS1, LAYERS2)
    np_close(out["CKA"], want, 2e-5)
    # hooks are gone and the models are left in eval mode, as the original leaves them
    assert not any(m._forward_hooks for m in m1.modules())
    assert not m1.training


def test_matches_original(rng):
    orig = pytest.importorskip("torch_cka", reason="torch-cka not installed")
    m1, m2 = mlp(3), mlp(4, widths=(7, 7, 2))
    xs = inputs(rng, [32, 32, 32])
    loader = Loader([(x, 0) for x in xs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = orig.CKA(m1, m2, "a", "b", LAYERS1, LAYERS2)
        o.compare(loader)
        a = adapter.CKA(m1, m2, "a", "b", LAYERS1, LAYERS2)
        a.compare(loader)
    got, theirs = a.export(), o.export()
    for k in ("model1_name", "model2_name", "model1_layers", "model2_layers",
              "dataset1_name", "dataset2_name"):
        assert got[k] == theirs[k], k
    want = ref_minibatch(m1, m2, xs, xs, LAYERS1, LAYERS2)
    np_close(got["CKA"], want, 2e-5)
    # the original forms raw float32 Grams: right to its float32 cancellation error only
    np_close(theirs["CKA"].double(), want, 5e-3)


def test_default_layers_every_module_in_named_order(rng):
    m1, m2 = mlp(5), mlp(6)
    c = adapter.CKA(m1, m2, "a", "b")
    assert c.export.__self__ is c
    xs = inputs(rng, [12, 12])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.compare(Loader([[x] for x in xs]))
    names = [n for n, _ in m1.named_modules()]
    assert c.export()["model1_layers"] == names and names[0] == ""
    want = ref_minibatch(m1, m2, xs, xs, names, names)
    np_close(c.export()["CKA"], want, 2e-5)
    np_close(np.diag(c.export()["CKA"].numpy()), np.diag(want), 2e-5)


def test_errors_and_small_batches(rng):
    m1, m2 = mlp(1), mlp(2)
    with pytest.raises(ValueError, match="model2_layers"):
        adapter.CKA(m1, m2, "a", "b", ["0"], ["nope"])
    c = adapter.CKA(m1, m2, "a", "b", ["0"], ["2"])
    xs = inputs(rng, [10, 3])
    with pytest.warns(UserWarning, match="skipping batch 1"):
        c.compare(Loader(xs), Loader(xs))
    want = ref_minibatch(m1, m2, xs[:1], xs[:1], ["0"], ["2"])
    np_close(c.export()["CKA"], want, 2e-5)
    with pytest.raises(ValueError, match="same number"):
        c.compare(Loader(inputs(rng, [10])), Loader(inputs(rng, [11])))
    assert not any(m._forward_hooks for m in m2.modules())


def test_plot_results(tmp_path, rng):
    import matplotlib
    matplotlib.use("Agg")
    c = adapter.CKA(mlp(1), mlp(2), "a", "b", ["0", "2"], ["2", "4"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.compare(Loader(inputs(rng, [8])))
        c.plot_results(save_path=tmp_path / "h.png", title="t")
    assert (tmp_path / "h.png").stat().st_size > 1000
