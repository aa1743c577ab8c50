"""flashcka.ops: the custom ops (schema, fake kernels, autograd: torch.library.opcheck) and
cka_matrix under torch.compile(fullgraph=True), against eager and the float64 reference."""
import numpy as np
import pytest
import torch

import flashcka
import reference
from flashcka import ops  # noqa: F401  (registers the ops)


def reps(rng, n, dims, dtype=torch.float64, grad=False):
    z = rng.standard_normal((n, 3))
    out = []
    for d in dims:
        x = np.tanh(z @ rng.standard_normal((3, d))) + 0.4 * rng.standard_normal((n, d)) + 1.5
        out.append(torch.tensor(x, dtype=dtype, requires_grad=grad))
    return out


def ref_matrix(xs, ys, unbiased=True):
    return np.array([[reference.cka(x.detach().double().numpy(), y.detach().double().numpy(),
                                    unbiased=unbiased) for y in ys] for x in xs])


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_opcheck_gram_rows(rng, backend, unbiased):
    if backend == "native" and not flashcka.capabilities()["backends"]["native"]["usable"]:
        pytest.skip("flashcka._C not built")
    grad = backend == "torch"
    xs = reps(rng, 9, [4, 1, 6], grad=grad)
    args = (xs, backend, "linear", unbiased, None, 1.0, torch.float64)
    torch.library.opcheck(torch.ops.flashcka.gram_rows.default, args)


def test_opcheck_pair(rng):
    ga = torch.randn(3, 25, dtype=torch.float64, requires_grad=True)
    gb = torch.randn(2, 25, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.flashcka.pair_stage.default, (ga, gb, "torch", False))
    tiny = (ga.detach() * 1e-200).requires_grad_()     # normalised rows: la != 0
    torch.library.opcheck(torch.ops.flashcka.pair_stage.default, (tiny, gb, "torch", False))


def test_ops_gradcheck(rng):
    """The registered autograd formulas against finite differences (float64)."""
    xs = reps(rng, 7, [3, 5], grad=True)
    ys = reps(rng, 7, [4], grad=True)

    def f(a, b, c):
        g, _, _, sa = torch.ops.flashcka.gram_rows([a, b], "torch", "linear", True, None, 1.0,
                                                   torch.float64)
        h, _, _, sb = torch.ops.flashcka.gram_rows([c], "torch", "linear", True, None, 1.0,
                                                   torch.float64)
        raw, qa, qb, _, _ = torch.ops.flashcka.pair_stage(g, h, "torch", False)
        return raw, qa, qb
    torch.autograd.gradcheck(f, (*xs, *ys))


def test_pair_stage_gradcheck_with_normalised_rows():
    """Rows at 1e-250 are normalised inside the op (la = 2^k): the gradient keeps the
    powers of two (dropping them is off by 2^k)."""
    ga = (torch.randn(3, 25, dtype=torch.float64) * 1e-250).requires_grad_()
    gb = torch.randn(2, 25, dtype=torch.float64, requires_grad=True)
    raw, qa, qb, la, lb = torch.ops.flashcka.pair_stage(ga, gb, "torch", False)
    assert bool((la != 0).all())
    w = torch.randn(3, 2, dtype=torch.float64)
    (raw * w).sum().add(qa.sum()).backward()
    t = torch.exp2(la)[:, None]
    want = t * (w @ gb.detach()) + 2 * t * t * ga.detach()
    torch.testing.assert_close(ga.grad, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("scale", [1e-45, 1e-80, 1e80, 1e-150, 1e150])
def test_compiled_cka_matrix_at_extreme_float64_scales(rng, scale):
    """The compiled route shares the eager pair stage and ratio: x·1e-45, y·1e-45 gave inf
    (sqrt(self_a·self_b) underflowed), eager 0.5787."""
    xs = reps(rng, 40, [30])
    ys = [xs[0] @ torch.tensor(rng.standard_normal((30, 20))) + 3 * reps(rng, 40, [20])[0]]
    want = ref_matrix(xs, ys, True)
    f = torch.compile(lambda a, b: flashcka.cka_matrix(a, b), fullgraph=True, backend="eager")
    got = f([xs[0] * scale], [ys[0] * scale])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("unbiased", [True, False])
def test_compile_fullgraph_cka_matrix(rng, unbiased):
    xs = reps(rng, 23, [5, 3 * 4, 1], dtype=torch.float32)
    xs[1] = xs[1].reshape(23, 3, 4)
    ys = {"p": reps(rng, 23, [7], dtype=torch.float32)[0]}

    def f(xs, ys):
        return flashcka.cka_matrix(xs, ys, unbiased=unbiased) + 0.0

    explained = torch._dynamo.explain(f)(xs, ys)
    assert explained.graph_break_count == 0, explained.break_reasons
    got = torch.compile(f, fullgraph=True, backend="eager")(xs, ys)
    torch.testing.assert_close(got, f(xs, ys), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), ref_matrix(xs, list(ys.values()), unbiased),
                               rtol=0, atol=2e-6)


def test_compile_inductor_self_comparison(rng):
    torch._dynamo.reset()
    xs = reps(rng, 17, [4, 9, 2])
    f = torch.compile(lambda xs: flashcka.cka_matrix(xs).sum(1), fullgraph=True)
    got = f(xs)
    np.testing.assert_allclose(got.numpy(), ref_matrix(xs, xs).sum(1), rtol=0, atol=1e-12)


def test_compile_grad_matches_eager(rng):
    xs = reps(rng, 12, [4, 6], grad=True)
    ys = reps(rng, 12, [5], grad=True)

    def loss(xs, ys):
        return flashcka.cka_matrix(xs, ys).sum()

    eager = torch.autograd.grad(loss(xs, ys), xs + ys)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(xs, ys), xs + ys)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_compiled_zero_variance_is_nan(rng):
    xs = reps(rng, 10, [3])
    const = torch.ones(10, 4, dtype=torch.float64) * 3.0
    f = torch.compile(lambda a, b: flashcka.cka_matrix(a, b), fullgraph=True, backend="eager")
    out = f(xs + [const], xs)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
