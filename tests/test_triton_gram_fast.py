"""The Triton Gram on pre-centred rows (triton_launch.centred_rows + _gram_stats_kernel)
against the float64 reference (tests/reference.py) on fresh random inputs.

Without CUDA the kernels run through the Triton interpreter (TRITON_INTERPRET=1, set
before triton is imported). Awkward sizes: n = 1, 2, 5 (one partial tile), 37, 129 (tiles
of 32 in the interpreter, and of 64 and 128 through ``config``: rows beyond n are clamped
on load and must not leak into K, its diagonal or its row sums); d = 1, 3, 70 and token
tensors (n, T, C) that are not contiguous; split-K forced on a mocked 64-SM device.
Scratch buffers are NaN-poisoned (triton_launch.POISON): an unwritten entry fails.

Tolerance (test_triton.py's rule): |got − ref| ≤ 4·(torch's own error in the same dtype
against the same reference) + 8·u·max K, u the products' unit roundoff.
"""
import numpy as np
import pytest
import torch

import flashcka
import reference as ref
from conftest import CUDA, DEV, TRITON_MARKS, realistic

pytest.importorskip("triton")
pytestmark = TRITON_MARKS


@pytest.fixture(autouse=True)
def tl(monkeypatch):
    from flashcka.backends import triton_launch
    monkeypatch.setattr(triton_launch, "POISON", True)
    return triton_launch


@pytest.fixture
def force_split(monkeypatch, tl):
    """A mocked 64-SM device and one BLOCK_K step a split at least: small inputs split."""
    monkeypatch.setattr(tl, "_num_sms", lambda device: 64)
    monkeypatch.setattr(tl, "MIN_STEPS", 1)
    return tl


def _x(rng, n, shape, dt):
    """x (n, *shape) with non-zero means; shape "tokens_T": (n, T, C) with C strided
    (a transposed view); "tokens_sliced": a slice of tokens and channels (two strides)."""
    if shape == "tokens_T":
        x = realistic(rng, n, 5 * 14, dtype=dt).reshape(n, 14, 5).transpose(1, 2)
    elif shape == "tokens_sliced":
        x = realistic(rng, n, 6 * 17, dtype=dt).reshape(n, 6, 17)[:, 1:, ::2]
    else:
        x = realistic(rng, n, int(np.prod(shape)), dtype=dt).reshape(n, *shape)
    if isinstance(shape, str):
        assert not x.is_contiguous()
    return x.to(DEV)


def _check(got, want, torch_err, u, scale, what):
    got = got.double().cpu()
    assert not torch.isnan(got).any(), f"{what}: unwritten (NaN) entries"
    err = (got - want).abs().max().item()
    bound = 4 * torch_err + 8 * u * scale
    assert err <= bound, f"{what}: error {err:.3g} > bound {bound:.3g} (torch's {torch_err:.3g})"


def _gram_vs_reference(tl, x, mu, xc_ref, u, **kw):
    """k (upper tiles), diag, rowsum of gram_stats_triton against reference.gram_linear
    of the float64 centred rows xc_ref (n, d)."""
    n = x.shape[0]
    k, diag, rowsum = tl.gram_stats_triton(x, mu, **kw)
    want = torch.tensor(ref.gram_linear(xc_ref.cpu().numpy()))
    ct = mu.dtype
    xt = xc_ref.to(ct)
    torch_err = ((xt @ xt.T).double().cpu() - want).abs().max().item()
    scale = want.diagonal().max().item()
    _check(torch.triu(k), torch.triu(want), torch_err, u, scale, "K")
    _check(diag, want.diagonal(), torch_err, u, scale, "diag")
    _check(rowsum, want.sum(1), n * torch_err, u, n * scale, "rowsum")
    return k, diag, rowsum


def _eps(dt):
    return torch.finfo(dt).eps


SHAPES = [(1,), (3,), (70,), "tokens_T", "tokens_sliced"]


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 5, 37, 129])
def test_gram_against_reference(tl, rng, n, shape, dt):
    x = _x(rng, n, shape, dt)
    mu = x.mean(0, dtype=dt)
    xc = (x.double() - mu.double()).reshape(n, -1)
    _gram_vs_reference(tl, x, mu, xc, _eps(dt))


@pytest.mark.parametrize("block,block_k,tma", [(64, 32, False), (128, 16, False),
                                               (128, 32, False), (64, 32, True),
                                               (128, 32, True)])
@pytest.mark.parametrize("n", [5, 129])
def test_gpu_block_sizes(tl, rng, n, block, block_k, tma):
    """The GPU's tile sizes (through ``config``, as bench/gpu_sweep.py passes them): 129
    rows are one full and one 1-row block of 128 (127 clamped rows), or 64 + 64 + 1; TMA:
    X_c read through a tensor descriptor (rows beyond n read as zero; Hopper on a GPU)."""
    if tma and CUDA and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors (TMA) need Hopper")
    x = _x(rng, n, (70,), torch.float32)
    mu = x.mean(0, dtype=torch.float32)
    xc = (x.double() - mu.double()).reshape(n, -1)
    cfg = dict(BLOCK=block, BLOCK_K=block_k, **(dict(TMA=True) if tma else {}))
    _gram_vs_reference(tl, x, mu, xc, _eps(torch.float32), config=cfg)


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,shape", [(2, (300,)), (37, (400,)), (129, (70,)),
                                     (37, "tokens_T"), (129, "tokens_sliced")])
