"""NeuronLabeler / label_neurons against float64 loops over CLIP-Dissect's soft-WPMI
(Oikarinen & Weng 2023) and Pearson correlation, streamed over uneven batches."""
import math

import numpy as np
import pytest
import torch

from flashcka.analysis import NeuronLabeler, label_neurons


def _ref_corr(a, c):
    n, U = a.shape
    C = c.shape[1]
    r = np.empty((U, C))
    for k in range(U):
        for j in range(C):
            x, y = a[:, k] - a[:, k].mean(), c[:, j] - c[:, j].mean()
            r[k, j] = (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum())
    return r


def _ref_wpmi(a, c, top_k, alpha, lam, p_start=0.998, p_end=0.97, softmax=True):
    n, U = a.shape
    C = c.shape[1]
    if softmax:
        e = np.exp(alpha * (c - c.max(1, keepdims=True)))
        P = e / e.sum(1, keepdims=True)
    else:
        P = c
    cond = np.empty((U, C))
    for k in range(U):
        order = sorted(range(n), key=lambda i: -a[i, k])[:top_k]
        for j in range(C):
            s = 0.0
            for r, i in enumerate(order):
                p_r = p_start - r / top_k * (p_start - p_end)
                s += math.log(1 + p_r * (P[i, j] - 1) + 1e-7)
            cond[k, j] = s
    prior = np.array([math.log(sum(math.exp(cond[k, j]) for k in range(U))) - math.log(U)
                      for j in range(C)])
    return cond - lam * prior[None, :]


def _stream(lab, acts, c, sizes):
    row = 0
    for b in sizes:
        lab.update({name: x[row:row + b] for name, x in acts.items()}, c[row:row + b])
        row += b
    return lab.compute()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n,sizes", [(37, [10, 10, 10, 7]), (23, [23]), (50, [1, 4, 45])])
def test_correlation_matches_loops(rng, n, sizes, dtype, tol):
    c = rng.standard_normal((n, 6)) + 3.0
    acts = {"l1": rng.standard_normal((n, 5)) * 100 + 1e3,          # offsets: shifted sums
            "l2": c @ rng.standard_normal((6, 9)) + rng.standard_normal((n, 9))}
    lab = NeuronLabeler(6, "correlation", concept_names=list("abcdef"))
    out = _stream(lab, {k: torch.tensor(v, dtype=dtype) for k, v in acts.items()},
                  torch.tensor(c, dtype=dtype), sizes)
    for name, a in acts.items():
        npd = np.float32 if dtype == torch.float32 else np.float64
        ref = _ref_corr(a.astype(npd).astype(np.float64), c.astype(npd).astype(np.float64))
        np.testing.assert_allclose(out[name]["scores"].numpy(), ref.max(1), rtol=0, atol=tol)
        best = ref.max(1, keepdims=True)
        for k, lbl in enumerate(out[name]["labels"].tolist()):   # argmax, up to near-ties
            assert ref[k, lbl] >= best[k, 0] - 2 * tol
        assert out[name]["distinct"] == len(set(ref.argmax(1).tolist()))


@pytest.mark.parametrize("n,sizes,top_k,softmax", [(41, [16, 16, 9], 7, True),
                                                    (30, [3, 27], 30, True),
                                                    (25, [25], 5, False)])
def test_wpmi_matches_clip_dissect_definition(rng, n, sizes, top_k, softmax):
    c = rng.uniform(0.1, 0.4, (n, 8)) if softmax else (rng.uniform(0, 1, (n, 8)) > 0.6) * 1.0
    a = rng.standard_normal((n, 12))
    lab = NeuronLabeler(8, "wpmi", top_k=top_k, alpha=10.0, lam=0.7, softmax=softmax)
    out = _stream(lab, {"layer": torch.tensor(a)}, torch.tensor(c), sizes)
    ref = _ref_wpmi(a, c, top_k, 10.0, 0.7, softmax=softmax)
    assert out["layer"]["labels"].tolist() == ref.argmax(1).tolist()
    np.testing.assert_allclose(out["layer"]["scores"].numpy(), ref.max(1), rtol=1e-10, atol=1e-10)


def test_wpmi_float32(rng):
    n, top_k = 40, 9
    c = rng.uniform(0.1, 0.4, (n, 5)).astype(np.float32)
    a = rng.standard_normal((n, 6)).astype(np.float32)
    lab = NeuronLabeler(5, "wpmi", top_k=top_k)
    out = _stream(lab, {"layer": torch.tensor(a)}, torch.tensor(c), [17, 23])
    ref = _ref_wpmi(a.astype(np.float64), c.astype(np.float64), top_k, 10.0, 1.0)
    np.testing.assert_allclose(out["layer"]["scores"].numpy(), ref.max(1), rtol=1e-5, atol=1e-5)


