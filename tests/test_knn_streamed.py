"""Streamed exact mutual kNN and CKNNA (measures/knn.py, issue 19) against float64
references written here from Huh et al. 2024's definitions, at awkward sizes, tiles of one
row and planted ties (the lower index wins)."""
import numpy as np
import pytest
import torch

from flashcka import similarity_matrix
from flashcka.measures import knn as K

st = pytest.importorskip("safetensors.torch")


# ---- float64 references (Huh et al. 2024, "The Platonic Representation Hypothesis", §A) ----
def ref_neighbours(x, topk, exclude_self=True):
    """Row i: the topk j with the largest <x_i, x_j>; equal values: the lower j first."""
    g = x.reshape(len(x), -1) @ x.reshape(len(x), -1).T
    out = []
    for i in range(len(x)):
        cand = [j for j in range(len(x)) if not (exclude_self and j == i)]
        cand.sort(key=lambda j: (-g[i, j], j))
        out.append(sorted(cand[:topk]))
    return np.array(out), g


def ref_mutual_knn(a, b, topk):
    na, _ = ref_neighbours(a, topk)
    nb, _ = ref_neighbours(b, topk)
    return np.mean([len(set(na[i]) & set(nb[i])) / topk for i in range(len(a))])


def ref_hsic(k, l, unbiased):
    n = len(k)
    if unbiased:   # Song et al. 2012, eq. 5
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))
    h = np.eye(n) - 1 / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_cknna(a, b, topk, unbiased):
    n = len(a)
    (ia, k), (ib, l) = ref_neighbours(a, topk, unbiased), ref_neighbours(b, topk, unbiased)
    ma, mb = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        ma[i, ia[i]] = 1
        mb[i, ib[i]] = 1
    m = ma * mb
    return ref_hsic(m * k, m * l, unbiased) / np.sqrt(ref_hsic(ma * k, ma * k, unbiased)
                                                      * ref_hsic(mb * l, mb * l, unbiased))


def streamed(xs, ys, measure, topk, unbiased=True, tile=3, dtype=None):
    """similarity_matrix's kNN measures with a chosen tile (its default is 2048 rows)."""
    ka, kb, na, nb = K.knn_layers(xs, ys, measure=measure, topk=topk, unbiased=unbiased,
                                  dtype=dtype, max_bytes=1 << 40, progress=False, tile=tile)
    kb = ka if kb is None else kb
    if measure == "mutual_knn":
        return K.mutual_knn_pairs(ka, kb, topk)
    ca, cb = K.CknnaLayers(ka, unbiased), K.CknnaLayers(kb, unbiased)
    h, sa, sb = K.cknna_pairs(ca, cb), K.cknna_self(ca), K.cknna_self(cb)
    return h / torch.sqrt(sa[:, None] * sb[None, :])


def grid(fn, xs, ys):
    return np.array([[fn(x, y) for y in ys] for x in xs])


