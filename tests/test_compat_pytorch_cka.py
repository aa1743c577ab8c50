"""flashcka.compat.pytorch_cka against pytorch-cka 1.1.3 (import name ``cka``, when
installed) and a float64 minibatch-CKA reference (tests/reference.py)."""
import inspect

import numpy as np
import pytest
import torch
from torch import nn

import reference
from compat_helpers import Loader, inputs, mlp, np_close, ref_minibatch
from flashcka.compat import pytorch_cka as adapter


def _original():
    cka = pytest.importorskip("cka", reason="pytorch-cka not installed")
    if not hasattr(cka, "compute_cka"):
        pytest.skip("the installed `cka` module is not pytorch-cka")
    return cka


def test_signatures_match_original():
    orig = _original()
    for a, o in ((adapter.compute_cka, orig.compute_cka), (adapter.CKA.__init__,
                                                           orig.CKA.__init__)):
        pa, po = inspect.signature(a).parameters, inspect.signature(o).parameters
        assert list(pa) == list(po)
        assert [(p.kind, p.default) for p in pa.values()] == \
            [(p.kind, p.default) for p in po.values()]


def test_list_of_loaders_int_indices_match_reference(rng):
    m1, m2 = mlp(1), mlp(2, widths=(4, 8, 3))
    xs_a, xs_b = inputs(rng, [16, 9]), inputs(rng, [23, 5, 7])
    la, lb = Loader([(x, 0) for x in xs_a]), Loader([{"x": x} for x in xs_b])
    got = adapter.compute_cka(m1, m2, [la, lb], layers=[4, 0, -3], model2_layers=["2", 1],
                              device="cpu", progress=False)
    assert isinstance(got, list) and len(got) == 2
    names1, names2 = ["4", "0", "2"], ["2", "1"]
    for g, xs in zip(got, (xs_a, xs_b)):
        assert g.shape == (3, 2) and g.dtype == torch.float64
        np_close(g, ref_minibatch(m1, m2, xs, xs, names1, names2), 2e-5)
    same = adapter.compute_cka(m1, m2, la, lb, layers=[4, 0, -3], model2_layers=["2", 1],
                               device="cpu", progress=False)
    np_close(same[1], got[1], 0)


def test_same_model_one_forward_pass(rng):
    m = mlp(3)
    calls = []
    m.register_forward_pre_hook(lambda mod, inp: calls.append(1))
    xs = inputs(rng, [12, 12])
    got = adapter.compute_cka(m, m, Loader(xs), layers=["0", "2"], model2_layers=["4", "2", "0"],
                              device="cpu", progress=False)[0]
    assert len(calls) == 2
    np_close(got, ref_minibatch(m, m, xs, xs, ["0", "2"], ["4", "2", "0"]), 2e-5)


def test_matches_original(rng):
    orig = _original()
    m1, m2 = mlp(3), mlp(4, widths=(7, 7, 2))
    xs = inputs(rng, [32, 32, 32])
    loader = Loader([(x, 0) for x in xs])
    kw = dict(layers=["0", "1", "2", "3", "4"], model2_layers=["0", "2", "4"], device="cpu",
              progress=False)
    theirs = orig.compute_cka(m1, m2, loader, **kw)[0]
    got = adapter.compute_cka(m1, m2, loader, **kw)[0]
    want = ref_minibatch(m1, m2, xs, xs, kw["layers"], kw["model2_layers"])
    np_close(got, want, 2e-5)
    np_close(theirs.double(), np.clip(want, 0, 1), 5e-3)   # raw float32 Grams, clamped


class Split(nn.Module):
    """Two independent halves of the input: debiased CKA between them is near 0."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Identity(), nn.Identity()

    def forward(self, x):
        return self.a(x[:, :3]), self.b(x[:, 3:])


def test_not_clamped():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):       # a fixed draw whose debiased CKA is negative
        x = torch.randn(8, 6, generator=g, dtype=torch.float64)
        want = reference.cka(x[:, :3].numpy(), x[:, 3:].numpy())
        if want < -0.02:
            break
    assert want < -0.02
    got = adapter.compute_cka(Split(), Split(), Loader([x]), layers=["a"],
                              model2_layers=["b"], device="cpu", progress=False)[0]
    np_close(got, [[want]], 1e-12)


def test_context_manager_restores_modes_and_hooks(rng, capsys):
    m1, m2 = mlp(1), mlp(2)
    m1.train()
    m1[2].eval()                        # a mixed state must come back exactly
    before = {k: v.training for k, v in m1.named_modules()}
    c = adapter.CKA(m1, m2, layers=["0", "2"], device="cpu")
    with c as ctx:
        assert ctx is c and not m1.training
        assert sum(len(mod._forward_hooks) for mod in m1.modules()) == 2
        r = c.compare(Loader(inputs(rng, [8, 8])), progress=False, verbose=True)
        assert r.shape == (2, 2)
    assert "Mean CKA" in capsys.readouterr().out
    assert {k: v.training for k, v in m1.named_modules()} == before
    assert not any(mod._forward_hooks for mod in list(m1.modules()) + list(m2.modules()))
    # compare outside a with-block registers and removes its hooks itself
    r2 = c.compare(Loader(inputs(rng, [8])), progress=False)
    assert r2.shape == (2, 2) and not any(mod._forward_hooks for mod in m1.modules())
    assert c._compare == c.compare


def test_errors(rng):
    m1, m2 = mlp(1), mlp(2)
    with pytest.raises(ValueError, match="not found"):
        adapter.CKA(m1, m2, layers=["nope"])
    with pytest.raises(IndexError, match="out of range"):
        adapter.CKA(m1, m2, layers=[5])
    with pytest.raises(TypeError, match="str or int"):
        adapter.CKA(m1, m2, layers=[1.5])
    with pytest.raises(ValueError, match="at least one dataloader"):
        adapter.compute_cka(m1, m2)
    with pytest.raises(ValueError, match="batch size > 3"):
        adapter.compute_cka(m1, m2, Loader(inputs(rng, [3])), progress=False, device="cpu")
    assert not any(mod._forward_hooks for mod in m1.modules())


class Mul(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


@pytest.mark.parametrize("s", [1e-18, 1e15])
def test_scale_invariant_in_float32(rng, s):
    """CKA is scale-invariant: float32 outputs scaled by 1e-18 or 1e15 give the same CKA
    (the original's raw float32 Grams underflow or overflow there)."""
    m1, m2 = mlp(1), nn.Sequential(mlp(2), Mul(s))
    xs = inputs(rng, [20, 20])
    got = adapter.compute_cka(m1, m2, Loader(xs), layers=["0", "4"], model2_layers=["1"],
                              device="cpu", progress=False)[0]
    want = ref_minibatch(m1, nn.Sequential(mlp(2), Mul(1.0)), xs, xs, ["0", "4"], ["1"])
    np_close(got, want, 2e-5)
