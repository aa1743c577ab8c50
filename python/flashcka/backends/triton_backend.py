"""The Triton backend: fused centered-Gram kernels and a split-K pair stage (GPU).

Per representation x (n, ...) with column mean μ:
  1. ``_centre_kernel``: X_c = x − 1μᵀ once, contiguous, in the compute dtype (bf16 for
     bf16 products), x read in its own dtype and strides (token tensors (n, T, C) not
     copied); then ``_gram_stats_kernel``: K = X_c X_cᵀ as a triangle GEMM whose loads
     feed tl.dot directly (16-byte cp.async, TMA for TF32 on Hopper), only tiles on/above
     the diagonal (≈ n²d flops, half a GEMM), plus diag(K) and K1.
  2. RBF only, ``_rbf_kernel``: D = diag 1ᵀ + 1 diagᵀ − 2K, median on the device,
     K = exp(−D/(2σ²)) and its row sums.
  3. ``_center_pack_kernel``: U-centering (unbiased) or HKH (biased), written as a packed
     row: sqrt(2)·C_ij for i < j (+ C_ii when biased), n(n−1)/2 (+ n) entries, so a dot
     product of rows is ⟨C, C'⟩_F and the pair stage reads half of n².
Pair stage: float32 (or float64) partial sums over chunks of the row, added in float64:
cuBLAS (``pair_chunked``) for IEEE products on a GPU, ``_pair_kernel`` for TF32 and in the
interpreter. The tiled route's linear tiles with IEEE products: cuBLAS too.
Measured on an H200 (bench/results/nvidia-h200/): docs/design.md §4.

Precision: float32 uses IEEE products by default; ``TritonBackend(allow_tf32=True)`` (or
``flashcka.backends.get("triton").allow_tf32 = True``) allows TF32 tensor cores (about
1e-3 relative error in each Gram entry; float16 and bfloat16 inputs too).
float16/bfloat16 inputs are converted to float32 as they are loaded and centered in
float32 (never rounded back to 16 bits before centering); ``allow_bf16=True`` rounds the
centered values of bfloat16 inputs to bfloat16 for bf16 tensor-core products accumulated
in float32 (about 4e-3 relative error per product, like ``torch.matmul`` in bfloat16, but
on centered values).
float64 runs float64 tiles (tl.dot in float64).

``kernel_matrix`` uses the Gram and RBF kernels (linear with μ = 0) and mirrors the
triangle; ``center`` (public ``flashcka.center``, an (n, n) input) is the torch
reference implementation.

Runs on CUDA tensors, and on CPU tensors through the Triton interpreter when
TRITON_INTERPRET=1 was set before the kernels were first imported (slow: tests only).
"""
from __future__ import annotations

import os

import torch

from .base import Backend
from .torch_backend import center as torch_center


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _launch():
    from . import triton_launch  # imports triton: only when the backend runs
    return triton_launch


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, allow_tf32: bool = False, allow_bf16: bool = False):
        self.allow_tf32 = bool(allow_tf32)
        self.allow_bf16 = bool(allow_bf16)

    def usable(self):
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return False, f"triton is not installed ({e}); pip install 'flashcka[triton]'"
        if torch.cuda.is_available() or _interpreting():
            return True, ""
        return False, ("no CUDA device (set TRITON_INTERPRET=1 before importing triton to "
                       "run the kernels on the CPU through the slow interpreter)")

    def accepts(self, x):
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            return False
        return x.device.type == "cuda" or (x.device.type == "cpu" and _interpreting())

    def kernel_matrix(self, x, *, kernel, sigma, threshold, ct):
        tl = _launch()
        if kernel == "linear":
            mu = torch.zeros(x.shape[1:], dtype=ct, device=x.device)
        else:
            mu = x.mean(0, dtype=ct)
        k, diag, _ = tl.gram_stats_triton(x, mu, allow_tf32=self.allow_tf32,
                                          allow_bf16=self.allow_bf16)
        if kernel == "rbf":
            tl.rbf_triton(k, diag, sigma, threshold, x[0].numel())
        upper = torch.triu(k)
        return upper + torch.triu(k, 1).T

    def center(self, k, *, unbiased):
        return torch_center(k, unbiased)

    def row_length(self, n, unbiased):
        return n * (n - 1) // 2 + (0 if unbiased else n)

    def centered_gram_row(self, x, mu, out, *, kernel, sigma, threshold, unbiased):
        tl = _launch()
        k, diag, rowsum = tl.gram_stats_triton(x, mu, allow_tf32=self.allow_tf32,
                                               allow_bf16=self.allow_bf16)
        sq_norm = diag.sum()
        if kernel == "rbf":
            rowsum = tl.rbf_triton(k, diag, sigma, threshold, x[0].numel())
        tl.center_pack_triton(k, rowsum, out, unbiased=unbiased)
        return sq_norm

    def pair(self, ga, gb):
        """IEEE products on a GPU: cuBLAS (``pair_chunked``: 7x the Triton kernel's rate
        in float32 on an H200, where an FMA tl.dot reached 6.8 TFLOP/s of 51); TF32 or
        the interpreter: ``_pair_kernel``."""
        if ga.is_cuda and _cublas_is_ieee(ga.dtype, self.allow_tf32):
            return pair_chunked(ga, gb)
        return _launch().pair_triton(ga, gb, allow_tf32=self.allow_tf32)

    def kernel_tiles(self, xi, xj, out, *, kernel, two_s2, shift, unbiased, dims,
                     sums=None):
        """The tiled route's tiles (base.py): linear tiles with IEEE products on a GPU by
        cuBLAS (the torch backend's ``kernel_tile``: on the H200 the FMA tl.dot tile kernel
        took 20 s for n = 100,000 × 12 × 768, 11× the float32 GEMM floor); RBF and
        distance tiles, and the interpreter, by ``_kernel_tile_kernel``
        (kernels/triton/tiled.py)."""
        if kernel == "linear" and out.is_cuda and _cublas_is_ieee(out.dtype, False):
            from .torch_backend import TorchBackend
            return TorchBackend().kernel_tiles(xi, xj, out, kernel=kernel, two_s2=two_s2,
                                               shift=shift, unbiased=unbiased, dims=dims,
                                               sums=sums)
        return _launch().kernel_tiles_triton(xi, xj, out, kernel=kernel, two_s2=two_s2,
                                             shift=shift, unbiased=unbiased, dims=dims,
                                             sums=sums)


