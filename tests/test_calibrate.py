"""Permutation nulls and bootstrap intervals (core/calibrate.py, core/bootstrap.py) against
float64 numpy references that permute or resample the raw data and build a new Gram each
time (tests/reference.py), at awkward sizes."""
import numpy as np
import pytest
import scipy.stats
import torch

import flashcka
import reference as ref
from flashcka.core import bootstrap as _boot
from flashcka.core.calibrate import (PermutationNull, benjamini_hochberg, permutation_seed,
                                     permutations)

BACKENDS = ["torch"] + (["native"] if flashcka.backends.get("native").usable()[0] else [])


def _layers(rng, n, dims, dtype=torch.float64):
    return [torch.tensor(rng.standard_normal((n, d)) + rng.uniform(-3, 3, d), dtype=dtype)
            for d in dims]


def _ref_null(xs, ys, perms, unbiased, kernel="linear"):
    """(P, L_A, L_B): CKA of the raw data with ys's samples permuted, a new Gram each."""
    return np.stack([[[ref.cka(x.numpy(), y.numpy()[p], kernel, unbiased) for y in ys]
                      for x in xs] for p in perms.numpy()])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("n,kernel", [(5, "linear"), (37, "linear"), (23, "rbf")])
def test_null_equals_explicit_permutations(rng, backend, unbiased, n, kernel):
    xs = _layers(rng, n, [3, 1, 7])
    ys = [xs[0] @ torch.tensor(rng.standard_normal((3, 4))) + torch.tensor(
        rng.standard_normal((n, 4))), *_layers(rng, n, [2])]
    P, seed = 9, int(rng.integers(1000))
    r = flashcka.permutation_test(xs, ys, num_permutations=P, seed=seed, kernel=kernel,
                                  unbiased=unbiased, backend=backend)
    null = _ref_null(xs, ys, permutations(seed, 0, range(P), n), unbiased, kernel)
    obs = np.array([[ref.cka(x.numpy(), y.numpy(), kernel, unbiased) for y in ys] for x in xs])
    np.testing.assert_allclose(r.null.numpy(), null, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.observed.numpy(), obs, rtol=0, atol=1e-10)
    tie = 64 * np.finfo(np.float64).eps * np.maximum(1, np.abs(obs))
    exceed = (null >= (obs - tie)[None]).sum(0)
    np.testing.assert_array_equal(r.pvalue.numpy(), (1 + exceed) / (1 + P))
    np.testing.assert_allclose(r.null_mean.numpy(), null.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.null_std.numpy(), null.std(0, ddof=1), rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.calibrated.numpy(), obs - null.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.zscore.numpy(), (obs - null.mean(0)) / null.std(0, ddof=1),
                               rtol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_null_within_float32_error(rng, backend):
    n = 97
    xs, ys = _layers(rng, n, [5, 64], torch.float32), _layers(rng, n, [3, 1000], torch.float32)
    r = flashcka.permutation_test(xs, ys, num_permutations=5, seed=1, backend=backend)
    null = _ref_null(xs, ys, permutations(1, 0, range(5), n), True)
    np.testing.assert_allclose(r.null.numpy(), null, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_minibatch_null_permutes_within_batches(rng, backend, unbiased):
    n, bs, P, seed = 45, 16, 6, 11          # batches of 16, 16, 13
    xs, ys = _layers(rng, n, [3, 6]), _layers(rng, n, [4, 2, 5])
    r = flashcka.permutation_test(xs, ys, num_permutations=P, seed=seed, batch_size=bs,
                                  unbiased=unbiased, backend=backend)
    spans = [(0, 16), (16, 32), (32, 45)]
    for k in range(P):
        bx = [[x.numpy()[lo:hi] for x in xs] for lo, hi in spans]
        by = [[y.numpy()[lo:hi][permutations(seed, b, [k], hi - lo)[0].numpy()] for y in ys]
              for b, (lo, hi) in enumerate(spans)]
        np.testing.assert_allclose(r.null[k].numpy(), ref.minibatch_cka(bx, by, unbiased=unbiased),
                                   rtol=0, atol=1e-10)
    bx = [[x.numpy()[lo:hi] for x in xs] for lo, hi in spans]
    by = [[y.numpy()[lo:hi] for y in ys] for lo, hi in spans]
    np.testing.assert_allclose(r.observed.numpy(), ref.minibatch_cka(bx, by, unbiased=unbiased),
                               rtol=0, atol=1e-10)


def test_one_model_against_itself(rng):
    xs = _layers(rng, 30, [4, 9, 2])
    r = flashcka.permutation_test(xs, num_permutations=8, seed=2)
    np.testing.assert_allclose(r.null.numpy(),
                               _ref_null(xs, xs, permutations(2, 0, range(8), 30), True),
                               rtol=0, atol=1e-10)
    assert bool((r.pvalue.diagonal() == 1 / 9).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_independent_of_how_permutations_are_grouped(rng, backend):
    xs, ys = _layers(rng, 29, [3, 5], torch.float32), _layers(rng, 29, [2], torch.float32)
    be = flashcka.backends.select(backend, xs[0])
    s = flashcka.core.engine.Settings()
    ra = flashcka.core.engine.gram_rows(be, xs, ["a", "b"], 29, torch.float32, s)
    rb = flashcka.core.engine.gram_rows(be, ys, ["c"], 29, torch.float32, s)
    nulls = []
    for chunk in (1, 7, 64):
        acc = PermutationNull(20, 5, False, True, chunk=chunk)
        acc.add_rows(be, ra, rb, 29)
        nulls.append(acc.null)
    assert torch.equal(nulls[0], nulls[1]) and torch.equal(nulls[0], nulls[2])
    short = PermutationNull(8, 5, False, True)
    short.add_rows(be, ra, rb, 29)
    assert torch.equal(short.null, nulls[0][:8])      # permutation k is the same for any P


def test_permutations_are_seeded_and_distinct():
    a = permutations(3, 0, range(50), 17)
    assert torch.equal(a, permutations(3, 0, range(50), 17))
    assert torch.equal(a[10:20], permutations(3, 0, range(10, 20), 17))
    assert not torch.equal(a, permutations(4, 0, range(50), 17))
    assert not torch.equal(a, permutations(3, 1, range(50), 17))
    assert bool((a.sort(1).values == torch.arange(17)).all())
    assert len({tuple(p.tolist()) for p in a}) == 50
    assert len({permutation_seed(s, b, k) for s in range(3) for b in range(3)
                for k in range(3)}) == 27


def test_pvalues_uniform_under_the_null():
    """Independent random layers: p-values of 200 independent tests pass Kolmogorov–Smirnov
    against U(0, 1) at the 1% level (fixed seed; p-values on a grid of 1/100)."""
    g = np.random.default_rng(20261204)
    pv = []
    for t in range(200):
        x = torch.tensor(g.standard_normal((24, 6)))
        y = torch.tensor(g.standard_normal((24, 3)))
        pv.append(float(flashcka.permutation_test(x, y, num_permutations=99, seed=t).pvalue))
    assert scipy.stats.kstest(pv, "uniform").pvalue > 0.01


def test_planted_dependence_detected(rng):
    n = 64
    x = torch.tensor(rng.standard_normal((n, 20)))
    y = 0.3 * x[:, :5] @ torch.tensor(rng.standard_normal((5, 8))) + torch.tensor(
        rng.standard_normal((n, 8)))
    noise = torch.tensor(rng.standard_normal((n, 8)))
    r = flashcka.permutation_test([x], [y, noise], num_permutations=999, seed=0)
    assert float(r.pvalue[0, 0]) < 0.01
    assert float(r.zscore[0, 0]) > 3


def test_zero_variance_layer_is_nan_with_a_warning(rng):
    xs = [torch.ones(12, 3), torch.tensor(rng.standard_normal((12, 3)))]
    with pytest.warns(flashcka.FlashCKAWarning, match="xs\\[0\\]"):
        r = flashcka.permutation_test(xs, [torch.tensor(rng.standard_normal((12, 2)))],
                                      num_permutations=5)
    assert bool(torch.isnan(r.pvalue[0]).all()) and bool(torch.isfinite(r.pvalue[1]).all())
    assert not bool(benjamini_hochberg(r.pvalue)[0].any())


@pytest.mark.parametrize("kwargs,match", [
    ({"num_permutations": 0}, "num_permutations"),
    ({"seed": -1}, "seed"),
    ({"batch_size": 3}, "batch_size"),
    ({"batch_size": 9}, "last batch of 2"),
])
def test_bad_arguments_raise_naming_them(rng, kwargs, match):
    x = torch.tensor(rng.standard_normal((20, 3)))
    with pytest.raises(ValueError, match=match):
        flashcka.permutation_test(x, x, **kwargs)


def test_mismatched_samples_raise(rng):
    with pytest.raises(ValueError, match="ys"):
        flashcka.permutation_test(torch.zeros(10, 2) + torch.arange(10.)[:, None],
                                  torch.ones(11, 2), num_permutations=3)


def test_benjamini_hochberg_matches_scipy(rng):
    p = torch.tensor(rng.uniform(0, 0.2, size=(7, 9)))
    p[2, 3] = float("nan")
    for level in (0.01, 0.05, 0.2):
        mine = benjamini_hochberg(p, level)
        ok = ~torch.isnan(p)
        adj = scipy.stats.false_discovery_control(p[ok].numpy(), method="bh")
        assert torch.equal(mine[ok], torch.tensor(adj <= level))
        assert not bool(mine[~ok].any())
    with pytest.raises(ValueError, match="level"):
        benjamini_hochberg(p, 1.5)


# ---------------------------------------------------------------- bootstrap

def _ref_boot_cka(xs, ys, idx, unbiased):
    """CKA of resample idx (float64 numpy): biased, the resampled data itself; unbiased,
    the full sample's U-centered Gram resampled, duplicated pairs zeroed, U-centered again
    (core/bootstrap.py's definition)."""
    def c(x):
        x = ref.as2d(x.numpy())
        if not unbiased:
            return ref.center_biased(ref.gram_linear(x[idx]))
        u = ref.center_unbiased_fast(ref.gram_linear(x))[np.ix_(idx, idx)].copy()
        u[idx[:, None] == idx[None, :]] = 0.0
        return ref.center_unbiased_fast(u)
    ca, cb = [c(x) for x in xs], [c(y) for y in ys]
    return np.array([[np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)) for b in cb]
                     for a in ca])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_bootstrap_replicates_equal_direct_resampling(rng, backend, unbiased):
    n = 19
    xs, ys = _layers(rng, n, [3, 8]), _layers(rng, n, [1, 5])
    R, seed = 6, int(rng.integers(100))
    r = flashcka.bootstrap_interval(xs, ys, num_resamples=R, seed=seed, unbiased=unbiased,
                                    method="percentile", backend=backend)
    g = torch.Generator()
    for k in range(R):
        g.manual_seed(permutation_seed(seed, _boot._STREAM, k))
        idx = torch.randint(n, (n,), generator=g).numpy()
        np.testing.assert_allclose(r.replicates[k].numpy(), _ref_boot_cka(xs, ys, idx, unbiased),
                                   rtol=0, atol=1e-10)
    lo, hi = np.percentile(r.replicates.numpy(), [2.5, 97.5], axis=0)
    np.testing.assert_allclose(r.low.numpy(), lo, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.high.numpy(), hi, rtol=0, atol=1e-12)


def test_bca_interval_from_efron(rng):
    n = 26
    xs, ys = _layers(rng, n, [4]), [_layers(rng, n, [4])[0] + 0.5 * _layers(rng, n, [4])[0]]
    xs2 = [xs[0]]
    ys2 = [ys[0] + xs[0]]
    r = flashcka.bootstrap_interval(xs2, ys2, num_resamples=300, seed=3, level=0.9)
    theta = float(r.observed)
    reps = r.replicates[:, 0, 0].numpy()
    loo = np.array([ref.cka(np.delete(xs2[0].numpy(), i, 0), np.delete(ys2[0].numpy(), i, 0))
                    for i in range(n)])
    nd = scipy.stats.norm
    z0 = nd.ppf(np.clip(np.mean(reps < theta), 0.5 / 300, 1 - 0.5 / 300))
    d = loo.mean() - loo
    a = np.sum(d ** 3) / (6 * np.sum(d ** 2) ** 1.5)
    lv = [nd.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in nd.ppf([0.05, 0.95])]
    lo, hi = (np.quantile(reps, q) for q in lv)
    assert float(r.low) == pytest.approx(lo, abs=1e-10)
    assert float(r.high) == pytest.approx(hi, abs=1e-10)
    assert float(r.low) < theta < float(r.high)


def test_bootstrap_bad_arguments(rng):
    x = torch.tensor(rng.standard_normal((10, 3)))
    for kwargs, match in (({"num_resamples": 1}, "num_resamples"), ({"method": "basic"}, "method"),
                          ({"level": 1.0}, "level")):
        with pytest.raises(ValueError, match=match):
            flashcka.bootstrap_interval(x, x, **kwargs)


# ---------------------------------------------------------------- CKAResult

def _calibrated_result(rng, tmp_path=None):
    n = 40
    xs = {f"a.{i}": torch.tensor(rng.standard_normal((n, 6))) for i in range(3)}
    ys = {"b.0": xs["a.1"] @ torch.tensor(rng.standard_normal((6, 4))),
          "b.1": torch.tensor(rng.standard_normal((n, 5)))}
    plain = flashcka.CKAResult(flashcka.cka_matrix(xs, ys), list(xs), list(ys),
                               {"kernel": "linear", "unbiased": True}, num_samples=n,
                               num_batches=1)
    return plain, xs, ys


def test_result_calibrate_and_round_trip(rng, tmp_path):
    plain, xs, ys = _calibrated_result(rng)
    r = plain.calibrate(xs, ys, num_permutations=49, bootstrap=20, seed=4, method="percentile")
    direct = flashcka.permutation_test(xs, ys, num_permutations=49, seed=4)
    assert torch.equal(r.pvalue, direct.pvalue) and torch.equal(r.null_mean, direct.null_mean)
    assert torch.equal(r.calibrated, plain.matrix - direct.null_mean)
    boot = flashcka.bootstrap_interval(xs, ys, num_resamples=20, seed=4, method="percentile")
    assert torch.equal(r.ci_low, boot.low) and torch.equal(r.ci_high, boot.high)
    assert r.settings["permutations"]["num_permutations"] == 49
    assert r.settings["bootstrap"] == {"num_resamples": 20, "seed": 4, "level": 0.95,
                                       "method": "percentile"}
    assert plain.pvalue is None and plain.to_dict()["version"] == 1
    assert r.to_dict()["version"] == 2
    for suffix in (".json", ".npz"):
        back = flashcka.load_result(r.save(tmp_path / f"r{suffix}"))
        assert back == r and back != plain
        assert torch.equal(back.zscore.nan_to_num(), r.zscore.nan_to_num())


def test_result_calibrate_refuses_other_data(rng):
    plain, xs, ys = _calibrated_result(rng)
    other = {k: torch.tensor(rng.standard_normal(tuple(v.shape))) for k, v in xs.items()}
    with pytest.raises(ValueError, match="different CKA matrix"):
        plain.calibrate(other, ys, num_permutations=5)
    with pytest.raises(ValueError, match="missing"):
        plain.calibrate({"a.0": xs["a.0"]}, ys, num_permutations=5)


def test_result_refuses_half_a_calibration(rng):
    plain, _, _ = _calibrated_result(rng)
    with pytest.raises(ValueError, match="null_mean, null_std"):
        flashcka.CKAResult(plain.matrix, plain.names_a, plain.names_b, pvalue=plain.matrix)
    d = plain.to_dict()
    d["version"] = 3
    with pytest.raises(ValueError, match="version 3"):
        flashcka.CKAResult.from_dict(d)


def test_heatmap_marks_non_significant_pairs(rng, tmp_path):
    plain, xs, ys = _calibrated_result(rng)
    with pytest.raises(ValueError, match="permutation p-values"):
        plain.plot(tmp_path / "x.png", calibrated=True)
    r = plain.calibrate(xs, ys, num_permutations=299)
    keep = benjamini_hochberg(r.pvalue, 0.05)
    assert bool(keep[1, 0]) and not bool(keep.all())
    import matplotlib.figure
    seen = {}
    orig = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen["axes"] = fig.axes
        return orig(fig, *a, **k)
    matplotlib.figure.Figure.savefig = spy
    try:
        r.plot(tmp_path / "c.png", calibrated=True)
    finally:
        matplotlib.figure.Figure.savefig = orig
    heat = [ax for ax in seen["axes"] if ax.patches]
    assert len(heat) == 2                                  # CKA and calibrated panels
    assert all(len(ax.patches) == int((~keep).sum()) for ax in heat)
    legend = heat[0].get_legend().get_texts()[0].get_text()
    assert "Benjamini–Hochberg FDR 0.05 over all 6 pairs" in legend and "299 permutations" in legend
    r.plot(tmp_path / "none.png", significance=False)


# ---------------------------------------------------------------- compare and the CLI

def _two_models():
    from torch import nn
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    b = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
    return a, b


def test_compare_permutations_equal_the_tensor_function(rng):
    a, b = _two_models()
    xs = torch.tensor(rng.standard_normal((3 * 29, 6)), dtype=torch.float32)
    loader = [(xs[k * 29:(k + 1) * 29],) for k in range(3)]
    r = flashcka.compare(a, b, loader, layers_a=["0", "2"], layers_b=["0", "1"],
                         permutations=40, seed=6, progress=False)
    with torch.no_grad():
        acts_a = [a[0](xs), a[2](a[1](a[0](xs)))]
        acts_b = [b[0](xs), b[1](b[0](xs))]
    p = flashcka.permutation_test(acts_a, acts_b, num_permutations=40, seed=6, batch_size=29)
    np.testing.assert_allclose(r.matrix.numpy(), p.observed.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.null_mean.numpy(), p.null_mean.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.null_std.numpy(), p.null_std.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.pvalue.numpy(), p.pvalue.numpy(), rtol=0, atol=1.01 / 41)
    assert r.settings["permutations"]["num_permutations"] == 40 and r.ci_low is None


def test_compare_bootstrap_needs_one_batch(rng):
    a, b = _two_models()
    xs = torch.tensor(rng.standard_normal((40, 6)), dtype=torch.float32)
    r = flashcka.compare(a, b, [(xs,)], layers_a=["0"], layers_b=["1"], bootstrap=30,
                         seed=2, progress=False)
    with torch.no_grad():
        direct = flashcka.bootstrap_interval([a[0](xs)], [b[1](b[0](xs))], num_resamples=30,
                                             seed=2)
    np.testing.assert_allclose(r.ci_low.numpy(), direct.low.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.ci_high.numpy(), direct.high.numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one batch"):    # a loader with a length
        flashcka.compare(a, b, [(xs[:20],), (xs[20:],)], layers_a=["0"], layers_b=["1"],
                         bootstrap=30, progress=False)
    with pytest.raises(ValueError, match="one batch"):    # found at the second batch
        flashcka.compare(a, b, iter([(xs[:20],), (xs[20:],)]), layers_a=["0"],
                         layers_b=["1"], bootstrap=30, progress=False)
    with pytest.raises(ValueError, match="checkpoint"):
        flashcka.compare(a, b, [(xs,)], layers_a=["0"], permutations=5, progress=False,
                         checkpoint="never-written.ckpt")


def test_cli_permutations_and_bootstrap(tmp_path, monkeypatch, capsys):
    from flashcka.cli.main import main
    (tmp_path / "cal_factories.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def model_a():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))\n"
        "def data():\n    g = torch.Generator().manual_seed(2)\n"
        "    return [(torch.randn(48, 6, generator=g), torch.zeros(48)) for _ in range(2)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["compare", "--model-a", "cal_factories:model_a", "--data", "cal_factories:data",
            "--no-progress"]
    assert main(base + ["--permutations", "30", "--plot-calibrated",
                        "--out", str(tmp_path / "p")]) == 0
    r = flashcka.load_result(tmp_path / "p" / "cka.json")
    assert r.pvalue is not None and r.settings["permutations"]["num_permutations"] == 30
    assert "30 permutations" in capsys.readouterr().out
    assert (tmp_path / "p" / "cka.png").read_bytes()[:4] == b"\x89PNG"
    assert main(base + ["--bootstrap", "20", "--max-batches", "1",
                        "--out", str(tmp_path / "b")]) == 0
    assert flashcka.load_result(tmp_path / "b" / "cka.json").ci_low is not None
    with pytest.raises(SystemExit, match="one batch"):
        main(base + ["--bootstrap", "20", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="--plot-calibrated needs --permutations"):
        main(base + ["--plot-calibrated", "--out", str(tmp_path / "d")])


WORKER = """
    from dist_models import net, loader
    from flashcka import compare
    batches = loader()
    if args[0] == "shard":
        r = compare(net(0), net(1), batches, shard=True, progress=False, permutations=30, seed=5)
    else:
        r = compare(net(0), net(1), batches[rank::world], progress=False, permutations=30,
                    seed=5)
    r.save(out)
"""


@pytest.mark.parametrize("mode", ["shard", "preshard"])
def test_two_ranks_permutations_equal_one_process(tmp_path, mode):
    from ranks import run_two_ranks
    from test_compare_distributed import _load_models
    m = _load_models(tmp_path)
    want = flashcka.compare(m.net(0), m.net(1), m.loader(), progress=False, permutations=30,
                            seed=5)
    for path in run_two_ranks(tmp_path, WORKER, mode):
        got = flashcka.load_result(path)
        assert got.num_batches == 5
        for k in ("matrix", "null_mean", "null_std"):
            np.testing.assert_allclose(getattr(got, k).numpy(), getattr(want, k).numpy(),
                                       rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got.pvalue.numpy(), want.pvalue.numpy())
