"""Triton backend (kernels/triton, flashcka.backends.triton_launch / triton_backend)
against float64 references on fresh random inputs.

Without CUDA the kernels run on the CPU through the Triton interpreter (TRITON_INTERPRET=1,
set below before triton is imported; sizes kept small because the interpreter is slow).
Tests marked ``gpu`` need a CUDA device and are skipped without one. Scratch buffers are
NaN-poisoned (triton_launch.POISON) so an unwritten element shows up as NaN.

Tolerances: a kernel's error against float64 must be within 4× plain torch's error in the
same dtype plus ``8·eps·scale`` (flash-attention's rule); fp16/bf16 inputs (centered, then
rounded to their dtype for the products): ``4·eps(dtype)·max K``.
"""
import os
import sys

import numpy as np
import pytest
import torch

import flashcka
import reference as ref
from conftest import CUDA, DEV, TRITON_MARKS, realistic

pytest.importorskip("triton")
pytestmark = TRITON_MARKS
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    from flashcka.backends import triton_launch
    monkeypatch.setattr(triton_launch, "POISON", True)
    return triton_launch


def _eps(dt):
    return torch.finfo(dt).eps


def _nan(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEV)


def _check(got, want64, torch_err, dt, scale):
    """|got − want| ≤ 4·(torch's own error in dt) + 8·eps(dt)·scale; no NaN anywhere."""
    got = got.double().cpu()
    assert not torch.isnan(got).any(), "unwritten (NaN) elements"
    err = (got - want64).abs().max().item()
    bound = 4 * torch_err + 8 * _eps(dt) * scale
    assert err <= bound, f"error {err:.3g} > bound {bound:.3g} (torch's {torch_err:.3g})"


def test_flashcka_does_not_import_triton():
    import subprocess
    code = "import sys, flashcka; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_selection():
    be = flashcka.backends.get("triton")
    assert be.usable() == (True, "")
    x = torch.randn(5, 3, device=DEV)
    assert be.accepts(x)
    assert flashcka.backends.select("triton", x) is be
    assert not be.accepts(torch.zeros(5, 3, dtype=torch.int32, device=DEV))


# ------------------------------------------------------------------ Gram + statistics

def _gram_case(poison, x, dt):
    """The reference Gram in extended precision (numpy longdouble, on the float64 centered
    values, which the kernel forms identically in float64): a float64 reference would
    measure torch's own float64 error as exactly 0 and leave only 8·eps·scale for a kernel
    that merely sums in another order (split-K)."""
    mu = x.mean(0, dtype=dt)
    k, diag, rowsum = poison.gram_stats_triton(x, mu)
    xc64 = (x.double() - mu.double()).reshape(x.shape[0], -1).cpu()
    xl = xc64.numpy().astype(np.longdouble)
    kl = xl @ xl.T
    want = torch.tensor(kl.astype(np.float64))
    want_rowsum = torch.tensor(kl.sum(1).astype(np.float64))
    xc = (x.to(dt) - mu).reshape(x.shape[0], -1)
    torch_err = ((xc @ xc.T).double().cpu() - want).abs().max().item()
    scale = want.diagonal().max().item()
    _check(torch.triu(k), torch.triu(want), torch_err, dt, scale)
    _check(diag, want.diagonal(), torch_err, dt, scale)
    _check(rowsum, want_rowsum, want.shape[0] * torch_err, dt, want.shape[0] * scale)


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,shape", [(4, (1,)), (5, (3,)), (37, (200,)), (97, (3,)),
                                     (37, (6, 9))])
def test_gram_stats(poison, rng, n, shape, dt):
    x = realistic(rng, n, int(np.prod(shape)), dtype=dt).reshape(n, *shape).to(DEV)
    _gram_case(poison, x, dt)


@pytest.mark.parametrize("layout", ["strided", "tokens_transposed", "tokens_sliced"])
def test_gram_stats_layouts(poison, rng, layout):
    n = 37
    if layout == "strided":
        x = realistic(rng, n, 400).to(DEV)[:, ::2]                    # stride_c = 2
    elif layout == "tokens_transposed":                               # (n, T, C), C strided
        x = realistic(rng, n, 7 * 24).to(DEV).reshape(n, 24, 7).transpose(1, 2)
    else:                                                             # token slice: 2 strides
        x = realistic(rng, n, 9 * 16).to(DEV).reshape(n, 9, 16)[:, 1:, ::2]
    assert not x.is_contiguous()
    xv = poison.token_view(x)[0]
    assert xv.data_ptr() == x.data_ptr(), "token layout was copied"
    _gram_case(poison, x, torch.float32)