PAIR_CHUNK = 8192   # entries of a row summed in the rows' dtype before the float64 sum


def _cublas_is_ieee(dt: torch.dtype, allow_tf32: bool) -> bool:
    """Whether torch.mm on CUDA multiplies dt with IEEE products here: float64 always;
    float32 unless TF32 is allowed (by this backend, or globally in torch)."""
    if dt == torch.float64:
        return True
    return dt == torch.float32 and not allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def pair_chunked(ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """(LA, m), (LB, m) -> (LA, LB) float64 inner products of rows, as ``_pair_kernel``
    adds them: each chunk of ``PAIR_CHUNK`` entries multiplied in the rows' dtype (the
    whole chunks by one batched product, the tail by one more: cuBLAS on a GPU), the
    chunk products added in float64 (deterministic)."""
    if ga.dim() != 2 or gb.dim() != 2 or ga.shape[1] != gb.shape[1]:
        raise ValueError(f"pair needs (LA, m) and (LB, m), got {tuple(ga.shape)}, "
                         f"{tuple(gb.shape)}")
    dt = torch.promote_types(ga.dtype, gb.dtype)
    ga, gb = ga.to(dt), gb.to(dt)
    (la, m), lb = ga.shape, gb.shape[0]
    whole = m // PAIR_CHUNK * PAIR_CHUNK
    out = torch.zeros(la, lb, dtype=torch.float64, device=ga.device)
    if whole:   # (S, LA, c) @ (S, c, LB): views, batch stride c, row stride m
        a = ga[:, :whole].unflatten(1, (-1, PAIR_CHUNK)).transpose(0, 1)
        b = gb[:, :whole].unflatten(1, (-1, PAIR_CHUNK)).permute(1, 2, 0)
        out += torch.bmm(a, b).sum(0, dtype=torch.float64)
    if whole < m:
        out += ga[:, whole:] @ gb[:, whole:].T
    return out


# ------------------------------------------------------------------ fail-safe first use

_checked: dict[tuple, str] = {}      # (x dtype, allow_tf32, allow_bf16) -> "" (passed) or why
_failure: str = ""                   # the first failure: Triton is off for this process
_warned = False                      # backend="auto" has said so (once)


def _unit_roundoff(be: TritonBackend, x_dtype: torch.dtype, ct: torch.dtype) -> float:
    """Unit roundoff of the products the kernels make for x_dtype (docs/design.md §7)."""
    if ct == torch.float64:
        return 2.0 ** -53
    if be.allow_bf16 and x_dtype == torch.bfloat16:
        return 2.0 ** -8
    return 2.0 ** -11 if be.allow_tf32 else 2.0 ** -24


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} (Triton interpreter)"


