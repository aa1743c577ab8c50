"""cross_dataset_consistency against scipy's correlations over loops (float64)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import flashcka
from flashcka.analysis import cross_dataset_consistency


def _upper(m, models):
    return [m[models[p], models[q]] for p in range(len(models)) for q in range(p + 1, len(models))
            if models[p] != models[q]]


def _rho(a, b, method):
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    f = stats.pearsonr if method == "pearson" else stats.spearmanr
    return float(f(a, b)[0])


def _matrices(rng, D, M, ties=False):
    base = rng.uniform(0, 1, (M, M))
    out = []
    for _ in range(D):
        m = base + 0.3 * rng.standard_normal((M, M))
        if ties:
            m = np.round(m, 1)
        out.append((m + m.T) / 2)
    return out


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("D,M,ties", [(2, 3, False), (3, 7, True), (4, 11, False)])
def test_matches_scipy_with_bootstrap(rng, method, D, M, ties):
    mats = _matrices(rng, D, M, ties)
    n_boot, seed = 25, int(rng.integers(1000))
    out = cross_dataset_consistency({f"d{i}": torch.tensor(m) for i, m in enumerate(mats)},
                                    method, n_boot=n_boot, ci=0.9, seed=seed)
    allm = list(range(M))
    ref = [[_rho(_upper(a, allm), _upper(b, allm), method) for b in mats] for a in mats]
    np.testing.assert_allclose(out["correlation"].numpy(), ref, rtol=1e-10, atol=1e-12)
    idx = torch.randint(M, (n_boot, M), generator=torch.Generator().manual_seed(seed)).tolist()
    for d in range(D):
        for e in range(D):
            draws = np.array([_rho(_upper(mats[d], s), _upper(mats[e], s), method) for s in idx])
            ok = draws[~np.isnan(draws)]
            assert int(out["undefined_draws"][d, e]) == n_boot - len(ok)
            np.testing.assert_allclose(float(out["std"][d, e]), np.std(ok, ddof=1),
                                       rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(float(out["ci_low"][d, e]), np.quantile(ok, 0.05),
                                       rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(float(out["ci_high"][d, e]), np.quantile(ok, 0.95),
                                       rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_constant_values_are_undefined_whatever_the_rounding(rng, method):
    """Every similarity 0.1: the float64 mean of the values (and of any draw's multiset)
    rounds to 0.09999999999999999, so the centred values are not all 0; ρ with it is
    undefined all the same, as scipy's (NaN), in every draw; the other dataset's own ρ
    is 1 (to 1e-12)."""
    M = 5
    b = rng.uniform(0, 1, (M, M))
    mats = {"const": torch.full((M, M), 0.1, dtype=torch.float64),
            "b": torch.tensor((b + b.T) / 2)}
    allm = list(range(M))
    assert math.isnan(_rho(_upper(mats["const"].numpy(), allm), _upper(mats["b"].numpy(), allm),
                           method))
    out = cross_dataset_consistency(mats, method, n_boot=40, seed=int(rng.integers(1000)))
    assert torch.isnan(out["correlation"][0]).all() and torch.isnan(out["correlation"][:, 0]).all()
    assert out["undefined_draws"][0].tolist() == [40, 40]
    assert abs(float(out["correlation"][1, 1]) - 1) < 1e-12 and out["undefined_draws"][1, 1] < 40


def test_results_and_sequence_input(rng):
    mats = _matrices(rng, 3, 5)
    names = [f"m{i}" for i in range(5)]
    res = [flashcka.CKAResult(torch.tensor(m), names, names) for m in mats]
    a = cross_dataset_consistency(res, n_boot=0)
    assert a["datasets"] == ["0", "1", "2"] and torch.isnan(a["std"]).all()
    b = cross_dataset_consistency(res, n_boot=5, seed=3)
    c = cross_dataset_consistency(res, n_boot=5, seed=3)
    torch.testing.assert_close(b["std"], c["std"], rtol=0, atol=0, equal_nan=True)  # seeded
    assert a["correlation"].diagonal().sub(1).abs().max() < 1e-12


def test_errors(rng):
    m = np.eye(4)
    with pytest.raises(ValueError, match="method"):
        cross_dataset_consistency([m, m], "kendall")
    with pytest.raises(ValueError, match="at least 2 datasets"):
        cross_dataset_consistency([m])
    with pytest.raises(ValueError, match=r"matrices\['1'\] compares 3 models"):
        cross_dataset_consistency([m, np.eye(3)])
    with pytest.raises(ValueError, match="at least 3"):
        cross_dataset_consistency([np.eye(2), np.eye(2)])
    bad = np.eye(4)
    bad[1, 3] = math.nan
    with pytest.raises(ValueError, match=r"models \(1, 3\)"):
        cross_dataset_consistency({"a": m, "b": bad})
    with pytest.raises(ValueError, match="square"):
        cross_dataset_consistency([m, np.ones((4, 3))])
    with pytest.raises(ValueError, match="ci"):
        cross_dataset_consistency([m, m], ci=1.5)