@pytest.mark.parametrize("xdt", [torch.bfloat16, torch.float16])
def test_gram_stats_low_precision(poison, rng, xdt):
    n = 37
    x = realistic(rng, n, 200).to(xdt).to(DEV)
    mu = x.mean(0, dtype=torch.float32)
    k, diag, _ = poison.gram_stats_triton(x, mu)
    xc64 = (x.double() - mu.double()).cpu()
    want = xc64 @ xc64.T
    err = (torch.triu(k).double().cpu() - torch.triu(want)).abs().max().item()
    assert not torch.isnan(torch.triu(k)).any()
    assert err <= 4 * _eps(xdt) * want.diagonal().max().item()


@pytest.fixture
def force_split(monkeypatch, poison):
    """A mocked 64-SM device and no minimum split length: small inputs run split-K."""
    monkeypatch.setattr(poison, "_num_sms", lambda device: 64)
    monkeypatch.setattr(poison, "MIN_STEPS", 1)
    return poison


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,shape", [(5, (300,)), (37, (400,)), (97, (130,)),
                                     (37, (9, 70))])
def test_gram_stats_split_k(force_split, rng, n, shape, dt):
    """Split-K partials + the fixed-order reduction kernel, against float64; the same
    input gives bitwise the same K twice (no atomics)."""
    x = realistic(rng, n, int(np.prod(shape)), dtype=dt).reshape(n, *shape).to(DEV)
    if len(shape) == 2:
        x = x.transpose(1, 2)                        # (n, T, C) read through strides
        assert force_split.token_view(x)[1] > 1
    xv, T, C, *_ = force_split.token_view(x)
    plan = force_split.gram_plan(n, T * C, dt, sms=64)
    assert plan.splits > 1, plan
    _gram_case(force_split, x, dt)
    mu = x.mean(0, dtype=dt)
    k1, d1, r1 = force_split.gram_stats_triton(x, mu)
    k2, d2, r2 = force_split.gram_stats_triton(x, mu)
    up = torch.triu(torch.ones(n, n, dtype=torch.bool, device=DEV))
    assert torch.equal(k1[up], k2[up]) and torch.equal(d1, d2) and torch.equal(r1, r2)


def test_center_pack_many_tiles(poison, rng):
    """Linear upper-tile index over nb = 10 blocks (55 programs): every packed entry."""
    n = 300
    a = torch.tensor(rng.standard_normal((n, n)), dtype=torch.float64, device=DEV)
    k = a + a.T
    rowsum = k.sum(1)
    for unbiased in (True, False):
        out = _nan((poison.row_length(n, unbiased),), torch.float64)
        poison.center_pack_triton(k, rowsum, out, unbiased=unbiased)
        want = torch.tensor(ref.center_unbiased(k.cpu().numpy()) if unbiased
                            else ref.center_biased(k.cpu().numpy()))
        assert not torch.isnan(out).any()
        assert (_unpack(out, n, unbiased) - want).abs().max() <= 1e-12 * want.abs().max()


@pytest.mark.parametrize("xdt,mode", [(torch.float32, "tf32"), (torch.float16, "tf32"),
                                      (torch.bfloat16, "tf32"), (torch.bfloat16, "bf16")])
def test_gram_stats_tensor_core_modes(force_split, rng, xdt, mode):
    """The tensor-core paths (TF32; bf16 products of centered values), split-K included:
    within 4× torch's error for the same rounding of the centered values plus 8·u·max K
    (u = 2^-11 for tf32's 10-bit mantissa under round-to-nearest, eps(bf16) for bf16).
    The interpreter computes tf32 in float32, so only the bf16 rounding is exercised on
    the CPU; a GPU runs the real tensor cores."""
    n = 37
    x = (realistic(rng, n, 300) + 3).to(xdt).to(DEV)
    mu = x.mean(0, dtype=torch.float32)
    k, diag, _ = force_split.gram_stats_triton(x, mu, allow_tf32=mode == "tf32",
                                               allow_bf16=mode == "bf16")
    xc64 = x.double() - mu.double()
    want = (xc64 @ xc64.T).cpu()
    xc = (x.float() - mu).to(torch.bfloat16 if mode == "bf16" else torch.float32)
    torch_err = ((xc.float() @ xc.float().T).double().cpu() - want).abs().max().item()
    u = _eps(torch.bfloat16) if mode == "bf16" else 2.0 ** -11
    got = torch.triu(k).double().cpu()
    assert not torch.isnan(got).any()
    err = (got - torch.triu(want)).abs().max().item()
    assert err <= 4 * torch_err + 8 * u * want.diagonal().max().item()