def tied(rng, n, d):
    """Small integers: many exactly equal inner products, and duplicated samples."""
    x = rng.integers(-1, 2, size=(n, d)).astype(np.float64)
    x[rng.integers(0, n, n // 3)] = x[rng.integers(0, n, n // 3)]
    return x


@pytest.mark.parametrize("n,tile,topk", [(4, 1, 1), (5, 1, 3), (5, 2, 4), (13, 3, 5),
                                         (40, 7, 9), (40, 40, 39), (33, 64, 6)])
def test_neighbours_vs_reference(rng, n, tile, topk):
    for x in (rng.standard_normal((n, 3)), rng.standard_normal((n, 1)), tied(rng, n, 2)):
        for exclude in (True, False):
            k = topk if exclude or topk < n else n
            got = K.neighbours([K._sources.open_rows(torch.from_numpy(x), "xs")], [1.0], k,
                               exclude, torch.float64, tile=tile, progress=False)[0]
            want, g = ref_neighbours(x, k, exclude)
            np.testing.assert_array_equal(got.idx.numpy(), want)
            np.testing.assert_allclose(got.val.numpy(), np.take_along_axis(g, want, 1),
                                       rtol=1e-13, atol=1e-13)


def test_ties_are_planted_and_lower_index_wins(rng):
    """Rows 1..5 equal: sample 0's neighbours among them are the lowest indices, whatever
    the tile; the in-memory knn_indices agrees (nearest first)."""
    x = np.zeros((12, 2))
    x[0] = [1, 0]
    x[1:6] = [1, 1]                 # five equal candidates for sample 0's top 3
    x[6:] = rng.standard_normal((6, 2)) * 1e-3
    for tile in (1, 2, 5, 12):
        got = K.neighbours([K._sources.open_rows(torch.from_numpy(x), "xs")], [1.0], 3, True,
                           torch.float64, tile=tile, progress=False)[0]
        assert got.idx[0].tolist() == [1, 2, 3], tile
    g = torch.from_numpy(x @ x.T)
    assert K.knn_indices(g, 3)[0].tolist() == [1, 2, 3]
    assert K.knn_indices(g, 3)[2].tolist() == [1, 3, 4]


@pytest.mark.parametrize("n,tile,topk", [(5, 1, 2), (23, 4, 5), (61, 16, 10), (30, 30, 29)])
def test_mutual_knn_vs_reference(rng, n, tile, topk):
    xs = [rng.standard_normal((n, 4)), tied(rng, n, 3), rng.standard_normal((n, 1))]
    ys = [rng.standard_normal((n, 6)), tied(rng, n, 2)]
    got = streamed([torch.from_numpy(x) for x in xs], [torch.from_numpy(y) for y in ys],
                   "mutual_knn", topk, tile=tile)
    np.testing.assert_allclose(got, grid(lambda a, b: ref_mutual_knn(a, b, topk), xs, ys),
                               rtol=0, atol=1e-14)


@pytest.mark.parametrize("n,tile,topk", [(5, 1, 2), (6, 4, 5), (23, 5, 7), (47, 16, 12)])
@pytest.mark.parametrize("unbiased", [True, False])
def test_cknna_vs_reference(rng, n, tile, topk, unbiased):
    xs = [rng.standard_normal((n, 5)) + 0.3, tied(rng, n, 3) + 1.0]
    ys = [np.tanh(xs[0] @ rng.standard_normal((5, 3))) + 0.2 * rng.standard_normal((n, 3)),
          tied(rng, n, 4)]
    got = streamed([torch.from_numpy(x) for x in xs], [torch.from_numpy(y) for y in ys],
                   "cknna", topk, unbiased, tile=tile)
    want = grid(lambda a, b: ref_cknna(a, b, topk, unbiased), xs, ys)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_public_route_equals_small_tiles(rng):
    """similarity_matrix (one 2048-row tile here) equals the streamed route on tiles of
    3 rows, and the float32 route picks the same neighbours where there are no near ties."""
    xs = [torch.from_numpy(rng.standard_normal((50, d))) for d in (3, 8)]
    for measure in ("mutual_knn", "cknna"):
        np.testing.assert_allclose(similarity_matrix(xs, measure=measure, topk=6),
                                   streamed(xs, None, measure, 6, tile=3), rtol=0, atol=1e-12)
    x32 = [x.float() for x in xs]
    torch.testing.assert_close(similarity_matrix(x32, measure="mutual_knn", topk=6),
                               streamed(x32, None, "mutual_knn", 6, tile=7), rtol=0, atol=0)


def test_files_equal_memory(rng, tmp_path):
    xs = {f"l{i}": rng.standard_normal((37, d)) for i, d in enumerate((2, 9, 1))}
    st.save_file({k: torch.from_numpy(v) for k, v in xs.items()}, str(tmp_path / "a.safetensors"))
    y = rng.standard_normal((37, 4))
    np.save(tmp_path / "y.npy", y)
    mem = {k: torch.from_numpy(v) for k, v in xs.items()}
    for measure in ("mutual_knn", "cknna"):
        got = similarity_matrix(str(tmp_path / "a.safetensors"), [str(tmp_path / "y.npy")],
                                measure=measure, topk=5)
        want = similarity_matrix(mem, [torch.from_numpy(y)], measure=measure, topk=5)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        ref = (ref_mutual_knn if measure == "mutual_knn" else
               lambda a, b, k: ref_cknna(a, b, k, True))
        np.testing.assert_allclose(got, grid(lambda a, b: ref(a, b, 5), xs.values(), [y]),
                                   rtol=0, atol=1e-10)


def test_nan_in_a_later_tile_is_named(rng, tmp_path):
    x = rng.standard_normal((30, 3))
    x[25, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"xs\[1\] holds non-finite values: nan at row 25"):
        similarity_matrix([rng.standard_normal((30, 2)), str(tmp_path / "x.npy")],
                          measure="mutual_knn", topk=3)


def test_memory_estimate_is_linear_in_n():
    """O(L·n·topk) (plus fixed tiles), never n²: ten times the samples, at most about ten
    times the bytes."""
    small = K.knn_bytes(100_000, 24, 10, 768, 2048, 4)
    big = K.knn_bytes(1_000_000, 24, 10, 768, 2048, 4)
    assert big < 10 * small
    assert K.knn_bytes(100_000, 24, 10, 768, 2048, 4) < 1 << 30


@pytest.mark.parametrize("dtype,log2", [(torch.float32, -136), (torch.float32, -100),
                                        (torch.float32, 100), (torch.float16, -20)])
def test_low_precision_at_extreme_scales(rng, dtype, log2):
    """Each layer is brought to max |x| in [1/2, 1) by a power of two first: layers near
    their dtype's limits (float32 · 2^-136 is subnormal) pick the neighbours of the
    unscaled float64 data."""
    x = torch.from_numpy(rng.integers(-8, 9, (40, 5)).astype(np.float64))
    scaled = (x * 2.0 ** log2).to(dtype)
    assert torch.equal(scaled.double() * 2.0 ** -log2, x)          # exact
    np.testing.assert_allclose(streamed([scaled], [x], "mutual_knn", 5, tile=7), [[1.0]],
                               rtol=0, atol=0)
    src = K._sources.open_rows(scaled, "xs")
    nb = K.neighbours([src], [K.pow2_scale(src, 7)], 5, True, torch.float32, tile=7,
                      progress=False)[0]
    np.testing.assert_array_equal(nb.idx.numpy(), ref_neighbours(x.numpy(), 5)[0])
