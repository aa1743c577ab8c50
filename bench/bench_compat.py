"""Each drop-in adapter (flashcka.compat.*) against its original on the same job, in one run:
``side`` is "flashcka" or "original", grouped per job so pytest-benchmark's table puts them
side by side. An original that is not installed is a skipped case with the reason
(``pip install --no-deps -r bench/peers/requirements-peers.txt``). Kornblith et al.'s demo
and platonic-rep's metrics.py are not packages: their "original" is the published formula,
run as written there (numpy Grams; one call per layer pair).

Jobs (full / --quick):
  kornblith     feature_space_linear_cka and cka(gram_linear(·)) on one pair, n × d
  torch_cka     CKA(...).compare over an MLP pair (12 + 12 layers), 3 batches
  pytorch_cka   compute_cka over the same models and batches
  platonic      mutual kNN and CKNNA of every pair of L layers (similarity_matrix vs
                the per-pair loop of metrics.py's formulas)
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import device_name, git_commit, versions

SIDES = ("flashcka", "original")


def _sizes(quick):
    if quick:
        return {"kornblith": (128, 64), "models": (4, 64, 2, 32), "platonic": (4, 64, 32)}
    return {"kornblith": (2048, 512), "models": (12, 256, 3, 128), "platonic": (8, 256, 128)}


def _run(benchmark, quick, fn, job, side, **extra):
    benchmark.group = job
    benchmark.extra_info.update(job=job, side=side, device=device_name("cpu"),
                                commit=git_commit(), **versions(), **extra)
    rounds = {"rounds": 1 if quick else 2, "iterations": 1, "warmup_rounds": 0 if quick else 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return benchmark.pedantic(fn, **rounds)


def _original(module):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.skip(f"original not installed ({module}: {e}); pip install --no-deps -r "
                    f"bench/peers/requirements-peers.txt")


# ------------------------------------------------------------------ kornblith
def _notebook_cka(gx, gy):
    def center(g):
        means = np.mean(g, 0)
        means -= np.mean(means) / 2
        return g - means[:, None] - means[None, :]
    gx, gy = center(gx), center(gy)
    return gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy))


def _notebook_feature_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("route", ["gram", "feature"])
def test_kornblith(benchmark, quick, side, route):
    from flashcka.compat import kornblith as K
    n, d = _sizes(quick)["kornblith"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    y = np.tanh(x @ rng.standard_normal((d, d)) / np.sqrt(d)) + rng.standard_normal((n, d))
    if route == "gram":
        fn = (lambda: K.cka(K.gram_linear(x), K.gram_linear(y))) if side == "flashcka" else \
            (lambda: _notebook_cka(x @ x.T, y @ y.T))
    else:
        fn = (lambda: K.feature_space_linear_cka(x, y)) if side == "flashcka" else \
            (lambda: _notebook_feature_cka(x, y))
    val = _run(benchmark, quick, fn, f"kornblith-{route}-{n}x{d}", side, n=n, d=d)
    assert abs(val - (_notebook_feature_cka(x, y))) < 1e-10


# ------------------------------------------------------------------ torch-cka / pytorch-cka
def _models(quick):
    layers, width, batches, n = _sizes(quick)["models"]
    g = torch.Generator().manual_seed(0)

    def mlp():
        mods = []
        for i in range(layers):
            mods += [nn.Linear(width, width), nn.Tanh() if i % 2 else nn.ReLU()]
        m = nn.Sequential(*mods).eval()
        for p in m.parameters():
            p.data = torch.randn(p.shape, generator=g) / width ** 0.5
        return m
    names = [str(2 * i) for i in range(layers)]
    data = [(torch.randn(n, width, generator=g) + 1.0, torch.zeros(n)) for _ in range(batches)]
    return mlp(), mlp(), names, data, dict(layers=layers, width=width, batches=batches, n=n)


class _Loader:
    """A DataLoader stand-in (not a list: compute_cka reads a list as a list of loaders)."""
    dataset = "bench"

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@pytest.mark.parametrize("side", SIDES)
def test_torch_cka(benchmark, quick, side):
    from flashcka.compat import torch_cka as adapter
    mod = adapter if side == "flashcka" else _original("torch_cka")
    m1, m2, names, data, info = _models(quick)
    loader = _Loader(data)

    def job():
        c = mod.CKA(m1, m2, "a", "b", names, names)
        c.compare(loader)
        return c.export()["CKA"]
    out = _run(benchmark, quick, job, f"torch_cka-{info['layers']}x{info['layers']}", side,
               **info)
    assert out.shape == (len(names), len(names))


@pytest.mark.parametrize("side", SIDES)
def test_pytorch_cka(benchmark, quick, side):
    from flashcka.compat import pytorch_cka as adapter
    mod = adapter if side == "flashcka" else _original("cka")
    if not hasattr(mod, "compute_cka"):
        pytest.skip("the installed `cka` module is not pytorch-cka")
    m1, m2, names, data, info = _models(quick)
    out = _run(benchmark, quick, lambda: mod.compute_cka(m1, m2, _Loader(data), layers=names,
                                                         device="cpu", progress=False)[0],
               f"pytorch_cka-{info['layers']}x{info['layers']}", side, **info)
    assert out.shape == (len(names), len(names))


# ------------------------------------------------------------------ platonic-rep
def _metrics_mutual_knn(a, b, topk):
    def knn(f):
        return (f @ f.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :topk]
    ka, kb = knn(a), knn(b)
    n = ka.shape[0]
    r = torch.arange(n).unsqueeze(1)
    ma, mb = torch.zeros(n, n), torch.zeros(n, n)
    ma[r, ka] = 1.0
    mb[r, kb] = 1.0
    return ((ma * mb).sum(1) / topk).mean().item()


def _metrics_hsic_unbiased(k, l):
    m = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    return (torch.sum(kt * lt.T) + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
            - 2 * torch.sum(kt @ lt) / (m - 2)) / (m * (m - 3))


def _metrics_cknna(a, b, topk):
    n = a.shape[0]
    k, l = a @ a.T, b @ b.T

    def sim(k, l):
        kh, lh = k.clone().fill_diagonal_(float("-inf")), l.clone().fill_diagonal_(float("-inf"))
        mk = torch.zeros(n, n, dtype=k.dtype).scatter_(1, torch.topk(kh, topk, 1).indices, 1)
        ml = torch.zeros(n, n, dtype=k.dtype).scatter_(1, torch.topk(lh, topk, 1).indices, 1)
        mask = mk * ml
        return _metrics_hsic_unbiased(mask * k, mask * l)
    return (sim(k, l) / torch.sqrt(sim(k, k) * sim(l, l))).item()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("measure", ["mutual_knn", "cknna"])
def test_platonic_all_pairs(benchmark, quick, side, measure):
    from flashcka import similarity_matrix
    L, n, d = _sizes(quick)["platonic"]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 8, generator=g)
    dtype = torch.float64 if measure == "cknna" else torch.float32
    xs = [(torch.tanh(z @ torch.randn(8, d, generator=g)) + 0.5 * torch.randn(n, d, generator=g)
           ).to(dtype) for _ in range(L)]
    topk = 10
    if side == "flashcka":
        fn = lambda: similarity_matrix(xs, measure=measure, topk=topk)  # noqa: E731
    else:
        one = _metrics_mutual_knn if measure == "mutual_knn" else _metrics_cknna
        fn = lambda: torch.tensor([[one(a, b, topk) for b in xs] for a in xs])  # noqa: E731
    out = _run(benchmark, quick, fn, f"platonic-{measure}-{L}x{L}-n{n}", side, L=L, n=n, d=d,
               topk=topk)
    assert out.shape == (L, L)