# ------------------------------------------------------------------ centered rows

def _unpack(row, n, unbiased):
    """Packed row -> full symmetric (n, n) float64 (``reference.unpack_row``)."""
    return torch.from_numpy(ref.unpack_row(row.double().cpu().numpy(), n, unbiased))


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel,sigma", [("linear", None), ("rbf", None), ("rbf", 3.0)])
@pytest.mark.parametrize("n", [4, 5, 37])
def test_centered_gram_row(rng, n, kernel, sigma, unbiased, dt):
    x = realistic(rng, n, 30, dtype=dt).to(DEV)
    be = flashcka.backends.get("triton")
    mu = x.mean(0, dtype=dt)
    m = be.row_length(n, unbiased)
    out = _nan((m,), dt)
    sq = be.centered_gram_row(x, mu, out, kernel=kernel, sigma=sigma, threshold=1.0,
                              unbiased=unbiased)
    k = ref.gram(x.cpu().numpy(), kernel, sigma)
    want = ref.center_unbiased(k) if unbiased else ref.center_biased(k)
    want = torch.tensor(want)
    tb = flashcka.backends.get("torch")
    t_out = torch.empty(n * n, dtype=dt, device=DEV)
    tb.centered_gram_row(x, mu, t_out, kernel=kernel, sigma=sigma, threshold=1.0,
                         unbiased=unbiased)
    torch_err = (t_out.double().cpu().reshape(n, n) - want).abs().max().item()
    assert not torch.isnan(out).any(), "unwritten row entries"
    _check(_unpack(out, n, unbiased), want, torch_err, dt, np.abs(k).max())
    xc = x.double() - mu.double()
    assert abs(sq.item() - xc.square().sum().item()) <= 1e-5 * xc.square().sum().item()


def test_rbf_zero_bandwidth():
    x = torch.ones(6, 4, device=DEV)
    x[0] += 1
    with pytest.raises(ValueError, match="median heuristic"):
        flashcka.cka(x, x + 0, kernel="rbf", backend="triton")


# ------------------------------------------------------------------ pair stage

@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("la,lb,m", [(3, 5, 1), (1, 1, 37), (17, 2, 1000), (4, 3, 20000)])
def test_pair(poison, rng, la, lb, m, dt):
    ga = torch.tensor(rng.standard_normal((la, m)), dtype=dt, device=DEV)
    gb = torch.tensor(rng.standard_normal((lb, m)), dtype=dt, device=DEV)
    got = poison.pair_triton(ga, gb)
    assert got.dtype == torch.float64 and got.shape == (la, lb)
    want = ga.double().cpu() @ gb.double().cpu().T
    torch_err = ((ga @ gb.T).double().cpu() - want).abs().max().item()
    scale = (ga.double().abs() @ gb.double().abs().T).max().item()
    _check(got, want, torch_err, dt, scale)


def test_pair_strided_rows(poison, rng):
    g = torch.tensor(rng.standard_normal((6, 2 * 301)), dtype=torch.float32, device=DEV)
    ga, gb = g[::2, ::2], g[1:4]                     # row stride ≠ m; unit stride
    gb = gb[:, :301]
    got = poison.pair_triton(ga, gb)
    want = ga.double().cpu() @ gb.double().cpu().T
    torch_err = ((ga @ gb.T).double().cpu() - want).abs().max().item()
    _check(got, want, torch_err, torch.float32, (ga.abs() @ gb.abs().T).max().item())


# ------------------------------------------------------------------ public API

def _layers(rng, n, latent):
    shapes = [(3,), (200,), (4, 5)]
    return [realistic(rng, n, int(np.prod(s)), latent).reshape(n, *s).to(DEV) for s in shapes]


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_matrix(rng, kernel, unbiased):
    n = 37
    z = rng.standard_normal((n, 16))
    xs, ys = _layers(rng, n, z), _layers(rng, n, z)[:2]
    want = np.array([[ref.cka(x.cpu().numpy(), y.cpu().numpy(), kernel, unbiased)
                      for y in ys] for x in xs])
    kw = dict(kernel=kernel, unbiased=unbiased, route="gram")
    for dt in (torch.float32, torch.float64):
        got = flashcka.cka_matrix(xs, ys, backend="triton", dtype=dt, **kw).cpu().numpy()
        base = flashcka.cka_matrix(xs, ys, backend="torch", dtype=dt, **kw).cpu().numpy()
        torch_err = np.abs(base - want).max()
        assert np.abs(got - want).max() <= 4 * torch_err + 8 * _eps(dt)
    same = flashcka.cka_matrix(xs, backend="triton", **kw).cpu().numpy()
    assert np.allclose(np.diag(same), 1, atol=1e-5)


