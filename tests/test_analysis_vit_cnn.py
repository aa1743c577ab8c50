"""flashcka.analysis.vit_cnn against loops over the definitions (float64, awkward sizes)."""
import math

import numpy as np
import pytest
import torch

import flashcka
from flashcka.analysis import best_match, similarity_by_distance, uniformity, vit_cnn_summary


def _ref_by_distance(m):
    L = len(m)
    out = []
    for d in range(L):
        vals = [m[i][j] for i in range(L) for j in range(L)
                if abs(i - j) == d and not math.isnan(m[i][j])]
        out.append(sum(vals) / len(vals) if vals else float("nan"))
    return out


def _ref_uniformity(m):
    vals = [m[i][j] for i in range(len(m)) for j in range(len(m))
            if i != j and not math.isnan(m[i][j])]
    return sum(vals) / len(vals)


def _ref_best(m):
    la, lb = len(m), len(m[0])
    idx, val, depth, wdepth = [], [], [], []
    for i in range(la):
        best_j, best_v = -1, -math.inf
        for j in range(lb):
            if not math.isnan(m[i][j]) and m[i][j] > best_v:
                best_j, best_v = j, m[i][j]
        idx.append(best_j)
        val.append(best_v)
        depth.append(best_j / (lb - 1))
        w = [max(m[i][j], 0.0) if not math.isnan(m[i][j]) else 0.0 for j in range(lb)]
        wdepth.append(sum(wj * j / (lb - 1) for j, wj in enumerate(w)) / sum(w))
    return idx, val, depth, wdepth


@pytest.mark.parametrize("L", [1, 2, 7, 13])
def test_self_similarity_summaries(rng, L):
    m = rng.uniform(-0.1, 1.0, (L, L))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    if L > 2:
        m[0, 2] = m[2, 0] = np.nan
    got = similarity_by_distance(torch.tensor(m)).numpy()
    np.testing.assert_allclose(got, _ref_by_distance(m.tolist()), rtol=1e-12, atol=1e-14)
    if L == 1:
        assert math.isnan(uniformity(m))
    else:
        assert uniformity(m) == pytest.approx(_ref_uniformity(m.tolist()), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("la,lb", [(1, 2), (5, 3), (15, 11)])
def test_best_match(rng, la, lb):
    m = rng.uniform(0.05, 1.0, (la, lb))
    m[0, 0] = np.nan
    names_b = [f"b{j}" for j in range(lb)]
    r = flashcka.CKAResult(torch.tensor(m), [f"a{i}" for i in range(la)], names_b)
    got = best_match(r)
    idx, val, depth, wdepth = _ref_best(m.tolist())
    assert got["index"].tolist() == idx
    np.testing.assert_allclose(got["cka"].numpy(), val, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["depth_b"].numpy(), depth, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["mean_depth_b"].numpy(), wdepth, rtol=1e-12, atol=1e-14)
    assert got["names"] == [names_b[j] for j in idx]


def test_all_nan_row_and_summary_json(rng):
    m = rng.uniform(0, 1, (3, 4))
    m[1] = np.nan
    got = best_match(m)
    assert got["index"].tolist()[1] == -1 and math.isnan(float(got["cka"][1]))
    s = vit_cnn_summary(np.eye(3), np.eye(4), m)
    import json
    json.dumps(s)                                   # JSON-ready (NaN -> None)
    assert s["best_match"]["cka"][1] is None
    assert s["uniformity"]["vit"] == 0.0


def test_errors():
    with pytest.raises(ValueError, match="result must be square"):
        uniformity(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="result must be a CKAResult"):
        best_match([[1.0]])
    with pytest.raises(ValueError, match="2-D"):
        similarity_by_distance(torch.zeros(3))