def test_split_k(force_split, rng, n, shape, dt):
    """Split-K partials reduced in a fixed order: against the reference, and bitwise the
    same K, diagonal and row sums on a second run (no atomics)."""
    x = _x(rng, n, shape, dt)
    if n == 129:
        x = x.repeat(1, 4, *([1] * (x.dim() - 2)))            # enough features to split
    d = x[0].numel()
    plan = force_split.gram_plan(n, d, dt, sms=64)
    assert plan.splits > 1, plan
    mu = x.mean(0, dtype=dt)
    xc = (x.double() - mu.double()).reshape(n, -1)
    k1, d1, r1 = _gram_vs_reference(force_split, x, mu, xc, _eps(dt))
    k2, d2, r2 = force_split.gram_stats_triton(x, mu)
    up = torch.triu(torch.ones(n, n, dtype=torch.bool, device=DEV))
    assert torch.equal(k1[up], k2[up]) and torch.equal(d1, d2) and torch.equal(r1, r2)


@pytest.mark.parametrize("xdt", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", ["tf32", "bf16"])
@pytest.mark.parametrize("n", [37, 300])
def test_tensor_core_modes(force_split, rng, n, xdt, mode):
    """tf32 (the interpreter multiplies in float32; the GPU on TF32 tensor cores: u = 2^-11)
    and bf16 (bfloat16 inputs only: the centred values rounded to bfloat16, products
    accumulated in float32; the reference multiplies those same bf16 values in float64).
    n = 300: a GPU's 128×128 tiles (TMA loads for tf32 on Hopper), a partial last block."""
    x = (realistic(rng, n, 300) + 3).to(xdt).to(DEV)
    mu = x.mean(0, dtype=torch.float32)
    bf16 = mode == "bf16" and xdt == torch.bfloat16
    xc = x.float() - mu
    if bf16:
        xc = xc.to(torch.bfloat16)
    u = 2.0 ** -11 if mode == "tf32" else _eps(torch.float32)
    _gram_vs_reference(force_split, x, mu, xc.double(), u, allow_tf32=mode == "tf32",
                       allow_bf16=mode == "bf16")


CASES = [(torch.float32, torch.float32, "ieee"), (torch.float64, torch.float32, "ieee"),
         (torch.float16, torch.float32, "tf32"), (torch.bfloat16, torch.float32, "bf16"),
         (torch.bfloat16, torch.float32, "tf32"), (torch.float16, torch.float64, "ieee"),
         (torch.float64, torch.float64, "ieee")]


@pytest.mark.parametrize("xdt,ct,prec", CASES)
@pytest.mark.parametrize("shape", [(3,), "tokens_T", "tokens_sliced"])
def test_centred_rows_numerics(tl, rng, xdt, ct, prec, shape):
    """X_c = x − 1μᵀ: subtracted in the wider of x's dtype and ct (float64 x with float32
    ct: in float64, then rounded once; 16-bit x: widened exactly), rounded to bfloat16 for
    bf16 products; contiguous (n, d_pad) with d_pad a multiple of BLOCK_K, zero beyond d."""
    n = 7
    x = _x(rng, n, shape, torch.float64).to(xdt)
    mu = x.mean(0, dtype=ct)
    d = x[0].numel()
    xc = tl.centred_rows(x, mu, prec, 32)
    want = (x.double() - mu.double()).reshape(n, d)   # exact for these dtypes
    want = want.to(ct)
    if prec == "bf16":
        want = want.to(torch.bfloat16)
    assert xc.is_contiguous() and xc.shape == (n, 32 * -(-d // 32)), xc.shape
    assert xc.dtype == want.dtype
    assert torch.equal(xc[:, :d], want)
    assert not xc[:, d:].any()


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("n,shape", [(5, (3,)), (37, "tokens_T"), (129, (70,)),
                                     (129, "tokens_sliced")])
def test_centered_gram_row(rng, n, shape, unbiased):
    """The backend's packed centred row (Gram, then U-centering or HKH) against the
    reference's centring of its float64 Gram."""
    x = _x(rng, n, shape, torch.float32)
    be = flashcka.backends.get("triton")
    mu = x.mean(0, dtype=torch.float32)
    out = torch.full((be.row_length(n, unbiased),), float("nan"), device=DEV)
    be.centered_gram_row(x, mu, out, kernel="linear", sigma=None, threshold=1.0,
                         unbiased=unbiased)
    k = ref.gram_linear(x.double().cpu().numpy())
    want = torch.tensor(ref.center_unbiased(k) if unbiased else ref.center_biased(k))
    t_out = torch.empty(n * n, device=DEV)
    flashcka.backends.get("torch").centered_gram_row(
        x, mu, t_out, kernel="linear", sigma=None, threshold=1.0, unbiased=unbiased)
    torch_err = (t_out.double().cpu().reshape(n, n) - want).abs().max().item()
    got = _unpack(out, n, unbiased)
    _check(got, want, torch_err, _eps(torch.float32), want.abs().max().item(), "row")


def _unpack(row, n, unbiased):
    """Packed row -> full symmetric (n, n) float64 (``reference.unpack_row``)."""
    return torch.from_numpy(ref.unpack_row(row.double().cpu().numpy(), n, unbiased))