def test_minibatch(rng):
    la, lb = 2, 3
    sizes = (37, 23)
    batches_x, batches_y = [], []
    for n in sizes:
        z = rng.standard_normal((n, 16))
        batches_x.append([realistic(rng, n, 50, z).to(DEV) for _ in range(la)])
        batches_y.append([realistic(rng, n, 20, z).reshape(n, 4, 5).to(DEV)
                          for _ in range(lb)])
    want = ref.minibatch_cka([[x.cpu().numpy() for x in b] for b in batches_x],
                             [[y.cpu().numpy() for y in b] for b in batches_y])
    errs = {}
    for be in ("triton", "torch"):
        acc = flashcka.MinibatchCKA(la, lb, backend=be)
        for bx, by in zip(batches_x, batches_y):
            acc.update(bx, by)
        errs[be] = np.abs(acc.compute().cpu().numpy() - want).max()
    assert errs["triton"] <= 4 * errs["torch"] + 8 * _eps(torch.float32)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_public_gram(rng, kernel):
    x = realistic(rng, 37, 30, dtype=torch.float64).to(DEV)
    got = flashcka.gram(x, kernel, backend="triton").cpu().numpy()
    want = ref.gram(x.cpu().numpy(), kernel)
    assert np.array_equal(got, got.T)          # the mirrored triangle: exactly symmetric
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


# ------------------------------------------------------------------ GPU only, larger

@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("xdt,tf32", [(torch.float32, False), (torch.float32, True),
                                      (torch.bfloat16, False)])
def test_gpu_large_gram(poison, xdt, tf32):
    n, d = 1025, 40000
    g = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    x = (torch.randn(n, d, device="cuda", generator=g) + 3).to(xdt)
    mu = x.mean(0, dtype=torch.float32)
    k, _, _ = poison.gram_stats_triton(x, mu, allow_tf32=tf32)
    xc = x.double() - mu.double()
    want = xc @ xc.T
    err = (torch.triu(k).double() - torch.triu(want)).abs().max().item()
    # TF32 keeps 10 mantissa bits: each product's rounding dominates. IEEE products (bf16
    # inputs are exact in float32): the float32 sum of d products errs by about √d·u
    # (u = 2^-24) times Σ|a_k b_k| ≤ max K_ii (Higham & Mary 2019's probabilistic bound,
    # λ = 4 over ~5·10⁵ entries); measured on an H200: 0.23·√d·u·max K_ii at d = 40,000.
    eps = 2.0 ** -10 if tf32 else 2.0 ** -24 * d ** 0.5
    assert err <= 4 * eps * want.diagonal().max().item()


@gpu
@pytest.mark.gpu
def test_gpu_cka_matrix_matches_torch(rng):
    n = 1025
    z = rng.standard_normal((n, 16))
    xs = [realistic(rng, n, d, z).cuda() for d in (3, 768, 4000)]
    got = flashcka.cka_matrix(xs, backend="triton", route="gram").cpu().numpy()
    want = flashcka.cka_matrix(xs, backend="torch", route="gram",
                               dtype=torch.float64).cpu().numpy()
    base = flashcka.cka_matrix(xs, backend="torch", route="gram").cpu().numpy()
    assert np.abs(got - want).max() <= 4 * np.abs(base - want).max() + 8 * _eps(torch.float32)


# ------------------------------------------------------------------ contract (issue 9, item 6)

@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("value", [0.0, 3.25])
def test_rbf_constant_representation_is_nan_with_warning(rng, unbiased, value):
    """As on the torch and native backends: K = 11ᵀ, centered Gram 0, CKA NaN + warning
    naming the layer (Triton raised 'median heuristic gives sigma = 0')."""
    xs = {"ok": realistic(rng, 9, 4).to(DEV), "const": torch.full((9, 3), value, device=DEV)}
    with pytest.warns(flashcka.FlashCKAWarning, match="const"):
        got = flashcka.cka_matrix(xs, kernel="rbf", unbiased=unbiased, backend="triton")
    assert torch.isnan(got[1]).all() and torch.isnan(got[:, 1]).all()
    ok = xs["ok"].double().cpu().numpy()
    assert got[0, 0].item() == pytest.approx(ref.cka(ok, ok, "rbf", unbiased), abs=1e-6)
    k = flashcka.gram(xs["const"], "rbf", backend="triton").cpu()
    assert torch.equal(k, torch.ones(9, 9))