def test_label_neurons_on_a_model_and_categories(rng):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5))
    x = torch.tensor(rng.standard_normal((33, 1, 8, 8)), dtype=torch.float32)
    c = torch.tensor(rng.uniform(0, 1, (33, 4)))
    loader = [(x[i:i + 8], None) for i in range(0, 33, 8)]
    cats = {"red": "colour", "blue": "colour", "dog": "object", "fur": "texture"}
    out = label_neurons(model, loader, c, layers=["0", "3"], method="correlation",
                        concept_names=list(cats), categories=cats)
    with torch.no_grad():
        conv = model[0](x).mean((2, 3))
        fc = model(x)
    direct = NeuronLabeler(4, "correlation", concept_names=list(cats), categories=cats)
    direct.update({"0": conv, "3": fc}, c)
    ref = direct.compute()
    assert list(out) == ["0", "3"]
    for name in out:
        assert out[name]["labels"].tolist() == ref[name]["labels"].tolist()
        # both float32 products (streamed vs one batch): |r| <= 1, float32 rounding scale
        torch.testing.assert_close(out[name]["scores"], ref[name]["scores"], rtol=0, atol=2e-5)
        cats_seen = {cats[cn] for cn in out[name]["distinct_concepts"]}
        assert set(out[name]["by_category"]) == cats_seen
        assert sum(out[name]["by_category"].values()) == out[name]["distinct"]


def test_label_neurons_input_point_and_modes(rng):
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(9, 3))
    model.train()
    model[0].eval()
    x = torch.tensor(rng.standard_normal((21, 6)), dtype=torch.float64)
    c = torch.tensor(rng.uniform(0, 1, (21, 5)))
    model.double()
    out = label_neurons(model, [x[:10], x[10:]], c, layers=["3:input"], method="wpmi", top_k=6)
    assert model.training and not model[0].training               # per-module modes restored
    with torch.no_grad():
        h = torch.relu(model[0](x))                               # Dropout is off in eval
    ref = NeuronLabeler(5, "wpmi", top_k=6)
    ref.update({"3:input": h}, c)
    ref = ref.compute()["3:input"]
    assert list(out) == ["3:input"]
    assert out["3:input"]["labels"].tolist() == ref["labels"].tolist()
    torch.testing.assert_close(out["3:input"]["scores"], ref["scores"], rtol=1e-12, atol=1e-12)


def test_constant_unit_is_unlabelled(rng):
    lab = NeuronLabeler(3, "correlation")
    a = torch.tensor(rng.standard_normal((20, 2)))
    a[:, 1] = 5.0
    lab.update({"l": a}, torch.tensor(rng.standard_normal((20, 3))))
    out = lab.compute()["l"]
    assert out["labels"][1] == -1 and math.isnan(float(out["scores"][1]))
    assert out["concepts"][1] is None and out["distinct"] == 1


def test_errors(rng):
    lab = NeuronLabeler(3, "wpmi", top_k=50)
    with pytest.raises(ValueError, match=r"concepts must be \(b, 3\)"):
        lab.update({"l": torch.randn(4, 2)}, torch.randn(4, 2))
    with pytest.raises(ValueError, match="l has 5 samples"):
        lab.update({"l": torch.randn(5, 2)}, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\(b, units\)"):
        lab.update({"l": torch.randn(4, 2, 2)}, torch.randn(4, 3))
    lab.update({"l": torch.randn(4, 2)}, torch.randn(4, 3))
    with pytest.raises(ValueError, match="units"):
        lab.update({"l": torch.randn(4, 3)}, torch.randn(4, 3))
    with pytest.raises(ValueError, match="every batch must give the same layers"):
        lab.update({"m": torch.randn(4, 2)}, torch.randn(4, 3))
    with pytest.raises(ValueError, match="top_k = 50"):
        lab.compute()
    with pytest.raises(ValueError, match="method"):
        NeuronLabeler(3, "iou")
    with pytest.raises(ValueError, match="categories has 2"):
        NeuronLabeler(3, categories=["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        NeuronLabeler(3).update({"l": torch.randn(4, 2)}, torch.full((4, 3), float("nan")))
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="concepts has 8 rows"):
        label_neurons(model, [torch.randn(4, 3)], torch.randn(8, 2), layers=["0"],
                      method="correlation")
    with pytest.raises(ValueError, match="more than the 2 stimuli"):
        label_neurons(model, [torch.randn(4, 3)], torch.randn(2, 2), layers=["0"])
    with pytest.raises(ValueError, match="tokens"):
        label_neurons(model, [torch.randn(4, 3)], torch.randn(4, 2), tokens="flatten")
