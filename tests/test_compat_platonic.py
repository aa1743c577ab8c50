"""flashcka.compat.platonic.AlignmentMetrics against float64 numpy implementations of each
formula of platonic-rep's metrics.py (written out here; the package is not on a registry),
with the original's defects fixed as the adapter documents."""
import inspect

import numpy as np
import pytest
import torch

from flashcka.compat.platonic import AlignmentMetrics as M


# ---- float64 references, from metrics.py's formulas ----
def ref_knn(f, topk):
    g = f @ f.T
    np.fill_diagonal(g, -np.inf)
    return np.argsort(-g, axis=1, kind="stable")[:, :topk]


def ref_mutual(a, b, topk):
    ka, kb = ref_knn(a, topk), ref_knn(b, topk)
    return np.mean([len(set(ka[i]) & set(kb[i])) / topk for i in range(len(a))])


def ref_cycle(a, b, topk):
    ka, kb = ref_knn(a, topk), ref_knn(b, topk)
    return np.mean([i in set(ka[kb[i]].ravel()) for i in range(len(a))])


def ref_lcs(x, y):
    m, n = len(x), len(y)
    dp = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            dp[i][j] = dp[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else \
                max(dp[i - 1][j], dp[i][j - 1])
    return dp[m][n]


def ref_edit(x, y):
    d = list(range(len(y) + 1))
    for i in range(1, len(x) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(y) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (x[i - 1] != y[j - 1]))
            prev, d[j] = d[j], cur
    return d[-1]


def hsic_unbiased(k, l):
    m = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    return (np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
            - 2 * np.sum(kt @ lt) / (m - 2)) / (m * (m - 3))


def hsic_biased(k, l):
    h = np.eye(k.shape[0]) - 1 / k.shape[0]
    return np.trace(k @ h @ l @ h)


def ref_cka(a, b, kernel="ip", sigma=1.0, unbiased=False):
    if kernel == "ip":
        k, l = a @ a.T, b @ b.T
    else:
        def sq(x):
            s = np.sum(x * x, 1)
            return np.maximum(s[:, None] + s[None, :] - 2 * x @ x.T, 0)
        k, l = np.exp(-sq(a) / (2 * sigma ** 2)), np.exp(-sq(b) / (2 * sigma ** 2))
    f = hsic_unbiased if unbiased else hsic_biased
    return f(k, l) / np.sqrt(f(k, k) * f(l, l))


def ref_cknna(a, b, topk=None, unbiased=True):
    n = a.shape[0]
    topk = n - 1 if topk is None else topk
    k, l = a @ a.T, b @ b.T

    def sim(k, l):
        kh, lh = k.copy(), l.copy()
        if unbiased:
            np.fill_diagonal(kh, -np.inf)
            np.fill_diagonal(lh, -np.inf)
        mk, ml = np.zeros((n, n)), np.zeros((n, n))
        np.put_along_axis(mk, np.argsort(-kh, 1, kind="stable")[:, :topk], 1, 1)
        np.put_along_axis(ml, np.argsort(-lh, 1, kind="stable")[:, :topk], 1, 1)
        mask = mk * ml
        f = hsic_unbiased if unbiased else hsic_biased
        return f(mask * k, mask * l)
    return sim(k, l) / np.sqrt(sim(k, k) * sim(l, l))


def ref_svcca(a, b, cca_dim):
    """Canonical correlations from covariance matrices (a route independent of the
    adapter's SVD of U_Aᵀ U_B), of the exact top singular vectors."""
    def top(x):
        x = x - x.mean(0)
        x = x / x.std(0, ddof=1)
        return np.linalg.svd(x, full_matrices=False)[0][:, :cca_dim]
    ua, ub = top(a), top(b)
    ua, ub = ua - ua.mean(0), ub - ub.mean(0)
    saa, sbb, sab = ua.T @ ua, ub.T @ ub, ua.T @ ub
    m = np.linalg.solve(saa, sab) @ np.linalg.solve(sbb, sab.T)
    rho = np.sqrt(np.clip(np.sort(np.linalg.eigvals(m).real)[::-1], 0, None))
    return rho.mean()


def pair(rng, n, da, db, noise=1.0):
    a = rng.standard_normal((n, da)) + rng.uniform(-1, 1, da)
    b = np.tanh(a @ rng.standard_normal((da, db)) / np.sqrt(da)) + noise * rng.standard_normal((n, db))
    return a, b


T = lambda x: torch.tensor(x)  # noqa: E731


def test_interface():
    assert M.SUPPORTED_METRICS == ["cycle_knn", "mutual_knn", "lcs_knn", "cka", "unbiased_cka",
                                   "cknna", "svcca", "edit_distance_knn"]
    sig = inspect.signature
    assert str(sig(M.cka)) == "(feats_A, feats_B, kernel_metric='ip', rbf_sigma=1.0, unbiased=False)"
    assert str(sig(M.cknna)) == "(feats_A, feats_B, topk=None, distance_agnostic=False, unbiased=True)"
    assert str(sig(M.svcca)) == "(feats_A, feats_B, cca_dim=10)"
    for m in ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"):
        assert str(sig(getattr(M, m))) == "(feats_A, feats_B, topk)"
    with pytest.raises(ValueError, match="Unrecognized metric"):
        M.measure("nope", None, None)


@pytest.mark.parametrize("n,da,db,topk", [(5, 3, 1, 2), (40, 8, 30, 5), (97, 64, 16, 10)])
def test_knn_metrics(rng, n, da, db, topk):
    a, b = pair(rng, n, da, db)
    r = M.mutual_knn(T(a), T(b), topk)
    assert isinstance(r, float) and abs(r - ref_mutual(a, b, topk)) < 1e-12
    r = M.measure("cycle_knn", T(a), T(b), topk=topk)
    assert isinstance(r, float) and abs(r - ref_cycle(a, b, topk)) < 1e-12
    ka, kb = ref_knn(a, topk), ref_knn(b, topk)
    r = M.lcs_knn(T(a), T(b), topk)
    assert r.dim() == 0 and r.dtype == torch.float32
    assert abs(r.item() - np.mean([ref_lcs(ka[i], kb[i]) for i in range(n)])) < 1e-6
    r = M.edit_distance_knn(T(a), T(b), topk)
    assert r.dim() == 0 and r.dtype == torch.float64
    want = 1 - np.mean([ref_edit(ka[i], kb[i]) for i in range(n)]) / topk
    assert abs(r.item() - want) < 1e-12


@pytest.mark.parametrize("n,da,db", [(4, 3, 5), (33, 10, 70), (120, 50, 6)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_cka(rng, n, da, db, unbiased):
    a, b = pair(rng, n, da, db)
    r = M.cka(T(a), T(b), unbiased=unbiased)
    assert isinstance(r, float) and abs(r - ref_cka(a, b, unbiased=unbiased)) < 1e-10
    r = M.measure("cka", T(a), T(b), kernel_metric="rbf", rbf_sigma=3.0, unbiased=unbiased)
    assert abs(r - ref_cka(a, b, "rbf", 3.0, unbiased)) < 1e-10
    if unbiased:
        assert abs(M.unbiased_cka(T(a), T(b)) - ref_cka(a, b, unbiased=True)) < 1e-10


def test_cka_no_epsilon(rng):
    """The original's +1e-6 makes CKA of small-scale features depend on their scale."""
    a, b = pair(rng, 30, 5, 5)
    want = ref_cka(a, b)
    for s in (1e-4, 1.0):
        assert abs(M.cka(T(a * s), T(b * s)) - want) < 1e-10


@pytest.mark.parametrize("n,da,db,topk", [(6, 3, 4, 2), (40, 8, 30, 5), (97, 64, 16, 20)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_cknna(rng, n, da, db, topk, unbiased):
    a, b = pair(rng, n, da, db)
    r = M.cknna(T(a), T(b), topk=topk, unbiased=unbiased)
    assert isinstance(r, float) and abs(r - ref_cknna(a, b, topk, unbiased)) < 1e-10
    r = M.cknna(T(a).float(), T(b).float(), topk=topk, unbiased=unbiased)
    assert abs(r - ref_cknna(a, b, topk, unbiased)) < 1e-4     # float32 in, float64 inside


def test_cknna_defaults_and_distance_agnostic(rng):
    a, b = pair(rng, 30, 6, 9)
    # topk=None: all n − 1 neighbours (the original raises TypeError); equals unbiased CKA
    r = M.cknna(T(a), T(b))
    assert abs(r - ref_cknna(a, b, None)) < 1e-10
    assert abs(r - ref_cka(a, b, unbiased=True)) < 1e-10
    with pytest.raises(ValueError, match="topk >= 2"):
        M.cknna(T(a), T(b), topk=1)
    # distance-agnostic: shared neighbours over sqrt(|A| |B|) = the mutual-kNN fraction
    r = M.cknna(T(a), T(b), topk=5, distance_agnostic=True)
    assert isinstance(r, float) and abs(r - ref_mutual(a, b, 5)) < 1e-7


@pytest.mark.parametrize("n,da,db,k", [(12, 11, 20, 3), (200, 40, 30, 10), (90, 10, 10, 10)])
def test_svcca_exact_and_deterministic(rng, n, da, db, k):
    a, b = pair(rng, n, da, db, noise=2.0)
    r = M.svcca(T(a), T(b), cca_dim=k)
    assert isinstance(r, float) and abs(r - ref_svcca(a, b, k)) < 1e-8
    assert M.svcca(T(a), T(b), cca_dim=k) == r
    with pytest.raises(ValueError, match="cca_dim"):
        M.svcca(T(a), T(b), cca_dim=min(da, db) + 1)


def test_svcca_matches_sklearn_cca_on_exact_svd(rng):
    """The original's pipeline (sklearn CCA, correlation of each canonical pair), fed the
    exact singular vectors instead of randomized ones."""
    sk = pytest.importorskip("sklearn.cross_decomposition")
    a, b = pair(rng, 150, 30, 25, noise=2.0)
    k = 8

    def top(x):
        x = x - x.mean(0)
        x = x / (x.std(0, ddof=1) + 1e-8)
        return np.linalg.svd(x, full_matrices=False)[0][:, :k]
    ua, ub = top(a), top(b)
    cca = sk.CCA(n_components=k, max_iter=5000, tol=1e-12).fit(ua, ub)
    xa, xb = cca.transform(ua, ub)
    want = np.mean([np.corrcoef(xa[:, i], xb[:, i])[0, 1] for i in range(k)])
    assert abs(M.svcca(T(a), T(b), k) - want) < 1e-7


def test_kornblith_demo_values():
    """Kornblith et al.'s Demo.ipynb (seed 1337): linear CKA 0.55761, debiased 0.51346."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert f"{M.cka(T(x), T(y)):.5f}" == "0.55761"
    assert f"{M.unbiased_cka(T(x), T(y)):.5f}" == "0.51346"
    assert f"{M.cknna(T(x), T(y)):.5f}" == "0.51346"          # topk = n − 1