@pytest.mark.parametrize("xdt", [torch.float16, torch.bfloat16])
def test_half_inputs_centered_in_float32(poison, rng, xdt):
    """A valid fp16 column spanning ±65504 whose centered values exceed the fp16 range:
    centered values stay in float32, so the Gram and CKA match the float64 reference of
    the same fp16 data (they overflowed to inf when rounded back to fp16)."""
    n = 12
    x = realistic(rng, n, 5)
    x[:, 0] = torch.tensor([65504.0] + [-65504.0] * 5 + list(rng.uniform(-9, 9, n - 6)))
    x = x.to(xdt).to(DEV)
    y = realistic(rng, n, 3).to(DEV)
    y[:, 0] += x[:, 0].float() / 1e4
    x64, y64 = x.double().cpu().numpy(), y.double().cpu().numpy()
    got = flashcka.cka_matrix([x], [y], backend="triton", route="gram")[0, 0]
    assert got.item() == pytest.approx(ref.cka(x64, y64), rel=0, abs=1e-5)
    mu = x.mean(0, dtype=torch.float32)
    k, diag, _ = poison.gram_stats_triton(x, mu)
    xc = x.double().cpu() - mu.double().cpu()
    want = xc @ xc.T
    err = (torch.triu(k).double().cpu() - torch.triu(want)).abs().max().item()
    assert err <= 8 * _eps(torch.float32) * want.diagonal().max().item()


def test_rbf_duplicates_and_extreme_bandwidths():
    """As the torch backend (tests/test_gram.py): duplicated rows have distance 0 (the
    median heuristic then reports sigma = 0), 2σ² out of range gives I or 11ᵀ, not NaN."""
    g = torch.Generator().manual_seed(0)
    b = torch.randn(2, 4, generator=g)
    y = b[torch.tensor([0, 1, 0, 1, 0, 1, 1])].to(DEV)
    x = torch.randn(7, 3, generator=g).to(DEV)
    with pytest.raises(ValueError, match="y: the median heuristic gives sigma = 0"):
        flashcka.cka(x, y, kernel="rbf", dtype=torch.float64, backend="triton")
    k = flashcka.gram(y, "rbf", sigma=1.0, dtype=torch.float64, backend="triton").cpu()
    np.testing.assert_allclose(k.numpy(), ref.gram_rbf(y.double().cpu().numpy(), sigma=1.0),
                               rtol=0, atol=1e-15)
    xs = torch.randn(5, 3, generator=g).to(DEV)
    eye, ones = torch.eye(5), torch.ones(5, 5)
    assert torch.equal(flashcka.gram(xs, "rbf", sigma=1e-200, backend="triton").cpu(), eye)
    assert torch.equal(flashcka.gram(xs, "rbf", sigma=1e200, backend="triton").cpu(), ones)
    assert torch.equal(flashcka.gram(xs * 1e30, "rbf", sigma=0.5, backend="triton").cpu(), eye)
    const = torch.full((5, 2), 8.36e29, device=DEV)
    assert torch.equal(flashcka.gram(const, "rbf", sigma=0.5, backend="triton").cpu(), ones)


@pytest.mark.parametrize("m", [1, 8191, 8192, 8193, 20000])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_pair_chunked_against_float64(rng, m, dt):
    """The GPU's IEEE pair stage (cuBLAS per chunk of 8192 entries, chunks added in
    float64): every chunk boundary and the tail, against float64 products; the error of a
    float32 chunk sum is about √chunk·u·Σ|a_k b_k| (λ = 4)."""
    from flashcka.backends.triton_backend import PAIR_CHUNK, pair_chunked
    a = torch.from_numpy(rng.standard_normal((3, m)) + 1).to(dt)
    b = torch.from_numpy(rng.standard_normal((5, m)) - 0.5).to(dt)
    got = pair_chunked(a, b)
    want = a.double() @ b.double().T
    u = 2.0 ** -24 if dt == torch.float32 else 2.0 ** -53
    bound = 4 * u * min(m, PAIR_CHUNK) ** 0.5 * (a.double().abs() @ b.double().abs().T)
    assert got.dtype == torch.float64 and got.shape == (3, 5)
    assert ((got - want).abs() <= bound).all()
