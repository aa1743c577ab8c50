"""The tiled route (core/tiled.py, core/tiled_median.py, measures/tiled_route.py) against
the float64 reference (tests/reference.py) and the Gram route, on every backend with tile
kernels (native, torch, Triton through its interpreter on the CPU), at awkward sizes: n not
a multiple of the tile, n = 4 and 5, d = 1, tiles of one row.

Tolerances: float64 CKA within 1e-9 of the reference (its own error is ~1e-14 except for
ill-conditioned debiased estimates at n = 4-5, scaled below); HSIC equal to the float64
Gram route's to 1e-12 relative to √(HSIC_ii·HSIC_jj); float32 within 4× the Gram route's
own float32 error against the reference, plus 8·eps(float32)·|CKA| (flash-attention's
rule).
"""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import flashcka  # noqa: E402
import reference as ref  # noqa: E402
from conftest import triton_runs  # noqa: E402
from flashcka import backends  # noqa: E402
from flashcka.backends.base import Backend  # noqa: E402
from flashcka.core import sources, tiled, tiled_median  # noqa: E402
from flashcka.core.engine import Settings, cka_from_hsic  # noqa: E402
from flashcka.measures import cka as cka_mod, tiled_route  # noqa: E402


def _tile_backends():
    out = []
    for name in ("native", "torch", "triton"):
        try:
            be = backends.get(name)
            ok, _ = be.usable()
        except ImportError:
            ok = False
        if name == "triton" and not triton_runs():
            ok = False
        if ok and type(be).kernel_tiles is not Backend.kernel_tiles:
            out.append(name)
    return out


BACKENDS = _tile_backends()
KERNELS = [("linear", None), ("rbf", None), ("rbf", 1.7)]


def _device(name):
    return "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"


def _layers(rng, n, dims, dtype, device="cpu"):
    """Correlated layers with offsets (so centring matters)."""
    z = rng.standard_normal((n, 3))
    out = []
    for d in dims:
        x = np.tanh(z @ rng.standard_normal((3, d))) + 0.5 * rng.standard_normal((n, d))
        out.append(torch.tensor(x + rng.uniform(1, 3, size=d), dtype=dtype, device=device))
    return out


def _tiled_cka(be_name, xs, ys, kernel, sigma, unbiased, dtype, tile):
    s = Settings(kernel, unbiased, sigma, 1.0)
    be = backends.get(be_name)
    sa = sources.open_layers(xs, "xs")
    sb = None if ys is None else sources.open_layers(ys, "ys")
    h, ca, cb = tiled.hsics(be, sa, sb, s, dtype, tile=tile, progress=False)
    na = [src.name for src in sa]
    nb = na if sb is None else [src.name for src in sb]
    return cka_from_hsic(h.cross, h.self_a, h.self_b, ca, cb, na, nb).cpu().numpy()


def _ref(xs, ys, kernel, sigma, unbiased):
    ys = xs if ys is None else ys
    return np.array([[ref.cka(x.double().cpu().numpy(), y.double().cpu().numpy(), kernel,
                              unbiased, sigma) for y in ys] for x in xs])


def _tol64(xs, ys, kernel, sigma, unbiased):
    """1e-9, or the reference's own sensitivity for tiny n (debiased CKA at n = 4-5 has
    self-HSICs near zero: its float64 rounding alone moves it by more)."""
    n = xs[0].shape[0]
    return 1e-9 if n > 8 else 1e-7


@pytest.mark.parametrize("be_name", BACKENDS)
@pytest.mark.parametrize("kernel,sigma", KERNELS)
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("n,tile,dims", [(37, 8, (1, 5, 12)), (4, 1, (1, 3)), (5, 2, (2, 1)),
                                         (23, 23, (4, 7)), (19, 1, (3,) * 2)])
def test_float64_matches_reference(rng, be_name, kernel, sigma, unbiased, n, tile, dims):
    if be_name == "triton" and ((tile == 1 and n > 5) or tile == n):
        pytest.skip("interpreter: slow; n = 4 covers tile=1, n = 37 several tiles")
    dev = _device(be_name)
    xs = _layers(rng, n, dims, torch.float64, dev)
    ys = _layers(rng, n, dims[::-1], torch.float64, dev)
    # (the interpreter is slow: Triton runs the two-sided case only)
    for a, b in ((xs, ys),) if be_name == "triton" else ((xs, None), (xs, ys)):
        got = _tiled_cka(be_name, a, b, kernel, sigma, unbiased, torch.float64, tile)
        want = _ref(a, b, kernel, sigma, unbiased)
        np.testing.assert_allclose(got, want, rtol=0, atol=_tol64(a, b, kernel, sigma, unbiased))


