"""Differentiable CKA (issue 9, item 4): with an input that requires grad, hsic, cka,
cka_matrix, gram and center return results carrying the graph on every backend `auto`
picks, on both routes; gradients are checked against finite differences in float64
(torch.autograd.gradcheck). A forced backend that cannot differentiate raises.
"""

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import flashcka
import reference as ref
from conftest import triton_runs


def _inputs(seed, n=9, dx=4, dy=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, dtype=torch.float64, generator=g) + 1.5
    y = torch.randn(n, dy, dtype=torch.float64, generator=g)
    y[:, 0] += x[:, 0]
    return x.requires_grad_(), y.requires_grad_()


ROUTES = [("gram", "linear"), ("gram", "rbf"), ("feature", "linear")]


@pytest.mark.parametrize("route,kernel", ROUTES)
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("want", ["cka", "hsic", "cka_matrix"])
def test_gradcheck(rng, monkeypatch, route, kernel, unbiased, want):
    """hsic/cka pick their route by shape: dx = 12 (n = 9) takes the Gram route, dx = 4
    the feature route (checked by counting feature-route calls)."""
    x, y = _inputs(int(rng.integers(1 << 31)), dx=12 if route == "gram" else 4)
    calls = []
    real = flashcka.core.feature.hsic
    monkeypatch.setattr(flashcka.core.feature, "hsic", lambda *a: calls.append(1) or real(*a))
    kw = dict(kernel=kernel, unbiased=unbiased)
    if want == "cka_matrix":
        def f(a, b):
            return flashcka.cka_matrix([a, a[:, :2]], [b], route=route, **kw)
    else:
        fn = getattr(flashcka, want)

        def f(a, b):
            return fn(a, b, **kw)
    out = f(x, y)
    assert bool(calls) == (route == "feature")
    assert out.requires_grad and out.grad_fn is not None
    assert gradcheck(f, (x, y), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("route", ["gram", "feature"])
def test_gradient_of_cka_matches_reference_finite_differences(route):
    """d CKA / dx from flashcka against central differences of the numpy reference."""
    x, y = _inputs(7, n=8, dx=3, dy=2)
    c = flashcka.cka_matrix([x], [y], route=route)[0, 0]
    (gx,) = torch.autograd.grad(c, x)
    x0, y0 = x.detach().numpy(), y.detach().numpy()
    h = 1e-6
    fd = np.zeros_like(x0)
    for idx in np.ndindex(*x0.shape):
        xp, xm = x0.copy(), x0.copy()
        xp[idx] += h
        xm[idx] -= h
        fd[idx] = (ref.cka(xp, y0) - ref.cka(xm, y0)) / (2 * h)
    np.testing.assert_allclose(gx.numpy(), fd, rtol=0, atol=1e-7)


def test_float32_auto_keeps_the_graph_on_cpu():
    """`auto` on CPU float32 would pick the native backend: with grad it must not return
    a detached result (it did), on the Gram route and the feature route."""
    x, y = _inputs(3)
    x, y = x.detach().float().requires_grad_(), y.detach().float()
    for route in ("gram", "feature", "auto"):
        c = flashcka.cka_matrix([x], [y], route=route)
        assert c.requires_grad, route
        (g,) = torch.autograd.grad(c.sum(), x)
        assert torch.isfinite(g).all() and g.abs().max() > 0
    assert flashcka.hsic(x, y).requires_grad
    assert flashcka.gram(x).requires_grad
    k = (x @ x.T).detach().requires_grad_()
    assert flashcka.center(k).requires_grad


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_gram_and_center_gradcheck(kernel):
    x, _ = _inputs(11, n=7, dx=3)
    assert gradcheck(lambda a: flashcka.gram(a, kernel), (x,), eps=1e-6, atol=1e-7)
    k = (x @ x.T).detach().requires_grad_()
    for unbiased in (True, False):
        assert gradcheck(lambda a: flashcka.center(a, unbiased=unbiased), (k,),
                         eps=1e-6, atol=1e-7)


def _forced():
    return ["native"] + (["triton"] if triton_runs() else [])


@pytest.mark.parametrize("backend", _forced())
def test_forced_backend_that_cannot_differentiate_raises(backend):
    x, y = _inputs(5)
    msg = rf"backend='{backend}' cannot differentiate.*backend='torch' or 'auto'"
    for call in (lambda: flashcka.cka(x, y, backend=backend),
                 lambda: flashcka.hsic(x, y, backend=backend),
                 lambda: flashcka.cka_matrix([x], [y], backend=backend),
                 lambda: flashcka.cka_matrix([x], backend=backend),
                 lambda: flashcka.gram(x, backend=backend),
                 lambda: flashcka.center((x @ x.T), backend=backend)):
        with pytest.raises(ValueError, match=msg):
            call()
    # without grad the same calls run on that backend and match the reference
    with torch.no_grad():
        got = flashcka.cka(x, y, backend=backend)
    assert not got.requires_grad
    np.testing.assert_allclose(got.item(), ref.cka(x.detach().numpy(), y.detach().numpy()),
                               rtol=0, atol=1e-12)
    got = flashcka.cka(x.detach(), y.detach(), backend=backend)
    np.testing.assert_allclose(got.item(), ref.cka(x.detach().numpy(), y.detach().numpy()),
                               rtol=0, atol=1e-12)


def test_cka_as_a_training_loss_improves_alignment():
    """A few steps of gradient ascent on CKA(xW, y) raise it (the use the feature is for)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = torch.tanh(x[:, :3] @ torch.randn(3, 5, generator=g))
    w = torch.randn(8, 4, generator=g).requires_grad_()
    opt = torch.optim.SGD([w], lr=0.5)
    first = None
    for _ in range(20):
        loss = -flashcka.cka(x @ w, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert -loss.item() > -first + 0.05
