"""Bad input gets a clear error that names the argument, the layer and the value (§6)."""
import pytest
import torch

import flashcka
import reference as ref


def x_(n=10, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_different_n_names_both():
    with pytest.raises(ValueError, match=r"ys\[1\] has 9 samples but xs\[0\] has 10"):
        flashcka.cka_matrix([x_()], [x_(), x_(9)])


def test_n_below_4_unbiased():
    with pytest.raises(ValueError, match=r"n = 3.*n >= 4.*unbiased=False"):
        flashcka.cka(x_(3), x_(3))
    assert torch.isfinite(flashcka.cka(x_(3), x_(3, seed=1), unbiased=False))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_names_the_layer(bad):
    y = x_()
    y[4, 2] = bad
    with pytest.raises(ValueError, match=r"block3 holds non-finite values.*\(4, 2\)"):
        flashcka.cka_matrix({"block1": x_(), "block3": y})
    with pytest.raises(ValueError, match=r"y holds non-finite"):
        flashcka.cka(x_(), y)


@pytest.mark.parametrize("scale", [1e25, 1e-25, 1e30, 1e-30])
def test_float32_at_any_representable_scale_is_not_an_error(scale):
    """Issue 9 item 3: CKA is scale-invariant, so a float32 input that float32 holds gives
    the float64 answer (this morning: "overflows" at 1e25, NaN "zero variance" at 1e-25)."""
    x, y = x_(seed=3).double(), x_(seed=4).double() + x_(seed=3).double()
    want = ref.cka(x.numpy(), y.numpy())
    for route in ("gram", "feature"):
        got = flashcka.cka_matrix([(x * scale).float()], [y.float()], route=route)
        assert abs(got.item() - want) < 1e-5, (route, got.item(), want)
    with pytest.raises(ValueError, match=r"x holds non-finite"):   # what is not held: inf
        flashcka.cka((x * 1e300).float(), y.float())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_integer_and_complex_dtypes(dtype):
    with pytest.raises(TypeError, match=rf"xs\[0\] has dtype {dtype}"):
        flashcka.cka_matrix([x_().to(dtype)])


def test_empty_inputs():
    with pytest.raises(ValueError, match="xs is empty"):
        flashcka.cka_matrix([])
    with pytest.raises(ValueError, match=r"x is empty.*\(10, 0\)"):
        flashcka.cka(torch.empty(10, 0), x_())
    with pytest.raises(TypeError, match=r"xs\[0\] must be a torch.Tensor, got list$"):
        flashcka.cka_matrix([[0.0] * 10])


def test_bad_settings():
    with pytest.raises(ValueError, match="kernel must be one of"):
        flashcka.cka(x_(), x_(), kernel="poly")
    with pytest.raises(ValueError, match="sigma must be a positive"):
        flashcka.cka(x_(), x_(), kernel="rbf", sigma=0.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        flashcka.cka(x_(), x_(), backend="cuda")
    with pytest.raises(ValueError, match="dtype must be"):
        flashcka.cka(x_(), x_(), dtype=torch.float16)
    with pytest.raises(ValueError, match="route must be"):
        flashcka.cka_matrix([x_()], route="fast")


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("offset", [0.0, 123.456])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_variance_gives_nan_and_names_layer(kernel, offset, dtype):
    const = torch.full((12, 5), offset, dtype=dtype)
    ok2 = x_(12, seed=1).to(dtype) + x_(12).to(dtype) ** 2
    xs = {"ok": x_(12).to(dtype), "dead_relu": const, "ok2": ok2}
    with pytest.warns(flashcka.FlashCKAWarning, match="dead_relu"):
        m = flashcka.cka_matrix(xs, kernel=kernel)
    assert torch.isnan(m[1]).all() and torch.isnan(m[:, 1]).all()
    # the defined entries are still the estimator's (not a diagonal that is 1 for any estimator)
    want = ref.cka(xs["ok"].double().numpy(), ok2.double().numpy(), kernel)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert abs(m[0, 2].item() - want) <= tol and abs(m[2, 0].item() - want) <= tol


def test_rbf_median_zero_is_explained():
    x = torch.zeros(10, 2)
    x[0], x[1] = 1.0, -2.0  # most pairwise distances are zero, but the data is not constant
    with pytest.raises(ValueError, match=r"x: the median heuristic gives sigma = 0"):
        flashcka.cka(x, x_(), kernel="rbf")
    assert torch.isfinite(flashcka.cka(x, x_(), kernel="rbf", sigma=1.0))


def test_minibatch_argument_errors():
    m = flashcka.MinibatchCKA(2, 1)
    with pytest.raises(ValueError, match="xs has 1 representations; this MinibatchCKA was made "
                                         "for 2"):
        m.update([x_()], [x_()])
    with pytest.raises(ValueError, match="ys is missing"):
        m.update([x_(), x_()])
    with pytest.raises(RuntimeError, match="before any update"):
        m.compute()
    with pytest.raises(ValueError, match="num_layers_a must be a positive int"):
        flashcka.MinibatchCKA(0)


def test_meta_and_sparse_inputs_are_named():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="x is a meta tensor"):
        flashcka.cka(x.to("meta"), x)
    with pytest.raises(ValueError, match=r"xs\[0\] is a meta tensor"):
        flashcka.MinibatchCKA(1).update([x.to("meta")])
    with pytest.raises(TypeError, match=r"x is a sparse tensor \(layout torch.sparse_coo\); "
                                        r"pass x.to_dense\(\)"):
        flashcka.cka(x.to_sparse(), x)
    with pytest.raises(TypeError, match=r"b is a sparse tensor \(layout torch.sparse_csr\)"):
        flashcka.cka_matrix({"a": x, "b": x.to_sparse_csr()})


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_float8_is_upcast_on_every_backend(backend):
    """float8 values are exact in float32: every backend gives the float32 answer (the torch
    backend raised NotImplementedError from aminmax)."""
    if not flashcka.backends.get(backend).usable()[0]:
        pytest.skip(f"{backend} not usable here")
    g = torch.Generator().manual_seed(3)
    x8 = (torch.randn(12, 5, generator=g) * 4).to(torch.float8_e4m3fn)
    y8 = (torch.randn(12, 3, generator=g) * 4).to(torch.float8_e5m2)
    x, y = x8.float(), y8.float()
    want = ref.cka(x.double().numpy(), y.double().numpy())
    got = flashcka.cka(x8, y8, backend=backend)
    assert abs(float(got) - want) < 1e-5
    m = flashcka.MinibatchCKA(1, 1, backend=backend)
    m.update([x8], [y8])
    assert abs(float(m.compute()[0, 0]) - want) < 1e-5
    torch.testing.assert_close(flashcka.gram(x8, backend=backend), x @ x.T, rtol=1e-6, atol=1e-5)