@pytest.mark.parametrize("be_name", BACKENDS)
@pytest.mark.parametrize("kernel,sigma", KERNELS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_float64_hsic_equals_gram_route(rng, be_name, kernel, sigma, unbiased):
    """The estimators themselves (HSIC in the inputs' units), not only CKA: 1e-12 relative."""
    dev = _device(be_name)
    xs = _layers(rng, 61, (1, 9, 33), torch.float64, dev)
    ys = _layers(rng, 61, (4, 2), torch.float64, dev)
    s = Settings(kernel, unbiased, sigma, 1.0)
    xa, na = xs, ["a0", "a1", "a2"]
    xb, nb = ys, ["b0", "b1"]
    gram = cka_mod._pairs(xa, na, xb, nb, s, torch.float64, "torch", "gram", want="hsic")
    got = tiled_route.run(dict(zip(na, xa)), dict(zip(nb, xb)), s, torch.float64, be_name,
                          "hsic", progress=False, tile=16)
    sa = torch.tensor([float(cka_mod._pairs([x], ["x"], None, None, s, torch.float64, "torch",
                                            "gram", want="hsic")[0, 0]) for x in xa])
    sb = torch.tensor([float(cka_mod._pairs([y], ["y"], None, None, s, torch.float64, "torch",
                                            "gram", want="hsic")[0, 0]) for y in xb])
    scale = torch.sqrt(sa.abs()[:, None] * sb.abs()[None, :])
    rel = ((got.cpu() - gram.cpu()).abs() / scale).max().item()
    assert rel < 1e-12, rel


@pytest.mark.parametrize("be_name", BACKENDS)
@pytest.mark.parametrize("kernel,sigma", KERNELS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_float32_within_gram_route_error(rng, be_name, kernel, sigma, unbiased):
    dev = _device(be_name)
    n = 150 if be_name == "triton" else 301
    xs = _layers(rng, n, (1, 6, 40), torch.float32, dev)
    want = _ref(xs, None, kernel, sigma, unbiased)
    gram_be = be_name if be_name != "triton" or dev == "cuda" else "torch"
    gram = flashcka.cka_matrix(xs, kernel=kernel, sigma=sigma, unbiased=unbiased,
                               route="gram", backend=gram_be).cpu().numpy()
    got = _tiled_cka(be_name, xs, None, kernel, sigma, unbiased, torch.float32, 64)
    gram_err = np.abs(gram - want).max()
    err = np.abs(got - want).max()
    assert err <= 4 * gram_err + 8 * np.finfo(np.float32).eps * np.abs(want).max(), \
        (err, gram_err)


@pytest.mark.parametrize("be_name", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,tile", [(4, 1), (5, 3), (40, 7), (64, 64)])
def test_median_is_exact(rng, monkeypatch, be_name, dtype, n, tile):
    """Streamed selection gives exactly median_sq_distance of the distances the tiles hold
    (the n zeros of the diagonal included), with ties (repeated rows); float64 through both
    of its paths (collect at once, and 16 bits a pass down to the last bits). Those
    distances are sq_distances' of the full Gram up to rounding (a GEMM's sums depend on
    its blocking)."""
    from flashcka.backends.torch_backend import median_sq_distance, sq_distances
    x = torch.tensor(rng.standard_normal((n, 3)), dtype=dtype)
    x[n // 2:n // 2 + 2] = x[0]                     # ties: repeated samples
    xs = [x, x[:, :1].clone() * 1e3]
    layers = [tiled.prepare(sources.open_rows(v, "xs", f"xs[{i}]"), dtype)
              for i, v in enumerate(xs)]
    for collect in ([tiled_median.COLLECT, 0] if dtype == torch.float64 else [0]):
        monkeypatch.setattr(tiled_median, "COLLECT", collect)
        med, _ = tiled_median.medians(backends.get(be_name), layers, n, dtype, tile,
                                      tiled._bar(False, 0), tiled.sweep)
        full = torch.zeros(len(layers), n, n, dtype=dtype)   # D as the tiles make it
        be = backends.get(be_name)

        def put(i0, i1, j0, j1, t):
            full[:, i0:i1, j0:j1] = t
        tiled.sweep(be, layers, n, dtype, tile, "dist", put, tiled._bar(False, 0))
        for i, ly in enumerate(layers):
            assert med[i].item() == median_sq_distance(full[i]).item()
        xc = [ly.block(0, n, dtype) for ly in layers]   # one tile: D of the full Gram
        be.kernel_tiles(xc, None, full, kernel="dist", two_s2=None, shift=None,
                        unbiased=True, dims=[3, 1])
        for i in range(len(layers)):
            want = sq_distances(xc[i] @ xc[i].T, xc[i].shape[1])
            assert torch.allclose(full[i], want, rtol=8 * torch.finfo(dtype).eps,
                                  atol=8 * torch.finfo(dtype).eps * float(want.max()))


def test_median_passes(rng):
    """float32: the bits in two passes; float64 with few candidates: two passes too."""
    calls = []

    def counting(*a, **k):
        calls.append(a[5])
        return tiled.sweep(*a, **k)
    for dtype in (torch.float32, torch.float64):
        calls.clear()
        x = torch.tensor(rng.standard_normal((50, 4)), dtype=dtype)
        layers = [tiled.prepare(sources.open_rows(x, "x"), dtype)]
        tiled_median.medians(backends.get("torch"), layers, 50, dtype, 16,
                             tiled._bar(False, 0), counting)
        assert calls == ["dist", "dist"]


def test_route_auto_takes_tiled_over_the_memory_budget(rng, monkeypatch):
    xs = _layers(rng, 40, (3, 5), torch.float64)
    seen = []
    real = tiled.hsics
    monkeypatch.setattr(tiled, "hsics", lambda *a, **k: seen.append(1) or real(*a, **k))
    big = flashcka.cka_matrix(xs, kernel="rbf", max_memory=10 ** 12)
    assert not seen
    small = flashcka.cka_matrix(xs, kernel="rbf", max_memory=1000)
    assert seen
    np.testing.assert_allclose(small.numpy(), big.numpy(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="max_memory must be"):
        flashcka.cka_matrix(xs, max_memory=-1)


def test_files_and_memmaps(rng, tmp_path):
    xs = _layers(rng, 33, (4, 6), torch.float32)
    paths = []
    for i, x in enumerate(xs):
        p = tmp_path / f"l{i}.npy"
        np.save(p, x.numpy())
        paths.append(str(p))
    mm = np.load(paths[1], mmap_mode="r")
    want = flashcka.cka_matrix(xs, route="tiled")
    got = flashcka.cka_matrix([paths[0], mm])       # route auto: not in memory -> tiled
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["a"] = xs[0].numpy()
    with h5py.File(tmp_path / "f.h5", "r") as f:
        got = flashcka.cka_matrix([f["a"], xs[1]], kernel="rbf", unbiased=False)
    want = flashcka.cka_matrix(xs, kernel="rbf", unbiased=False, route="gram")
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)


def test_errors_name_the_layer(rng):
    xs = _layers(rng, 20, (3, 3), torch.float32)
    xs[1][7, 2] = float("nan")
    with pytest.raises(ValueError, match=r"xs\[1\].*row 7"):
        flashcka.cka_matrix(xs, route="tiled")
    x = torch.zeros(20, 2)
    x[0] = 1.0                                      # 19 equal rows: median distance 0
    with pytest.raises(ValueError, match=r"xs\[0\]: the median heuristic gives sigma = 0"):
        flashcka.cka_matrix([x, xs[0]], kernel="rbf", route="tiled")
    with pytest.raises(ValueError, match="n = 3 samples"):
        flashcka.cka_matrix([torch.randn(3, 2)], route="tiled")
    w = torch.randn(10, 2, requires_grad=True)
    with pytest.raises(ValueError, match="route='tiled' returns detached"):
        flashcka.cka_matrix([w], route="tiled")


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_constant_layer_is_nan_with_a_warning(rng, kernel):
    xs = _layers(rng, 30, (3,), torch.float64) + [torch.full((30, 4), 2.5, dtype=torch.float64)]
    with pytest.warns(flashcka.FlashCKAWarning, match=r"undefined for xs\[1\]"):
        got = flashcka.cka_matrix(xs, kernel=kernel, route="tiled")
    assert torch.isnan(got[1]).all() and torch.isnan(got[:, 1]).all()
    assert abs(got[0, 0].item() - 1.0) < 1e-12


def test_scale_invariance_float32(rng):
    """Inputs at 1e±20 in float32: the same CKA (power-of-two scales, exponents apart)."""
    xs = _layers(rng, 50, (4, 7), torch.float32)
    want = flashcka.cka_matrix(xs, route="tiled").numpy()
    for f in (1e-20, 1e20):
        got = flashcka.cka_matrix([x * f for x in xs], route="tiled").numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


_ISA_CHECK = """
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
import reference as ref
from flashcka import backends
from flashcka.core import sources, tiled
from flashcka.core.engine import Settings, cka_from_hsic
rng = np.random.default_rng({seed})
xs = [torch.tensor(rng.standard_normal((37, d)) + 2.0) for d in (1, 5, 20)]
worst = 0.0
for kernel, sigma in (("linear", None), ("rbf", None), ("rbf", 1.5)):
    for unbiased in (True, False):
        s = Settings(kernel, unbiased, sigma, 1.0)
        h, ca, cb = tiled.hsics(backends.get("native"), sources.open_layers(xs, "xs"), None,
                                s, torch.float64, tile=8, progress=False)
        names = ["a", "b", "c"]
        got = cka_from_hsic(h.cross, h.self_a, h.self_b, ca, cb, names, names).numpy()
        want = np.array([[ref.cka(x.numpy(), y.numpy(), kernel, unbiased, sigma)
                          for y in xs] for x in xs])
        worst = max(worst, float(np.abs(got - want).max()))
print(backends.native._load().simd_isa, worst)
"""


@pytest.mark.parametrize("simd", ["avx512", "avx2", "0"])
def test_native_tiles_on_every_kernel_set(rng, simd):
    """The native tile kernel on each instruction set this CPU runs (and OpenBLAS), each in
    a process of its own (the set is chosen once a process)."""
    import subprocess
    import sys
    if "native" not in BACKENDS:
        pytest.skip("no native backend")
    from flashcka.backends.native import _load
    if simd not in _load().simd_supported:
        pytest.skip(f"this CPU cannot run {simd}")
    code = _ISA_CHECK.format(tests=os.path.dirname(__file__), seed=int(rng.integers(2 ** 31)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, FLASHCKA_SIMD=simd), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    isa, worst = out.stdout.split()
    assert isa == simd and float(worst) < 1e-9, out.stdout


def test_plan(rng, tmp_path):
    """plan: the route cka_matrix takes, per-route memory/flops/time from shapes alone."""
    xs = _layers(rng, 300, (8, 20), torch.float32)
    p = flashcka.plan(xs, kernel="rbf", max_memory=1000)
    assert p.route == "tiled" and p.n == 300 and p.layers == (2, 2)
    assert p.routes["tiled"].passes == 3 and p.routes["gram"].passes == 1
    assert p.routes["tiled"].memory < p.routes["gram"].memory
    assert p.routes["gram"].flops == 300 * 300 * 28 + 4 * 300 * 300
    assert flashcka.plan(xs, kernel="rbf", max_memory=10 ** 12).route == "gram"
    assert flashcka.plan(xs, kernel="rbf", sigma=1.0).routes["tiled"].passes == 1
    assert "<- auto" in str(p) and p.gflops > 0
    path = tmp_path / "x.npy"
    np.save(path, xs[0].numpy())
    assert flashcka.plan([str(path), xs[1]]).route == "tiled"


def test_progress_bar(rng, capsys):
    xs = _layers(rng, 40, (3,), torch.float32)
    tiled_route.run(xs, None, Settings("rbf", True, None, 1.0), None, "auto",
                    progress=True, tile=16)
    err = capsys.readouterr().err
    assert "flashcka tiles" in err and "18/18" in err    # 6 tile pairs × 3 passes
    flashcka.cka_matrix(xs, route="tiled", progress=False)
    assert "flashcka tiles" not in capsys.readouterr().err