def self_check(be: TritonBackend, x_dtype: torch.dtype, device: torch.device) -> str:
    """Run every Triton kernel once on a tiny fixed input of x_dtype (n = 37, d = 45: partial
    tiles) and compare with the torch backend; return "" if all agree, else what failed.

    Checked: the linear centered Gram row (``_gram_stats_kernel``, ``_center_pack_kernel``),
    the RBF row with the median heuristic (``_rbf_kernel``), both estimators, and the pair
    stage (``_pair_kernel``). Tolerance (max-abs): 16·u·√d·max_i ‖x_i − μ‖² on Gram entries,
    16·u·√m·max‖row‖² on the pair products, u the products' unit roundoff (float32 2^-24,
    TF32 2^-11, bf16 2^-8, float64 2^-53); a kernel that compiles but writes wrong tiles,
    NaN, or misses entries is off by O(1) of these scales."""
    from .torch_backend import TorchBackend
    n, d = 37, 45
    ct = torch.float64 if x_dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(1234)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) + 3).to(x_dtype).to(device)
    mu = x.mean(0, dtype=ct)
    u = _unit_roundoff(be, x_dtype, ct)
    tb = TorchBackend()
    step = "start"
    try:
        rows = []
        for kernel, unbiased in (("linear", True), ("linear", False), ("rbf", True)):
            step = f"{kernel} centered Gram row ({'unbiased' if unbiased else 'biased'})"
            out = torch.full((be.row_length(n, unbiased),), float("nan"), dtype=ct,
                             device=device)
            be.centered_gram_row(x, mu, out, kernel=kernel, sigma=None, threshold=1.0,
                                 unbiased=unbiased)
            want = torch.empty(n * n, dtype=ct, device=device)
            tb.centered_gram_row(x, mu, want, kernel=kernel, sigma=None, threshold=1.0,
                                 unbiased=unbiased)
            got = _unpack_row(out.double(), n, unbiased)
            want = want.double().reshape(n, n)
            if kernel == "linear":
                scale = (x.double() - mu.double()).square().sum(1).max().item()
            else:
                scale = 1.0
            tol = 16 * u * d ** 0.5 * scale
            err = (got - want).abs().max().item()
            if not err <= tol:             # NaN fails too
                return f"{step}: max error {err:.3g} > tolerance {tol:.3g}"
            rows.append(out)
        step = "pair stage"
        ga = rows[0][None]
        gb = torch.stack([rows[0], -0.5 * rows[0]])
        got = be.pair(ga, gb)
        want = ga.double() @ gb.double().T
        tol = 16 * (2.0 ** -11 if be.allow_tf32 and ct == torch.float32 else u) * \
            ga.shape[1] ** 0.5 * ga.double().square().sum().item()
        err = (got.double() - want).abs().max().item()
        if not err <= tol:
            return f"{step}: max error {err:.3g} > tolerance {tol:.3g}"
    except Exception as e:  # noqa: BLE001 - a compile or launch error of any kind
        return f"{step}: {type(e).__name__}: {e}"
    return ""


def _unpack_row(row: torch.Tensor, n: int, unbiased: bool) -> torch.Tensor:
    iu = torch.triu_indices(n, n, 1, device=row.device)
    c = torch.zeros(n, n, dtype=row.dtype, device=row.device)
    c[iu[0], iu[1]] = row[: n * (n - 1) // 2] / 2 ** 0.5
    c = c + c.T
    if not unbiased:
        c = c + torch.diag(row[n * (n - 1) // 2:])
    return c


def fail_safe(be: TritonBackend, x: torch.Tensor, *, strict: bool) -> bool:
    """Whether the Triton kernels may run on tensors like x: on first use per (x dtype,
    precision settings) in the process, ``self_check`` compares them with the torch backend.
    On a failure (compile or launch error, or a mismatch beyond its tolerance) ``strict``
    (backend="triton" asked by name) raises a RuntimeError; otherwise (backend="auto") one
    FlashCKAWarning gives the error and the device name, and False is returned for the rest
    of the process, every dtype included (the caller then uses the torch backend)."""
    global _failure, _warned
    if not _failure:
        key = (x.dtype, be.allow_tf32, be.allow_bf16)
        if key not in _checked:
            why = self_check(be, x.dtype, x.device)
            _checked[key] = why
            if why:
                _failure = (f"the Triton kernels failed their first-use check on "
                            f"{device_name(x.device)} for {x.dtype}: {why}")
    if not _failure:
        return True
    if strict:
        raise RuntimeError(f"backend='triton': {_failure}")
    if not _warned:
        _warned = True
        import warnings
        from .._warning import FlashCKAWarning
        warnings.warn(f"flashcka: {_failure}; using the torch backend for the rest of this "
                      f"process", FlashCKAWarning, stacklevel=4)
    return False
