"""The Triton backend: fused centered-Gram kernels and a split-K pair stage (GPU).

Per representation x (n, ...) with column mean μ:
  1. ``_gram_stats_kernel``: K = X_c X_cᵀ, X_c = x − 1μᵀ subtracted as each tile is
     loaded (x read in its own dtype and strides, token tensors (n, T, C) not copied);
     only tiles on/above the diagonal (≈ n²d flops, half a GEMM), plus diag(K) and K1.
  2. RBF only, ``_rbf_kernel``: D = diag 1ᵀ + 1 diagᵀ − 2K, median on the device,
     K = exp(−D/(2σ²)) and its row sums.
  3. ``_center_pack_kernel``: U-centering (unbiased) or HKH (biased), written as a packed
     row: sqrt(2)·C_ij for i < j (+ C_ii when biased), n(n−1)/2 (+ n) entries, so a dot
     product of rows is ⟨C, C'⟩_F and the pair stage reads half of n².
Pair stage: ``_pair_kernel``, float32 (or float64) partial sums over chunks of the row,
added in float64.

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
        return _launch().pair_triton(ga, gb, allow_tf32=self.allow_tf32)
